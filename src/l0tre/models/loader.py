"""``load_model``: one entry point for built-in names, modules and model files."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from ..classifier import Classifier, Preprocessing
from ..paths import DataFileNotFoundError, embedded_file, require_file
from .architectures import ARCHITECTURES, ArchSpec
from .keras_h5 import load_keras
from .onnx_loader import load_onnx
from .registry import BUILTIN, EMBEDDED, ModelInfo, embedded_name
from .zoo import ZOO

__all__ = ["load_model", "load_state_dict_file", "match_architecture", "pickle_globals"]

_KERAS_SUFFIXES = {".h5", ".hdf5", ".keras", ".json"}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
#: globals of plain tensor data (a weights-only load allows them; the refusal names the others)
_DATA_GLOBALS = ("torch._utils.", "collections.OrderedDict", "__builtin__.set", "builtins.set",
                 "__builtin__.frozenset", "builtins.frozenset", "torch.Size", "torch.device", "torch.dtype")

ModelSpec = str | os.PathLike[str] | nn.Module
#: every architecture a state dict may belong to: the built-in ones and the paper's zoo
KNOWN_ARCHITECTURES: Mapping[str, ArchSpec] = MappingProxyType({**ARCHITECTURES, **ZOO})
PreprocessingArg = Preprocessing | dict[str, Sequence[float]] | None


def _is_tensor_mapping(obj: object) -> bool:
    """Whether ``obj`` is a non-empty mapping of names to tensors (a state dict)."""
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
    """Parameter names and shapes of a state dict (batch-norm counters left out)."""
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
    known = ", ".join(KNOWN_ARCHITECTURES)
    if arch is None:
        sig = _signature(sd)
        hits = [n for n, a in KNOWN_ARCHITECTURES.items() if _signature(a.build().state_dict()) == sig]
        if len(hits) != 1:
            raise ValueError(
                f"arch: the state_dict's {len(sig)} parameter names/shapes match "
                f"{'no' if not hits else 'several'} built-in architectures ({known}); "
                "pass arch=NAME, or load a full model (TorchScript, ONNX, or a pickle with "
                "trust_pickle=True)"
            )
        arch = hits[0]
    if arch not in KNOWN_ARCHITECTURES:
        raise ValueError(f"arch: expected one of {known}, got {arch!r}")
    module = KNOWN_ARCHITECTURES[arch].build()
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
    """Whether ``path`` is a TorchScript archive (a zip with code or constants)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def pickle_globals(path: str | os.PathLike[str]) -> list[str] | None:
    """The Python objects (``module.name``) that unpickling the torch file ``path`` would import
    and may call, in order of appearance; ``None`` when the file holds no readable pickle.

    Reads the pickle opcodes only (nothing is imported or run): ``data.pkl`` of a zip-format
    torch file, else the pickles at the start of the file (the legacy format, a plain pickle).
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                member = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                raw = zf.read(member) if member is not None else b""
        else:
            raw = path.read_bytes()
    except (OSError, zipfile.BadZipFile):
        return None
    return _scan_pickles(raw)


def _scan_pickles(raw: bytes) -> list[str] | None:
    """The globals the pickles at the start of ``raw`` name; ``None`` when the first is unreadable."""
    stream = io.BytesIO(raw)
    names: list[str] = []
    complete = 0
    while stream.tell() < len(raw):
        strings: list[str] = []  # the strings pushed so far (STACK_GLOBAL takes the last two)
        memo: dict[int, str] = {}
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str) and ("UNICODE" in op.name or "STRING" in op.name):
                    strings.append(str(arg))
                elif op.name == "MEMOIZE" and strings:
                    memo[len(memo)] = strings[-1]
                elif op.name in ("BINGET", "LONG_BINGET", "GET") and isinstance(arg, int) and arg in memo:
                    strings.append(memo[arg])
        except Exception:  # noqa: BLE001 - not (or no longer) a pickle: the storages of a legacy file
            break
        complete += 1
    return list(dict.fromkeys(names)) if complete else None


def _is_data_global(name: str) -> bool:
    """Whether the pickled global ``name`` is part of plain tensor data (not code of the file's own)."""
    return name.startswith(_DATA_GLOBALS) or (name.startswith("torch.") and name.endswith("Storage"))


def _refused_pickle(path: Path, exc: pickle.UnpicklingError) -> ValueError:
    """The error for a torch file that a weights-only load refused."""
    names = pickle_globals(path)
    if names is None or (not names and "Unsupported global" not in str(exc)):
        return ValueError(f"model: expected a readable torch file, got {str(path)!r} (corrupt, or not a torch file)")
    calls = [n for n in names if not _is_data_global(n)]
    named = f" (it names {', '.join(calls[:3])})" if calls else ""
    return ValueError(
        f"model: {str(path)!r} holds pickled code{named}: loading it would run code from the file, so it is "
        "refused; pass --trust-pickle (trust_pickle=True) only if you trust its source, or save a "
        "state_dict / TorchScript / ONNX instead"
    )


def load_state_dict_file(path: str | os.PathLike[str], *, trust_pickle: bool = False) -> object:
    """``torch.load`` a ``.pt``/``.pth``/``.th`` file, safely unless ``trust_pickle``.

    Returns whatever the file holds (usually a state dict or checkpoint dict; a module
    only when ``trust_pickle`` is true).

    Raises:
        ValueError: the file is corrupt, or holds pickled code (a full model, or anything a
            weights-only load refuses) and ``trust_pickle`` is false.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols: the refusal below says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_pickle(path, exc)
        if not trust_pickle or "holds pickled code" not in str(refused):
            raise refused from exc
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
    if arch is None and isinstance(obj, Mapping) and isinstance(obj.get("arch"), str):
        arch = obj["arch"]  # a file of `l0tre train` (or the embedded sDNN) names its architecture
    name, module = match_architecture(sd, arch)
    return module, KNOWN_ARCHITECTURES[name].input_shape


def _builtin(info: ModelInfo, root: str | os.PathLike[str] | None) -> nn.Module:
    """The module of a built-in model (embedded weights, or a file under the data root)."""
    what = f"model {info.name!r}"
    if info.source == EMBEDDED:
        path = embedded_file(embedded_name(info.name))
        if not path.is_file():
            raise DataFileNotFoundError(
                f"{what}: expected the embedded weights at {str(path)!r}, got no such file "
                "(regenerate them with `python scripts/build_embedded.py`)"
            )
        if info.name != "paper-mnist":  # a dict naming its architecture (see l0tre.models.training)
            return _torch_file(path, None, trust_pickle=False)[0]
        sd = torch.load(path, map_location="cpu", weights_only=True)
        return match_architecture(sd, "paper-mnist")[1]
    path = require_file(info.source, root, what=what)
    if info.name == "paper-mnist-softmax":
        return load_keras(path).module
    return _torch_file(path, info.arch or info.name, trust_pickle=False)[0]


def _model_file(
    text: str, path: Path, arch: str | None, trust_pickle: bool, input_shape: tuple[int, int, int] | None
) -> tuple[nn.Module, tuple[int, int, int] | None, str]:
    """``(module, input shape if known, output kind)`` of the model file ``path`` (``text`` as given).

    Raises:
        DataFileNotFoundError: no such file.
        ValueError: a folder, an unknown name, or a file that cannot be loaded.
    """
    if path.is_file():
        with path.open("rb") as fh:
            magic = fh.read(8)
        if path.suffix.lower() == ".onnx":
            om = load_onnx(path)
            return om.module, om.input_shape, om.output
        if path.suffix.lower() == ".mat":
            from .matlab import load_series_network  # needs scipy

            mat_module, mat_shape = load_series_network(path)
            return mat_module, mat_shape, "logits"
        if path.suffix.lower() in _KERAS_SUFFIXES or magic == _HDF5_MAGIC:
            km = load_keras(path, input_shape=input_shape)
            return km.module, km.input_shape, km.output
        module, shape = _torch_file(path, arch, trust_pickle)
        return module, shape, "logits"
    if path.is_dir():
        raise ValueError(f"model: expected a model file or built-in name, got the directory {text!r}")
    if path.suffix or os.sep in text or "/" in text:
        raise DataFileNotFoundError(f"model: expected an existing model file, got {text!r} (no such file)")
    raise ValueError(
        f"model: expected a built-in name ({', '.join(BUILTIN)}) or a model file "
        f"(.pt/.pth/.onnx/.h5/.json/.mat/TorchScript), got {text!r}"
    )


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
        ValueError: unknown name, missing or corrupt file, unmatched state dict, a file holding pickled
            code without ``trust_pickle``.
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
        if text in BUILTIN:
            info = BUILTIN[text]
            module, found_shape, found_output = _builtin(info, data_root), info.input_shape, info.output
        else:
            path = Path(text).expanduser()
            module, found_shape, found_output = _model_file(text, path, arch, trust_pickle, input_shape)
            label = path.name
    else:
        raise TypeError(f"model: expected a name, path or torch.nn.Module, got {type(spec).__name__}")
    if preprocessing is None and info is not None and info.mean is not None and info.std is not None:
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
