"""The problem of a run: the model, the inputs, the feature space and the ε-grid.

Everything here is fixed for the whole run (all levels); :class:`Problem` is what every step
of the method reads, and what an executor ships to wherever work units run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from ..classifier import Classifier
from ..objectives import Objective
from .features import FeatureSpace
from .grid import colours, grid_values, valid_colours
from .sensitivity import LevelContext
from .subspaces import binomial_table

__all__ = ["Problem"]


@dataclass
class Problem:
    """The fixed data of one evaluation.

    Attributes:
        model: the classifier (device and dtype of the work).
        objective: what the search tries to achieve (e.g. a label flip).
        space: the feature space (``n`` features of ``Cf`` values each).
        x0: ``(N, C, H, W)`` inputs on the model's device, in its dtype.
        x_orig: ``(N, C, H, W)`` inputs on the CPU in the caller's dtype (adversarial examples
            are stored in it: unchanged features keep their exact original values).
        ref: ``(N,)`` the objective's reference per input (e.g. the predicted label), on device.
        palette: ``(P1, Cf)`` grid colours on device.
        valid: ``(N, n, P1)`` colour ``p`` is a real change of feature ``f`` of input ``i``.
        valid_counts: ``(N, n)`` CPU counts of valid colours.
        top_k: subsets kept per input and level for the upper-bound search.
    """

    model: Classifier
    objective: Objective
    space: FeatureSpace
    x0: torch.Tensor
    x_orig: torch.Tensor
    ref: torch.Tensor
    palette: torch.Tensor
    valid: torch.Tensor
    valid_counts: torch.Tensor
    top_k: int
    _tables: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    @staticmethod
    def build(model: Classifier, objective: Objective, space: FeatureSpace, x: torch.Tensor, steps: int,
              top_k: int | None, batch_size: int) -> Problem:
        """Move ``x`` ``(N, C, H, W)`` to the model, build the grid and the references."""
        x0 = x.to(device=model.device, dtype=model.dtype)
        grid = grid_values(steps, model.bounds, dtype=model.dtype)
        palette = colours(grid, space.channels).to(model.device)
        valid = valid_colours(space.values(x0), palette)
        parts = [objective.reference(model, x0[i : i + batch_size]) for i in range(0, x0.shape[0], batch_size)]
        ref = torch.cat(parts).to(torch.int64)
        return Problem(model=model, objective=objective, space=space, x0=x0, x_orig=x.detach().to("cpu"),
                       ref=ref.to(model.device), palette=palette, valid=valid, valid_counts=valid.sum(2).cpu(),
                       top_k=top_k or max(space.n, 1024))

    @property
    def n(self) -> int:
        """Number of features."""
        return self.space.n

    @property
    def size(self) -> int:
        """Number of inputs ``N``."""
        return int(self.x0.shape[0])

    @property
    def acc_dtype(self) -> torch.dtype:
        """The dtype of accumulated scores (float64 for float64 models, else float32)."""
        return torch.float64 if self.model.dtype == torch.float64 else torch.float32

    def table(self, t: int) -> torch.Tensor:
        """The binomial table for unranking t-subsets (cached)."""
        if t not in self._tables:
            self._tables[t] = binomial_table(self.n, t)
        return self._tables[t]

    def context(self, t: int) -> LevelContext:
        """Everything fixed for level ``t``."""
        return LevelContext.build(self.space, self.palette, t, self.table(t))

    def fingerprint(self, epsilon: float) -> str:
        """Identity of model, inputs and grid (a checkpoint is only resumed for the same)."""
        h = hashlib.sha256()
        h.update(self.model.fingerprint().encode())
        h.update(self.x_orig.contiguous().numpy().tobytes())
        h.update(repr((epsilon, self.space.kind.value, self.model.bounds, self.objective.name,
                       self.top_k)).encode())
        if self.space.positions is not None:
            h.update(self.space.positions.numpy().tobytes())
        return h.hexdigest()
