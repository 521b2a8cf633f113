"""Memory planning: how many rows a model call may take within a byte budget."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..arith import ieee_float32
from ..classifier import Classifier, bucket_floor

__all__ = ["DEFAULT_MAX_MEMORY", "default_max_memory", "layer_output_bytes", "memory_rows", "plan_batch_size"]

DEFAULT_MAX_MEMORY = 1 << 30  # 1 GiB


def layer_output_bytes(model: Classifier, shape: tuple[int, ...]) -> list[int] | None:
    """Bytes of each leaf module's output for one sample (a probe forward pass with hooks), or
    ``None`` for plain callables and TorchScript (no hooks there)."""
    module = model.modules()
    if module is None or isinstance(module, torch.jit.ScriptModule):
        return None
    sizes: list[int] = []

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            sizes.append(out.numel() * out.element_size())

    handles = [m.register_forward_hook(hook) for m in module.modules() if len(list(m.children())) == 0]
    try:
        # the module itself, not the classifier: its channels_last copy would not run these hooks
        with torch.no_grad(), ieee_float32():
            module(model._normalise(torch.full((1, *shape), model.bounds[0], dtype=model.dtype, device=model.device)))
    finally:
        for h in handles:
            h.remove()
    return sizes


def _activation_bytes(model: Classifier, shape: tuple[int, ...]) -> int:
    """Bytes of all leaf-module outputs for one sample."""
    sizes = layer_output_bytes(model, shape)
    if sizes is None:  # assume activations ≈ 64 × the input
        return 64 * math.prod(shape) * torch.empty((), dtype=model.dtype).element_size()
    return sum(sizes)


def memory_rows(model: Classifier, shape: tuple[int, ...], max_memory: int) -> int:
    """Rows of ``shape`` inputs whose model call fits in ``max_memory`` bytes.

    Per-row cost = input bytes × 3 (input, copy, scatter) + activation bytes × 2 (a probe
    forward pass with hooks measures the activations of one sample).
    """
    elem = torch.empty((), dtype=model.dtype).element_size()
    per_row = 3 * elem * math.prod(shape) + 2 * _activation_bytes(model, shape) + 64
    rows = max(1, max_memory // per_row)
    return bucket_floor(rows) if model.bucket else rows  # calls are padded to a bucket: stay within it


def plan_batch_size(model: Classifier, shape: tuple[int, ...], batch_size: int | None, max_memory: int) -> int:
    """Rows per model call: the user's ``batch_size`` (default 4096) capped by ``max_memory``."""
    return max(1, min(batch_size or 4096, memory_rows(model, shape, max_memory)))


def default_max_memory(device: torch.device) -> int:
    """The memory budget of one model call when the caller gives none: 1 GiB on a CPU; a quarter
    of the device's memory (at most 32 GiB) on a GPU, which needs tens of thousands of rows per
    call to be saturated."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return int(min(total // 4, 32 << 30))
    return DEFAULT_MAX_MEMORY
