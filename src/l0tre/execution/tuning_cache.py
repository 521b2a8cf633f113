"""A small on-disk cache of execution-mode measurements (so repeated runs start at once).

Auto-tuning (channels_last or not, rows per model call, whether the incremental t=1 path pays)
costs a few thousand forward passes — about a second on a 2-core CPU, longer than the first
progress report should take. The decisions are stored per machine, torch version, thread
count, model fingerprint and input shape in ``$L0TRE_CACHE_DIR/tuning.json`` (default
``$XDG_CACHE_HOME/l0tre`` or ``~/.cache/l0tre``). Set ``L0TRE_TUNING_CACHE=off`` to neither
read nor write it. A decision only chooses *how* to compute, never *what*: every mode gives the
same results, so a stale entry can only cost speed. Unreadable files are ignored; writes are
atomic (temp file + ``os.replace``).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_text
from ..classifier import Classifier

__all__ = ["REVISION", "cache_path", "context_key", "lookup", "store"]

# Bump when an execution path changes what a stored measurement would decide (2: the sparse
# head made incremental rows far cheaper for conv → Flatten → Linear models).
REVISION = 3

_FILE = "tuning.json"
_MAX_ENTRIES = 256


def cache_path() -> Path | None:
    """The cache file, or ``None`` when the cache is switched off."""
    if os.environ.get("L0TRE_TUNING_CACHE", "").strip().lower() in ("0", "off", "no", "false"):
        return None
    base = os.environ.get("L0TRE_CACHE_DIR")
    if base:
        return Path(base).expanduser() / _FILE
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return root / "l0tre" / _FILE


def context_key(model: Classifier, *parts: object) -> str:
    """A key naming the machine, torch build, threads, device, model weights and ``parts``."""
    if model.device.type == "cuda":
        hw = torch.cuda.get_device_name(model.device)
    else:
        hw = f"{platform.machine()}-{platform.processor()}-{os.cpu_count()}cpu-{torch.get_num_threads()}thr"
    return json.dumps([REVISION, torch.__version__, hw, str(model.device), model.fingerprint(), *map(str, parts)])


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def lookup(key: str) -> Any:
    """The stored value for ``key`` or ``None``."""
    path = cache_path()
    if path is None:
        return None
    return _read(path).get(key)


def store(key: str, value: Any) -> None:
    """Store ``value`` (JSON-serialisable) under ``key``; failures to write are ignored."""
    path = cache_path()
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read(path)
        data.pop(key, None)
        data[key] = value
        while len(data) > _MAX_ENTRIES:
            data.pop(next(iter(data)))
        atomic_write_text(path, json.dumps(data))
    except OSError:
        return
