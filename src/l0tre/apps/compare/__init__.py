"""Case study 4 of the paper: which architecture is more robust (:func:`compare`).

Modules: :mod:`.core` (the runs, level by level across the models, resumable), :mod:`.result`
(:class:`CompareResult`: table, ranking), :mod:`.stats` (paired t intervals, Holm), :mod:`.figures`
(Figs. 8–9, pairwise differences, accuracy against robustness), :mod:`.output` (``results.json``,
figures, ``index.html``).
"""

from .core import compare, run_folder
from .output import write_compare
from .result import CompareResult, Ranking
from .stats import PairedTest, holm, paired_t

__all__ = ["CompareResult", "PairedTest", "Ranking", "compare", "holm", "paired_t", "run_folder", "write_compare"]
