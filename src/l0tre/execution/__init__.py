"""Execution machinery: how the engine's work runs fast, without changing what it computes.

- :mod:`.modes` — eager / channels_last / compile, measured and chosen per model;
- :mod:`.tuning_cache` — those measurements remembered per machine and model;
- :mod:`.memory` — rows per model call within a memory budget;
- :mod:`.incremental` — recompute only the windows of feature maps that changed pixels reach;
- :mod:`.windows` — the geometry of those windows;
- :mod:`.pairs` — level-2 rows from level-1 window tables where two pixels never meet;
- :mod:`.sparse_head` — a dense head evaluated on the changed positions only;
- :mod:`.precision` — reduced-precision screening with exact float32 re-checks.
"""

from .memory import DEFAULT_MAX_MEMORY, plan_batch_size
from .modes import Mode, select_mode, tune
from .precision import Precision

__all__ = ["DEFAULT_MAX_MEMORY", "Mode", "Precision", "plan_batch_size", "select_mode", "tune"]
