"""The paper's method: grid and subspaces, sensitivity, bound updates, upper bounds,
tightening and the anytime loop (see docs/architecture.md for the map).

- :mod:`.grid`, :mod:`.subspaces`, :mod:`.features` — the ε-grid, t-subsets by rank, features;
- :mod:`.sensitivity` — a work unit: every grid point of a range of subsets, batched;
- :mod:`.update` — bound updates (lower, re-checked upper, certified lower);
- :mod:`.upper`, :mod:`.tighten` — the upper-bound search and its tightening;
- :mod:`.planning`, :mod:`.executor`, :mod:`.state`, :mod:`.loop` — the anytime loop: shards and
  units, where units run, checkpoints, snapshots.
"""

from .executor import Executor, InProcessExecutor, ShardTask, WorkUnit
from .features import FeatureKind, FeatureSpace
from .hooks import ProgressHook
from .loop import Engine, drive
from .problem import Problem

__all__ = ["Engine", "Executor", "FeatureKind", "FeatureSpace", "InProcessExecutor", "Problem", "ProgressHook",
           "ShardTask", "WorkUnit", "drive"]
