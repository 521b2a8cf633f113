"""Where the shared data files (models, data sets) live.

One rule, used by both :mod:`l0tre.models` and :mod:`l0tre.data`: an explicit
``data_root`` argument wins, then the ``L0TRE_DATA`` environment variable, else there is
no data root (only the embedded defaults are usable).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_VAR", "DataFileNotFoundError", "data_root", "embedded_file", "require_file"]

ENV_VAR = "L0TRE_DATA"


class DataFileNotFoundError(FileNotFoundError, ValueError):
    """A file that a model or data spec needs is missing (both a ``FileNotFoundError``
    and a ``ValueError``, so either kind of handler catches it)."""


def data_root(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The directory holding the shared data, or ``None`` when none is configured.

    Args:
        explicit: a directory given by the caller (``--data-root``); wins over the
            ``L0TRE_DATA`` environment variable.

    Raises:
        DataFileNotFoundError: the chosen directory does not exist.
    """
    if explicit is not None and str(explicit) != "":
        root, origin = Path(explicit).expanduser(), "data_root"
    else:
        env = os.environ.get(ENV_VAR, "")
        if not env:
            return None
        root, origin = Path(env).expanduser(), f"${ENV_VAR}"
    if not root.is_dir():
        raise DataFileNotFoundError(f"{origin}: expected an existing directory, got {str(root)!r}")
    return root


def embedded_file(filename: str) -> Path:
    """The path of a file shipped as package data in ``l0tre/data/`` (it may not exist in a
    checkout that has not run ``scripts/build_embedded.py``)."""
    return Path(__file__).resolve().parent / "data" / filename


def require_file(
    relpath: str, explicit: str | os.PathLike[str] | None = None, *, what: str = "file"
) -> Path:
    """Resolve ``relpath`` under the data root and check that it exists.

    Args:
        relpath: a path relative to the data root, e.g. ``"mnist/t10k-images-idx3-ubyte.gz"``.
        explicit: an explicit data root (see :func:`data_root`).
        what: what needs the file, for the error message (e.g. ``"model 'paper-mnist-softmax'"``).

    Raises:
        DataFileNotFoundError: no data root is configured, or the file is missing under it.
    """
    root = data_root(explicit)
    if root is None:
        raise DataFileNotFoundError(
            f"{what}: needs the shared data file {relpath!r}, but no data root is set; "
            f"pass --data-root DIR / data_root=DIR or set {ENV_VAR}=DIR"
        )
    path = root / relpath
    if not path.is_file():
        raise DataFileNotFoundError(
            f"{what}: expected the file {relpath!r} under the data root {str(root)!r}, "
            f"got no such file ({str(path)!r})"
        )
    return path
