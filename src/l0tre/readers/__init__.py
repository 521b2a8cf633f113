"""Readers of the data sources that :func:`l0tre.data.load_data` accepts, one module per kind:

* :mod:`.idx` — MNIST IDX files (``mnist:test``, ``mnist:train``) and the embedded fallback;
* :mod:`.cifar` — CIFAR-10: the shared first-100 ``.npz`` and the official python batches;
* :mod:`.arrays` — ``.npy`` / ``.npz`` array files;
* :mod:`.images` — a PNG/JPEG image or a folder of them.

Each returns a :class:`~.source.Source` (``n`` images fetched by position); selection and the
conversion to pixel space live in :mod:`l0tre.data`.
"""

from __future__ import annotations

from .arrays import open_array_file, read_npz
from .cifar import open_cifar10
from .idx import open_mnist, read_idx
from .images import IMAGE_SUFFIXES, open_images
from .source import Source, in_memory

__all__ = [
    "IMAGE_SUFFIXES",
    "Source",
    "in_memory",
    "open_array_file",
    "open_cifar10",
    "open_images",
    "open_mnist",
    "read_idx",
    "read_npz",
]
