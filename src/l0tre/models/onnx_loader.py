"""ONNX models → ``torch.nn.Module`` via ``onnx2torch``.

``onnx2torch`` imports ``torchvision`` (for its NMS and RoIAlign converters only). Where
torchvision is missing or broken beside the installed torch, we put a stand-in module in
``sys.modules`` for the duration of that one import: the stand-in's functions raise if a
graph ever uses those two operators; every other converter works unchanged.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["OnnxModel", "load_onnx"]


@dataclass(frozen=True)
class OnnxModel:
    """A converted ONNX model.

    Attributes:
        module: the ``torch.fx.GraphModule`` taking ``(N, C, H, W)``.
        output: ``"probabilities"`` if the graph ends in a Softmax, else ``"logits"``.
        input_shape: ``(C, H, W)`` when the graph's input has static dimensions, else ``None``.
    """

    module: nn.Module
    output: str
    input_shape: tuple[int, int, int] | None


def _unavailable(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError(
        "this ONNX graph needs torchvision (NMS/RoIAlign), which is not usable beside the "
        "installed torch"
    )


@contextmanager
def _torchvision_stand_in() -> Iterator[None]:
    """Make ``import torchvision`` succeed while inside the block, if it does not already."""
    before = {k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")}
    try:
        importlib.import_module("torchvision")
        works = True
    except Exception:  # missing, or broken against this torch build
        works = False
        for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            if k not in before:
                del sys.modules[k]
    if works:
        yield
        return
    stub, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    for fn in ("nms", "batched_nms", "roi_align", "box_convert"):
        setattr(ops, fn, _unavailable)
    stub.ops = ops  # type: ignore[attr-defined]
    added = {"torchvision": stub, "torchvision.ops": ops}
    saved = {k: sys.modules[k] for k in added if k in sys.modules}
    sys.modules.update(added)
    try:
        yield
    finally:
        for k, mod in added.items():
            if sys.modules.get(k) is mod:
                del sys.modules[k]
        sys.modules.update(saved)


def _import_onnx2torch() -> Any:
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise ValueError(
            "model: ONNX files need the 'onnx' package; install it with "
            "`pip install onnx onnxruntime` and `pip install --no-deps onnx2torch`"
        ) from exc
    with _torchvision_stand_in():
        try:
            return importlib.import_module("onnx2torch")
        except ImportError as exc:
            raise ValueError(
                "model: ONNX files need 'onnx2torch'; install it with "
                "`pip install --no-deps onnx2torch`"
            ) from exc


def load_onnx(path: str | Path) -> OnnxModel:
    """Read an ``.onnx`` file and convert it to a torch module.

    Raises:
        ValueError: missing dependency, unreadable/corrupt file, or an operator that
            ``onnx2torch`` cannot convert.
    """
    converter = _import_onnx2torch()
    import onnx

    path = Path(path)
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as exc:  # protobuf DecodeError, ValidationError, OSError
        raise ValueError(f"model: expected a valid ONNX file, got {str(path)!r} ({exc})") from exc
    init_names = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init_names]
    if len(inputs) != 1:
        raise ValueError(f"model: expected an ONNX graph with one input, got {len(inputs)}")
    dims = [
        d.dim_value if d.HasField("dim_value") else None
        for d in inputs[0].type.tensor_type.shape.dim
    ]
    shape: tuple[int, int, int] | None = None
    if len(dims) == 4 and all(isinstance(d, int) and d > 0 for d in dims[1:]):
        shape = (int(dims[1] or 0), int(dims[2] or 0), int(dims[3] or 0))
    nodes = list(proto.graph.node)
    output = "probabilities" if nodes and nodes[-1].op_type == "Softmax" else "logits"
    try:
        module = converter.convert(proto)
    except Exception as exc:  # NotImplementedError for unknown ops, among others
        raise ValueError(
            f"model: could not convert ONNX graph {str(path)!r} to torch ({exc})"
        ) from exc
    return OnnxModel(module.eval(), output, shape)
