"""Sound certification of L0 robustness: bound propagation over feature-subset boxes.

The engine's grid lower bound holds on an ε-grid of pixel values; this package proves
robustness for *all* real values in a box, with interval bound propagation (IBP), forward
linear bounds and backward CROWN / DeepPoly relaxations, branch and bound over the input,
and box coverings of whole L0 levels.

Main entry points:

* :func:`certify_subsets`: one-shot certification of many feature subsets of one input.
* :func:`certify_boxes` / :func:`certify_boxes_bab`: general boxes, with branch and bound.
* :func:`certify_level`: is every change of at most ``t`` features safe?
* :func:`bound_model`: sound output / margin bounds over boxes.

Every entry point takes one :class:`CertifySettings` (``settings=``; its fields are also
accepted as keywords): the bounding method (:class:`Method`: ``"ibp"``, ``"forward"``
(linear bounds in the box's free coordinates), ``"crown"`` (backward relaxation to the input),
``"hybrid"`` (CROWN over the fully connected head, forward bounds on the convolutional body;
the default of :func:`certify_level`) or ``"auto"``), batch size, dtype, tolerance, time and
branch-and-bound budgets. Boxes that free few pixels are computed on spatial windows only
(:mod:`l0tre.certify.window`).

Soundness caveat: bounds are computed in float64 (by default) without directed rounding;
``margin_tol`` (1e-6 where a status is decided by branch and bound or covering) guards
against rounding in the bound computation and in the deployed model.
"""

from l0tre.certify.api import bound_model
from l0tre.certify.bab import certify_boxes_bab
from l0tre.certify.boxes import certify_boxes, certify_subsets, subset_boxes
from l0tre.certify.cover import covering_blocks, initial_regions, refine_block
from l0tre.certify.graph import Graph, build_graph
from l0tre.certify.level import certify_level
from l0tre.certify.methods import Intermediate, Method
from l0tre.certify.settings import LEVEL_SETTINGS, CertifySettings, Split
from l0tre.certify.types import CertifyResult, LevelResult, Status, UnsupportedLayerError

__all__ = [
    "LEVEL_SETTINGS",
    "CertifyResult",
    "CertifySettings",
    "Graph",
    "Intermediate",
    "LevelResult",
    "Method",
    "Split",
    "Status",
    "UnsupportedLayerError",
    "bound_model",
    "build_graph",
    "certify_boxes",
    "certify_boxes_bab",
    "certify_level",
    "certify_subsets",
    "covering_blocks",
    "initial_regions",
    "refine_block",
    "subset_boxes",
]
