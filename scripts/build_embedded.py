"""Regenerate the package data embedded in ``src/l0tre/data/`` from the shared data.

* ``paper_mnist.pt``: the torch state dict of the L0-TRE paper's MNIST CNN
  (``models/L0-TRE/Case_Study_Three/MNIST/model.json`` + ``model.h5``), converted with
  :func:`l0tre.models.load_keras`.
* ``mnist_test_100.npz``: the first 100 MNIST test images ``x`` uint8 ``(100, 28, 28)``
  and their labels ``y`` uint8 ``(100,)``.

Usage: ``python scripts/build_embedded.py [--data-root DIR] [--out DIR]``
(the data root defaults to ``$L0TRE_DATA``, else ``../shared/data`` beside the repo).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from l0tre.data import read_idx  # noqa: E402
from l0tre.models import load_keras  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Write both files; returns a process exit code."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    default_root = os.environ.get("L0TRE_DATA") or str(REPO.parent / "shared" / "data")
    parser.add_argument("--data-root", default=default_root, help="shared data folder")
    parser.add_argument("--out", default=str(REPO / "src" / "l0tre" / "data"), help="output folder")
    args = parser.parse_args(argv)
    root, out = Path(args.data_root), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model = load_keras(root / "models/L0-TRE/Case_Study_Three/MNIST/model.json")
    state = OrderedDict(
        (k, v.detach().clone().contiguous()) for k, v in model.module.state_dict().items()
    )
    torch.save(state, out / "paper_mnist.pt")

    x = read_idx(root / "mnist/t10k-images-idx3-ubyte.gz")[:100]
    y = read_idx(root / "mnist/t10k-labels-idx1-ubyte.gz")[:100]
    np.savez_compressed(
        out / "mnist_test_100.npz", x=np.ascontiguousarray(x), y=np.ascontiguousarray(y)
    )
    for name in ("paper_mnist.pt", "mnist_test_100.npz"):
        print(f"wrote {out / name} ({(out / name).stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
