"""Reduced-precision screening with an exact re-check of every close decision.

A bfloat16 copy of the model evaluates 2–3.5× faster than float32 on CPUs with AMX / AVX-512
BF16 (measured on the project's Xeon, one thread, channels_last: the CIFAR-10 ResNet-20 0.37 vs
0.93 ms per row at 64 rows, the paper's MNIST CNN 0.07 vs 0.20) and on GPUs. Its margins differ
from float32 by up to ≈ 0.4 logits on those models, so a bfloat16 value is only trusted where it
is far from the decision boundary:

* :class:`LowPrecisionModel` — the copy (same normalisation and batch padding as the
  :class:`~l0tre.classifier.Classifier`, channels_last when it has convolutions), returning
  float32 outputs; :meth:`LowPrecisionModel.chain` is its own incremental chain.
* :class:`Rechecked` — an objective wrapper: rows are evaluated with the copy, and every row
  whose low-precision score lies within ``tol`` of 0 is recomputed with the model's own
  precision. ``tol`` adapts: it is at least ``factor`` × the largest score difference between the
  two precisions seen so far (on a calibration batch, on the probe rows every call recomputes
  first, and on every re-checked row).
* :func:`screening_objective` — the objective of a run at a ``precision``.

The attack *searches* with it (its decisions only choose where to look; every example it returns
is verified again in full precision). ``evaluate`` and ``saliency`` screen their rows with it
when asked (``precision="bfloat16"``; ``auto``: on CUDA GPUs): their grid lower bounds then rest
on the observed tolerance, not on a proof of the bfloat16 error, and every example is re-checked
in full precision before a bound moves (``engine/update.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from ..classifier import Classifier, bucket_rows, padded_index
from ..objectives import FromOutputs, Misclassification, Objective, ObjectiveValues
from ..validate import Choice
from .graph_chain import build_chain
from .incremental import IncrementalPrefix

__all__ = ["PROBE_EVERY", "LowPrecisionModel", "Precision", "Rechecked", "choose_precision", "fast_bf16",
           "screening_objective"]


#: a screen re-checks one row in this many of each call before it trusts any (at least one; 8 of a
#: 512-row call): the tolerance follows the error of the path in use
PROBE_EVERY = 64


class Precision(Choice):
    """Precision of search evaluations: ``auto`` (bfloat16 where the device has bfloat16 units,
    see :func:`choose_precision`), ``float32`` (the model's own dtype throughout) or ``bfloat16``."""

    AUTO = "auto"
    FULL = "float32"
    BF16 = "bfloat16"

    @classmethod
    def aliases(cls) -> dict[object, Precision]:
        return {"fp32": cls.FULL, "full": cls.FULL, "bf16": cls.BF16}


class LowPrecisionModel:
    """A reduced-precision copy of ``model``'s ``torch.nn.Module``.

    Args:
        model: the classifier (its module is deep-copied; the original is untouched).
        dtype: the copy's floating dtype.

    Raises:
        ValueError: the classifier wraps a plain callable or TorchScript (nothing to copy).
    """

    def __init__(self, model: Classifier, dtype: torch.dtype = torch.bfloat16) -> None:
        module = model.modules()
        if module is None or isinstance(module, torch.jit.ScriptModule):
            raise ValueError("precision: bfloat16 needs a torch.nn.Module model, got a callable or TorchScript")
        self.model = model
        self.dtype = dtype
        # channels_last whenever there are convolutions, whatever the model's own mode: reduced
        # precision convolutions run on NHWC kernels (ResNet-18, 224×224, 2 CPU threads: 6.0 ms
        # per row against 9.9 ms NCHW, where float32 is 14.4 vs 20.8)
        self.channels_last = model.channels_last or any(isinstance(m, torch.nn.Conv2d) for m in module.modules())
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.module = _folded(module).to(dtype=dtype).to(memory_format=fmt).eval()  # type: ignore[call-overload]
        self._chains: dict[tuple[tuple[int, ...], int], IncrementalPrefix | None] = {}

    def chain(self, shape: tuple[int, ...], windows: int = 1) -> IncrementalPrefix | None:
        """The incremental chain (:func:`~.graph_chain.build_chain`) through the copy, for inputs of
        ``shape`` ``(C, H, W)`` with ``windows`` changed pixels per row (built once), or ``None``
        when the copy has none. Its outputs are in the copy's dtype."""
        key = (tuple(shape), int(windows))
        if key not in self._chains:
            m = self.model
            c, h, w = (int(v) for v in shape)
            low = Classifier(self.module, bounds=m.bounds, preprocessing=m.preprocessing, output=m.output,
                             device=m.device, input_shape=(c, h, w), dtype=self.dtype, name=m.name)
            self._chains[key] = build_chain(low, (c, h, w), windows=windows)
        return self._chains[key]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``(N, classes)`` as float32 for pixel-space inputs ``x`` ``(N, C, H, W)``."""
        n_rows = x.shape[0]
        m = self.model
        z = m._normalise(x.to(device=m.device, dtype=m.dtype))
        if m.bucket and n_rows > 0 and bucket_rows(n_rows) != n_rows:
            z = z[padded_index(n_rows, z.device)]
        z = z.to(self.dtype)
        if self.channels_last and z.dim() == 4:
            z = z.contiguous(memory_format=torch.channels_last)
        out = self.module(z)
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise TypeError(f"model output: expected a (N, classes) tensor, got {type(out).__name__}")
        return out[:n_rows].to(torch.float32)


class Rechecked:
    """An objective evaluated in low precision, with the close decisions re-checked exactly.

    Args:
        objective: the objective, with the :class:`~l0tre.objectives.FromOutputs` capability (as
            :class:`Misclassification`); its decision boundary is score 0 (success iff score < 0
            for the misclassification margin).
        low: the low-precision copy of the model.
        factor: ``tol`` is kept at least ``factor`` × the largest score difference seen.
        tol: the initial tolerance (see :meth:`calibrate`).
        probe_every: one row in every ``probe_every`` rows of a call (at least one per call;
            0: none), spread evenly over it, is recomputed exactly whatever its score before the
            others are screened: the error of the path in use is measured on its own rows in
            every call, not only on a calibration batch.

    Attributes:
        low_rows: rows evaluated by the copy; exact rows are counted by ``objective`` itself
            when it counts (:class:`~l0tre.apps.attack.searcher.CountingObjective`).
        rechecked: rows whose values were recomputed exactly.
        max_delta: largest ``|score_low − score_exact|`` seen.
    """

    def __init__(self, objective: Misclassification, low: LowPrecisionModel, *, factor: float = 2.0,
                 tol: float = 0.0, probe_every: int = 0) -> None:
        if not isinstance(objective, FromOutputs):
            raise TypeError(f"objective: expected one with from_outputs, got {type(objective).__name__}")
        self.objective = objective
        self.name = objective.name
        self.low = low
        self.factor = float(factor)
        self.tol = float(tol)
        if isinstance(probe_every, bool) or not isinstance(probe_every, int) or probe_every < 0:
            raise ValueError(f"probe_every: expected an int >= 0, got {probe_every!r}")
        self.probe_every = probe_every
        self.low_rows = 0
        self.rechecked = 0
        self.max_delta = 0.0

    def reference(self, model: Classifier, x0: torch.Tensor) -> torch.Tensor:
        """References ``(N,)`` in full precision."""
        return self.objective.reference(model, x0)

    def _observe(self, exact: torch.Tensor, approx: torch.Tensor) -> None:
        if exact.numel():
            d = float((exact.double() - approx.double()).abs().max())
            if d == d:  # not NaN
                self.max_delta = max(self.max_delta, d)
                self.tol = max(self.tol, self.factor * self.max_delta)

    def calibrate(self, model: Classifier, x: torch.Tensor, ref: torch.Tensor) -> None:
        """Evaluate ``x`` ``(B, C, H, W)`` in both precisions and widen ``tol`` accordingly."""
        if x.shape[0] == 0:
            return
        approx = self.objective.from_outputs(model, self.low(x), ref)
        exact = self.objective.evaluate(model, x, ref)
        self.low_rows += int(x.shape[0])
        self._observe(exact.score, approx.score)

    def evaluate(self, model: Classifier, x: torch.Tensor, ref: torch.Tensor) -> ObjectiveValues:
        """Values ``(B,)`` for ``x`` ``(B, C, H, W)``: low precision, except the probe rows and
        the rows within ``tol`` of the boundary, which carry their exact values."""
        def exact(idx: torch.Tensor) -> ObjectiveValues:
            return self.objective.evaluate(model, x[idx.to(x.device)], ref[idx.to(ref.device)])

        return self.screen(model, self.low(x), ref, exact)

    def screen(self, model: Classifier, raw: torch.Tensor, ref: torch.Tensor,
               exact: Callable[[torch.Tensor], ObjectiveValues]) -> ObjectiveValues:
        """Values ``(B,)`` from low-precision raw outputs ``raw`` ``(B, K)`` (e.g. the copy's
        incremental chain, :meth:`LowPrecisionModel.chain`) for references ``ref`` ``(B,)``:
        ``ceil(B / probe_every)`` rows spread evenly over the batch, then every row within ``tol`` of the
        boundary, take the values ``exact(idx)`` of rows ``idx`` ``(R,)``. The probe rows widen
        ``tol`` before the others are screened: the error of the path is measured on its own rows
        in every call, not only on a calibration batch of another path."""
        ov = self.objective.from_outputs(model, raw.to(torch.float32), ref)
        rows = int(raw.shape[0])
        self.low_rows += rows
        probe = -(-rows // self.probe_every) if self.probe_every else 0
        done = torch.zeros(rows, dtype=torch.bool, device=ov.score.device)
        if probe:
            spread = torch.linspace(0, rows - 1, probe, device=ov.score.device).round().long().unique()
            vals = exact(spread)
            self.rechecked += int(spread.numel())
            self._observe(vals.score, ov.score[spread])
            ov = ov.with_rows(spread, vals)
            done[spread] = True
        near = ~(ov.score.abs() > self.tol) & ~done  # NaN scores are re-checked too
        if not bool(near.any()):
            return ov
        idx = near.nonzero().squeeze(1)
        vals = exact(idx)
        self.rechecked += int(idx.numel())
        self._observe(vals.score, ov.score[idx])
        return ov.with_rows(idx, vals)


def _folded(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` (eval mode) with BatchNorm folded into the preceding convolutions
    where ``torch.fx`` can trace it (one rounding step less per layer in bfloat16: the ResNet-20's
    largest margin difference 0.39 → 0.27), else a plain copy."""
    was_training = module.training
    module.eval()
    try:
        from torch.fx.experimental.optimization import fuse

        out = fuse(module, inplace=False)
    except Exception:  # noqa: BLE001 - any tracing failure: fall back to the plain copy
        out = copy.deepcopy(module)
    finally:
        module.train(was_training)
    return out


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` has native bfloat16 matrix units: AMX tiles on a CPU (measured 2.5–3.5×
    over float32 on the benchmark models; AVX-512 BF16 alone is not enough), or a CUDA GPU with
    bfloat16 support (compute capability 8.0 and newer)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return bool(probe()) if callable(probe) else False
    return False


def choose_precision(model: Classifier, precision: str | Precision) -> Precision:
    """Resolve ``precision`` for searches on ``model``.

    ``auto`` picks bfloat16 when the model is a float32 ``torch.nn.Module`` (not TorchScript)
    with convolutions or linear layers and its device has native bfloat16 units
    (:func:`fast_bf16`) — a rule of the hardware, not a timing, so the same machine always
    takes the same search path.
    """
    p = Precision.parse(precision)
    if p is not Precision.AUTO:
        return p
    module = model.modules()
    if module is None or isinstance(module, torch.jit.ScriptModule) or model.dtype != torch.float32:
        return Precision.FULL
    if not any(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in module.modules()):
        return Precision.FULL
    return Precision.BF16 if fast_bf16(model.device) else Precision.FULL


def screening_objective(model: Classifier, objective: Objective | None, precision: str | Precision,
                        probe_every: int = PROBE_EVERY) -> Objective:
    """The objective of an engine run at ``precision``: ``objective`` (default
    :class:`~l0tre.objectives.Misclassification`) itself, or screened by a bfloat16 copy
    (:class:`Rechecked`, probing one row in ``probe_every`` of each call). ``auto`` screens on
    CUDA GPUs with bfloat16 units only (:func:`choose_precision`), and only the default objective.

    Raises:
        ValueError: ``bfloat16`` with an objective that cannot score raw outputs, or a model
            the copy cannot be made of (a callable, TorchScript).
    """
    p = Precision.parse(precision)
    base = objective if objective is not None else Misclassification()
    if p is Precision.AUTO:
        cuda = model.device.type == "cuda"
        p = choose_precision(model, p) if cuda and objective is None else Precision.FULL
    if p is not Precision.BF16:
        return base
    if isinstance(base, Rechecked):
        return base
    if not isinstance(base, FromOutputs):
        raise ValueError("precision: bfloat16 screening needs an objective with from_outputs, "
                         f"got {type(base).__name__}")
    return Rechecked(base, LowPrecisionModel(model), probe_every=probe_every)  # type: ignore[arg-type]
