"""``load_model``: one entry point for built-in names, modules and model files."""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..classifier import Classifier, Preprocessing
from ..paths import DataFileNotFoundError, embedded_file, require_file
from .architectures import ARCHITECTURES
from .keras_h5 import load_keras
from .onnx_loader import load_onnx
from .registry import BUILTIN, ModelInfo

__all__ = ["load_model", "load_state_dict_file", "match_architecture"]

_KERAS_SUFFIXES = {".h5", ".hdf5", ".keras", ".json"}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")

ModelSpec = str | os.PathLike[str] | nn.Module
PreprocessingArg = Preprocessing | dict[str, Sequence[float]] | None


def _is_tensor_mapping(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _as_state_dict(obj: object) -> dict[str, torch.Tensor] | None:
    """The state dict inside ``obj`` (plain, or a checkpoint dict), ``module.`` prefix removed."""
    sd: Any = None
    if _is_tensor_mapping(obj):
        sd = obj
    elif isinstance(obj, Mapping):
        sd = next((obj[k] for k in _STATE_DICT_KEYS if _is_tensor_mapping(obj.get(k))), None)
    if sd is None:
        return None
    if all(k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def _signature(sd: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items() if not k.endswith("num_batches_tracked")}


def match_architecture(
    sd: Mapping[str, torch.Tensor], arch: str | None = None
) -> tuple[str, nn.Module]:
    """Build the built-in architecture that ``sd`` belongs to and load ``sd`` into it.

    Args:
        sd: a state dict (``module.`` prefix already removed).
        arch: a name from :data:`~l0tre.models.architectures.ARCHITECTURES`; ``None`` picks
            the one architecture whose parameter names and shapes match exactly.

    Returns:
        ``(arch_name, module)`` with the weights loaded, in eval mode.

    Raises:
        ValueError: unknown ``arch``, or keys/shapes that do not match (exactly one)
            architecture.
    """
    known = ", ".join(ARCHITECTURES)
    if arch is None:
        sig = _signature(sd)
        hits = [n for n, a in ARCHITECTURES.items() if _signature(a.build().state_dict()) == sig]
        if len(hits) != 1:
            raise ValueError(
                f"arch: the state_dict's {len(sig)} parameter names/shapes match "
                f"{'no' if not hits else 'several'} built-in architectures ({known}); "
                "pass arch=NAME, or load a full model (TorchScript, ONNX, or a pickle with "
                "trust_pickle=True)"
            )
        arch = hits[0]
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch: expected one of {known}, got {arch!r}")
    module = ARCHITECTURES[arch].build()
    want, got = _signature(module.state_dict()), _signature(sd)
    if want != got:
        missing = sorted(set(want) - set(got))[:3]
        extra = sorted(set(got) - set(want))[:3]
        shapes = [k for k in set(want) & set(got) if want[k] != got[k]][:3]
        raise ValueError(
            f"arch: the state_dict does not fit {arch!r} (missing {missing}, unexpected {extra}, "
            f"wrong shape {shapes})"
        )
    result = module.load_state_dict(dict(sd), strict=False)
    if any(not k.endswith("num_batches_tracked") for k in result.missing_keys):
        raise ValueError(f"arch: state_dict lacks {result.missing_keys[:3]} for {arch!r}")
    return arch, module.eval()


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def load_state_dict_file(path: str | os.PathLike[str], *, trust_pickle: bool = False) -> object:
    """``torch.load`` a ``.pt``/``.pth``/``.th`` file, safely unless ``trust_pickle``.

    Returns whatever the file holds (usually a state dict or checkpoint dict; a module
    only when ``trust_pickle`` is true).

    Raises:
        ValueError: the file is corrupt, or is a full pickle and ``trust_pickle`` is false.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):
            raise ValueError(
                f"model: expected a readable torch file, got {str(path)!r} "
                "(corrupt, or not a torch file)"
            ) from exc
        if not trust_pickle:
            raise ValueError(
                f"model: {str(path)!r} is a full pickled model, and loading it runs code from the "
                "file; pass --trust-pickle (trust_pickle=True) only if you trust its source, or "
                "save a state_dict / TorchScript / ONNX instead"
            ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as exc:
        raise ValueError(
            f"model: expected a readable torch file, got {str(path)!r} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'truncated'})"
        ) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # anything the trusted pickle raises
        raise ValueError(f"model: could not unpickle {str(path)!r} ({exc})") from exc


def _torch_file(
    path: Path, arch: str | None, trust_pickle: bool
) -> tuple[nn.Module, tuple[int, int, int] | None]:
    """The module in a torch file, and its input shape when it is a built-in architecture."""
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript as deprecated
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(str(path), map_location="cpu").eval(), None
        except RuntimeError as exc:
            raise ValueError(
                f"model: expected a readable TorchScript file, got {str(path)!r} ({exc})"
            ) from exc
    obj = load_state_dict_file(path, trust_pickle=trust_pickle)
    if isinstance(obj, nn.Module):
        return obj.eval(), None
    sd = _as_state_dict(obj)
    if sd is None:
        raise ValueError(
            f"model: expected a state_dict, checkpoint dict or module in {str(path)!r}, "
            f"got {type(obj).__name__}"
        )
    name, module = match_architecture(sd, arch)
    return module, ARCHITECTURES[name].input_shape


def _builtin(info: ModelInfo, root: str | os.PathLike[str] | None) -> nn.Module:
    what = f"model {info.name!r}"
    if info.name == "paper-mnist":
        path = embedded_file("paper_mnist.pt")
        if not path.is_file():
            raise DataFileNotFoundError(
                f"{what}: expected the embedded weights at {str(path)!r}, got no such file "
                "(regenerate them with `python scripts/build_embedded.py`)"
            )
        sd = torch.load(path, map_location="cpu", weights_only=True)
        return match_architecture(sd, "paper-mnist")[1]
    path = require_file(info.source, root, what=what)
    if info.name == "paper-mnist-softmax":
        return load_keras(path).module
    return _torch_file(path, info.name, trust_pickle=False)[0]


def load_model(
    spec: ModelSpec,
    *,
    arch: str | None = None,
    device: str | torch.device | None = None,
    trust_pickle: bool = False,
    data_root: str | os.PathLike[str] | None = None,
    bounds: tuple[float, float] | None = None,
    preprocessing: PreprocessingArg = None,
    output: str | None = None,
    input_shape: tuple[int, int, int] | None = None,
) -> Classifier:
    """Load a classifier that takes pixel-space inputs ``(N, C, H, W)`` in ``bounds``.

    Args:
        spec: a built-in name (see :func:`list_models`), a ``torch.nn.Module``, or a file:
            TorchScript, ``.pt``/``.pth``/``.th`` (state dict or, with ``trust_pickle``, a
            pickled module), ``.onnx``, or Keras-2 HDF5 (``.h5`` full model, or ``.json`` /
            weights-only ``.h5`` side by side).
        arch: the built-in architecture for a bare state dict (default: the only one whose
            keys and shapes match).
        device: where the model runs (``None``: CPU / the module's own device).
        trust_pickle: allow unpickling full models (this runs code from the file).
        data_root: where the shared data lives (else ``$L0TRE_DATA``).
        bounds, preprocessing, output, input_shape: override what the model records.

    Raises:
        ValueError: unknown name, missing or corrupt file, unmatched state dict, refused pickle.
        TypeError: ``spec`` of the wrong type.
    """
    info: ModelInfo | None = None
    found_shape: tuple[int, int, int] | None = None
    found_output = "logits"
    if isinstance(spec, nn.Module):
        module, label = spec, type(spec).__name__
    elif isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        label = text
        path = Path(text).expanduser()
        if text in BUILTIN:
            info = BUILTIN[text]
            module, found_shape, found_output = (
                _builtin(info, data_root),
                info.input_shape,
                info.output,
            )
        elif path.is_file():
            label = path.name
            with path.open("rb") as fh:
                magic = fh.read(8)
            if path.suffix.lower() == ".onnx":
                om = load_onnx(path)
                module, found_shape, found_output = om.module, om.input_shape, om.output
            elif path.suffix.lower() in _KERAS_SUFFIXES or magic == _HDF5_MAGIC:
                km = load_keras(path, input_shape=input_shape)
                module, found_shape, found_output = km.module, km.input_shape, km.output
            else:
                module, found_shape = _torch_file(path, arch, trust_pickle)
        elif path.is_dir():
            raise ValueError(
                f"model: expected a model file or built-in name, got the directory {text!r}"
            )
        elif path.suffix or os.sep in text or "/" in text:
            raise DataFileNotFoundError(
                f"model: expected an existing model file, got {text!r} (no such file)"
            )
        else:
            raise ValueError(
                f"model: expected a built-in name ({', '.join(BUILTIN)}) or a model file "
                f"(.pt/.pth/.onnx/.h5/.json/TorchScript), got {text!r}"
            )
    else:
        raise TypeError(
            f"model: expected a name, path or torch.nn.Module, got {type(spec).__name__}"
        )
    if (
        preprocessing is None
        and info is not None
        and info.mean is not None
        and info.std is not None
    ):
        preprocessing = {"mean": info.mean, "std": info.std}
    return Classifier(
        module,
        bounds=bounds if bounds is not None else (0.0, 1.0),
        preprocessing=preprocessing,
        output=output if output is not None else found_output,
        device=device,
        input_shape=input_shape if input_shape is not None else found_shape,
        name=info.name if info is not None else label,
    )
