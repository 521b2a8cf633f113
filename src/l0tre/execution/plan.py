"""The execution plan of a run: rows per model call and which fast paths each level uses.

Nothing here changes what is computed: the incremental chain and the pair tables give the same
bounds as plain forward passes (rows near the decision boundary are recomputed exactly); they
are used where a measurement says they pay.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..classifier import Classifier
from .graph_chain import build_chain
from .incremental import IncrementalPrefix
from .memory import memory_rows
from .modes import TUNING_SHARE, incremental_pays
from .pairs import PairRecipe

__all__ = ["MAX_INCREMENTAL_T", "ExecutionPlan"]

#: the incremental chain recomputes one window per changed pixel; beyond this many the plain
#: forward pass is used
MAX_INCREMENTAL_T = 4
#: rows of the measurement whether the chain pays: at 64k rows per call (GPU) the measurement
#: itself took ≈ 15 s on an H200 (8 timed variants); 8k rows keep it under a second
MEASURE_ROWS = 8192
#: the fewest rows per call at level 2 with pair tables (their rows cost O(K) each, apart from
#: the few whose windows meet)
PAIR_ROWS = 4096
#: the fewest rows that measurement uses; a run with less work does not measure (no chain). At
#: 16 rows the measurement of a 224×224 ResNet-18 takes ≈ 1 s of a run of ≥ 5k evaluations (at
#: 25 ms each on the plain path, 3–6 ms on the chain); on small models it may underrate the
#: chain (its per-call overhead is amortised over fewer rows), which only costs a small run time
MIN_MEASURE_ROWS = 16


class ExecutionPlan:
    """Rows per call and fast paths for one run.

    Args:
        model: the classifier; shape: ``(C, H, W)`` of the inputs.
        pixel_features: features are pixels (pair tables need that).
        batch_size: provisional rows per plain model call (a deferred ``tuner`` may change it).
        user_batch: the caller's ``batch_size`` (kept as given), or ``None``.
        max_memory: bytes the rows of one call may use.
        incremental: build the incremental chain (it is still only used where it pays).
        force_incremental: use the chain wherever it exists, without measuring.
        tuner: measures execution mode and rows per call when the run starts; returns the rows.
        work_rows: model evaluations of the run when known (``None``: not known): the
            measurement whether the chain pays then costs at most a small share of them.
    """

    def __init__(self, model: Classifier, shape: tuple[int, int, int], *, pixel_features: bool, batch_size: int,
                 user_batch: int | None,
                 max_memory: int, incremental: bool, force_incremental: bool = False,
                 tuner: Callable[[], int] | None = None, work_rows: int | None = None) -> None:
        self.model = model
        self.shape = shape
        self.pixel_features = pixel_features
        self.batch_size = batch_size
        self.user_batch = user_batch
        self.max_memory = max_memory
        self.force_incremental = force_incremental
        self._tuner = tuner
        self.work_rows = work_rows
        self.incremental = build_chain(model, shape) if incremental else None
        self.inc_batch = self._inc_rows()
        self.use_pairs = True  # level 2 from the level-1 table where pixel windows never meet
        self._chains: dict[int, IncrementalPrefix | None] = {1: self.incremental}  # per level t
        self._pays: dict[int, tuple[bool, int]] = {}  # t -> (pays, chunk), measured once per level

    def _inc_rows(self) -> int:
        """Rows per call on the incremental path: cheaper rows, so larger calls amortise the
        per-call work (the chain splits them into cache-sized chunks); a user batch size is kept.
        A chain that bounds its own chunks' memory (:attr:`~.incremental.IncrementalPrefix.bounded_chunks`)
        is not held to the full forward pass's memory per row (on 224×224 inputs ≈ 60 MB, 17 rows
        per GiB, too few to measure or to amortise the chain's per-call work)."""
        if self.user_batch is not None:
            return self.batch_size
        want = max(self.batch_size, 512)
        if self.incremental is not None and self.incremental.bounded_chunks:
            return want
        return min(memory_rows(self.model, self.shape, self.max_memory), want)

    def ensure_tuned(self, probe: torch.Tensor | None = None) -> None:
        """Run the deferred tuner once (it sets the model's execution mode). In a run of known
        work (``work_rows``: level 1 only) whose rows the incremental chain takes (measured on
        ``probe`` ``(B, C, H, W)``) on a CPU, the plain forward pass only re-checks a few rows: its
        mode and batch size are not measured (on a 224×224 ResNet-18 that measurement costs ≈ 3 s).
        On a GPU the tuning always runs: it sets the rows per call (tens of thousands) that the
        chain's calls take too."""
        if self._tuner is None:
            return
        cpu = self.model.device.type == "cpu"  # a GPU's tuning sets the large calls it needs
        if cpu and self.work_rows is not None and probe is not None and self.chain_for(1, probe) is not None:
            self._tuner = None
            return
        tuner, self._tuner = self._tuner, None
        self.batch_size = tuner()
        self.inc_batch = self._inc_rows()

    def rows(self, chain: IncrementalPrefix | None, t: int = 1) -> int:
        """Rows per model call on the path ``chain`` (``None``: plain forward passes) at level
        ``t``: at ``t = 2`` most rows come from the pair tables at ``O(K)`` each, so calls take at
        least ``PAIR_ROWS`` rows (the tables bound their own memory; a user batch size is kept)."""
        if chain is None:
            return self.batch_size
        if t == 2 and self.use_pairs and self.pixel_features and self.user_batch is None:
            return max(self.inc_batch, PAIR_ROWS)
        return self.inc_batch

    def chain_for(self, t: int, probe: torch.Tensor) -> IncrementalPrefix | None:
        """The incremental chain when it is on and pays at level ``t`` (measured once per level
        on ``probe`` ``(B, C, H, W)``), else ``None``."""
        if self.incremental is None or t > MAX_INCREMENTAL_T:
            return None
        if t not in self._chains:  # t windows per row: a shallower chain may pay more
            self._chains[t] = build_chain(self.model, self.shape, windows=t)
        inc = self._chains[t]
        if inc is None:
            return None
        if self.force_incremental:
            return inc
        if t > 1 and not self._pays.get(1, (True, 0))[0]:
            return None  # it did not pay at t=1: it will not with more windows
        if t == 2 and 1 in self._pays and self.use_pairs and self.pixel_features:
            # it paid at t = 1, and level 2 takes most rows from the pair tables, whose rows cost
            # less than a level-1 chain row (measuring the chain alone would underrate it)
            self._pays[2] = (True, self._pays[1][1])
        if t not in self._pays:
            rows = min(self.inc_batch, MEASURE_ROWS)
            if self.work_rows is not None:  # ≈ 16 calls of ``rows`` rows: a small share of the work
                rows = min(rows, int(TUNING_SHARE * self.work_rows) // 16)
            if rows < MIN_MEASURE_ROWS:  # too little work to measure: plain forward passes
                self._pays[t] = (False, inc.chunk)
            else:
                pays = incremental_pays(self.model, inc, probe[: min(8, probe.shape[0])], rows, t)
                self._pays[t] = (pays, inc.chunk)
        pays, inc.chunk = self._pays[t]
        return inc if pays else None

    def pair_recipe(self, t: int, chain: IncrementalPrefix | None, palette: torch.Tensor) -> PairRecipe | None:
        """How to build the level-2 pair tables of a shard (:class:`~.pairs.PairRecipe`: where its
        units run, once) when a chain is in use at t = 2 and features are pixels; else ``None``."""
        if (t != 2 or chain is None or not chain.supports_pairs or not self.use_pairs or self.incremental is None
                or not self.pixel_features):
            return None
        return PairRecipe(palette=palette, max_bytes=self.max_memory // 8, shape=self.shape)
