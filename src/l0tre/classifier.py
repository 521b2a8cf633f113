"""The model adapter: one place that knows a classifier's input range, normalisation,
device, dtype and output kind.

The engine always works in *pixel space*: inputs are ``(N, C, H, W)`` tensors inside
``bounds`` (default ``[0, 1]``). Normalisation (``(x - mean) / std``) happens inside the
adapter, so that grid values, L0 distances and saved adversarial examples are all in the
units the user sees.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .arith import ieee_float32
from .validate import Choice

__all__ = ["Classifier", "ModelLike", "OutputKind", "Preprocessing", "as_classifier", "ieee_float32"]


class OutputKind(Choice):
    """What the wrapped model returns: raw ``logits`` or ``probabilities`` (softmax)."""

    LOGITS = "logits"
    PROBABILITIES = "probabilities"

    @classmethod
    def argument(cls) -> str:
        return "output"

    @classmethod
    def aliases(cls) -> dict[object, OutputKind]:
        return {"probs": cls.PROBABILITIES, "softmax": cls.PROBABILITIES}


@dataclass(frozen=True)
class Preprocessing:
    """Per-channel normalisation ``(x - mean) / std`` applied inside the adapter."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError(
                f"preprocessing: mean and std must have the same length, got {len(self.mean)} "
                f"and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"preprocessing: std must be > 0, got {self.std}")


def _as_preprocessing(value: Preprocessing | dict[str, Sequence[float]] | None) -> Preprocessing | None:
    if value is None or isinstance(value, Preprocessing):
        return value
    if isinstance(value, dict) and set(value) == {"mean", "std"}:
        return Preprocessing(tuple(float(v) for v in value["mean"]), tuple(float(v) for v in value["std"]))
    raise TypeError(
        "preprocessing: expected None, a Preprocessing or a dict with keys 'mean' and 'std', "
        f"got {value!r}"
    )


class Classifier:
    """A classifier in pixel space.

    Args:
        model: a ``torch.nn.Module`` (put in eval mode) or any callable mapping a
            ``(N, C, H, W)`` tensor to ``(N, classes)`` scores.
        bounds: the valid input range ``(lo, hi)`` in pixel space.
        preprocessing: optional per-channel ``mean``/``std`` applied inside.
        output: ``"logits"`` or ``"probabilities"``.
        device: where the model runs; ``None`` keeps the model's own device (CPU for callables).
        input_shape: the expected ``(C, H, W)``, if known (used by loaders and guards).
        dtype: the floating dtype inputs are cast to (default: the model's parameter dtype).
        name: a human-readable name for reports.
    """

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        *,
        bounds: tuple[float, float] = (0.0, 1.0),
        preprocessing: Preprocessing | dict[str, Sequence[float]] | None = None,
        output: str | OutputKind = OutputKind.LOGITS,
        device: str | torch.device | None = None,
        input_shape: tuple[int, int, int] | None = None,
        dtype: torch.dtype | None = None,
        name: str | None = None,
    ) -> None:
        if not callable(model):
            raise TypeError(f"model: expected a torch.nn.Module or callable, got {type(model).__name__}")
        lo, hi = _check_bounds(bounds)
        self.bounds: tuple[float, float] = (lo, hi)
        self.preprocessing = _as_preprocessing(preprocessing)
        self.output = OutputKind.parse(output)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.name = name or type(model).__name__
        self.model = model
        params = list(model.parameters()) if isinstance(model, nn.Module) else []
        if isinstance(model, nn.Module):
            model.eval()
        self.dtype = dtype or (params[0].dtype if params and params[0].is_floating_point() else torch.float32)
        if device is None:
            self.device = params[0].device if params else torch.device("cpu")
        else:
            self.device = resolve_device(device)
            if isinstance(model, nn.Module):
                model.to(self.device)
        self._pre: tuple[torch.Tensor, torch.Tensor] | None = None
        self.channels_last = False
        self._compiled = False
        self._nhwc: nn.Module | None = None  # the channels_last copy of the module, once made
        self.tuned: dict[tuple[object, ...], tuple[Any, int]] = {}  # execution-mode choices, see fastpath
        self._forward: Callable[[torch.Tensor], torch.Tensor] = model
        # pad batches to a few canonical sizes (modules only: a plain callable may not be row-wise)
        self.bucket = isinstance(model, nn.Module)

    # -- execution mode -----------------------------------------------------------------------
    def set_mode(self, *, channels_last: bool = False, compile: bool = False) -> None:
        """Execution mode of the forward pass (results are numerically equivalent).

        ``channels_last`` runs a copy of the module with NHWC weights (the caller's module is left
        as it was) and converts inputs to NHWC; ``compile`` wraps the module in ``torch.compile``
        (slow first call, faster after).
        """
        module = self.modules()
        if module is None:
            if channels_last or compile:
                raise ValueError("mode: channels_last/compile need a torch.nn.Module model, got a callable")
            return
        target = module
        if channels_last:  # the caller's module keeps its layout: the NHWC weights live in a copy
            if self._nhwc is None:
                self._nhwc = copy.deepcopy(module).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            target = self._nhwc
        self.channels_last = channels_last
        self._compiled = compile
        self._forward = torch.compile(target) if compile else target

    @property
    def mode(self) -> str:
        """``"eager"``, ``"channels_last"``, ``"compile"`` or ``"compile+channels_last"``."""
        compiled = self._compiled
        name = "compile" if compiled else "eager"
        if self.channels_last:
            name = "channels_last" if not compiled else "compile+channels_last"
        return name

    # -- forward ------------------------------------------------------------------------------
    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.preprocessing is None:
            return x
        if self._pre is None or self._pre[0].device != x.device or self._pre[0].dtype != x.dtype:
            mean = torch.tensor(self.preprocessing.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.preprocessing.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            self._pre = (mean, std)
        mean, std = self._pre
        return (x - mean) / std

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Raw model outputs ``(N, classes)`` for pixel-space inputs ``x`` ``(N, C, H, W)``.

        With ``bucket_rows`` (the default for modules) the batch is padded with copies of its
        last row up to :func:`bucket_rows` rows, so the backend sees few distinct shapes (each new
        shape costs a kernel plan / a recompilation and fragments memory).
        """
        n_rows = x.shape[0]
        x = self._normalise(x.to(device=self.device, dtype=self.dtype))
        rows = bucket_rows(n_rows) if self.bucket and n_rows > 0 else n_rows
        if rows != n_rows:
            x = x[padded_index(n_rows, x.device)]
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with ieee_float32():
            out = self._forward(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"model output: expected a torch.Tensor, got {type(out).__name__}")
        if out.dim() != 2 or out.shape[0] != rows:
            raise ValueError(
                f"model output: expected shape (N, classes) = ({rows}, K), got {tuple(out.shape)}"
            )
        return out[:n_rows] if rows != n_rows else out

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Logit-like scores ``(N, classes)``: logits, or log-probabilities for softmax models."""
        return self.as_scores(self(x))

    def as_scores(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``(N, classes)`` → logit-like scores (log of probabilities if needed)."""
        if self.output is OutputKind.PROBABILITIES:
            return torch.log(raw.clamp_min(torch.finfo(raw.dtype).tiny))
        return raw

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Predicted labels ``(N,)`` (LongTensor, on CPU)."""
        parts = [self(x[i : i + batch_size]).argmax(1).cpu() for i in range(0, x.shape[0], batch_size)]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)

    # -- misc ---------------------------------------------------------------------------------
    def modules(self) -> nn.Module | None:
        """The wrapped ``nn.Module`` (``None`` for plain callables)."""
        return self.model if isinstance(self.model, nn.Module) else None

    def fingerprint(self) -> str:
        """A short hash of the weights and settings (used to match checkpoints)."""
        h = hashlib.sha256()
        h.update(repr((self.bounds, self.preprocessing, self.output.value, str(self.dtype))).encode())
        if isinstance(self.model, nn.Module):
            for k, v in self.model.state_dict().items():
                h.update(k.encode())
                h.update(v.detach().to("cpu").contiguous().numpy().tobytes())
        else:
            h.update(repr(self.model).encode())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return (
            f"Classifier(name={self.name!r}, bounds={self.bounds}, output={self.output.value!r}, "
            f"preprocessing={self.preprocessing}, device={str(self.device)!r}, "
            f"input_shape={self.input_shape})"
        )


def bucket_rows(n: int) -> int:
    """The padded batch size for ``n`` rows: the next power of two up to 32, then the next
    multiple of 32 (at most 31 wasted rows; about ``n / 32`` distinct shapes)."""
    if n <= 32:
        return 1 << max(0, n - 1).bit_length()
    return -(-n // 32) * 32


def bucket_floor(n: int) -> int:
    """The largest padded batch size (:func:`bucket_rows`) that is at most ``n`` (``n >= 1``): a
    memory cap of 17 rows gives calls of 16, not 17 padded to 32."""
    if n <= 32:
        return 1 << (max(1, n).bit_length() - 1)
    return n // 32 * 32


def padded_index(n: int, device: torch.device, bucket: bool = True) -> torch.Tensor:
    """Row index ``(bucket_rows(n),)`` that pads ``n`` rows with copies of the last one (``(n,)``
    without ``bucket``)."""
    return torch.arange(bucket_rows(n) if bucket else n, device=device).clamp_max(n - 1)


def _check_bounds(bounds: object) -> tuple[float, float]:
    if (
        not isinstance(bounds, (tuple, list))
        or len(bounds) != 2
        or not all(isinstance(b, (int, float)) for b in bounds)
    ):
        raise TypeError(f"bounds: expected a pair (lo, hi) of numbers, got {bounds!r}")
    lo, hi = float(bounds[0]), float(bounds[1])
    if not (lo < hi) or not all(map(lambda v: v == v and abs(v) != float("inf"), (lo, hi))):
        raise ValueError(f"bounds: expected finite lo < hi, got ({lo}, {hi})")
    return lo, hi


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None`` → CUDA when available, else CPU; anything else is validated."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available on this machine")
    return dev


#: what the public entry points accept as a model
ModelLike = Classifier | nn.Module | Callable[[torch.Tensor], torch.Tensor]


def as_classifier(
    model: ModelLike,
    *,
    bounds: tuple[float, float] | None = None,
    device: str | torch.device | None = None,
) -> Classifier:
    """Wrap ``model`` in a :class:`Classifier` unless it already is one.

    ``bounds`` given here override the classifier's; ``device`` moves it.
    """
    if isinstance(model, Classifier):
        clf = model
        if bounds is not None:
            clf.bounds = _check_bounds(bounds)
        if device is not None:
            dev = resolve_device(device)
            if dev != clf.device:
                if isinstance(clf.model, nn.Module):
                    clf.model.to(dev)
                clf.device = dev
                if clf._nhwc is not None:  # the copy follows: made again on the new device
                    clf._nhwc = None
                    clf.set_mode(channels_last=clf.channels_last, compile=clf._compiled)
        return clf
    if not callable(model):
        raise TypeError(
            f"model: expected an l0tre.Classifier, torch.nn.Module or callable, got {type(model).__name__}"
        )
    return Classifier(model, bounds=bounds or (0.0, 1.0), device=device)
