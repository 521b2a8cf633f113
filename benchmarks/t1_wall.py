"""Wall time of one t = 1 evaluation (paper-mnist, the first 40 MNIST test images, ε = 0.25,
one thread): a whole-process command for before/after comparisons of two checkouts.

    for i in 1 2 3 4 5 6; do
      PYTHONPATH=/tmp/before/src /usr/bin/time -f "before %e s" python benchmarks/t1_wall.py
      /usr/bin/time -f "after %e s" python benchmarks/t1_wall.py
    done
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

import l0tre

torch.set_num_threads(1)
os.environ["L0TRE_TUNING_CACHE"] = "off"
root = os.environ.get("L0TRE_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
model = l0tre.load_model("paper-mnist")
x = l0tre.load_data("mnist:test", data_root=root, limit=40).x
t0 = time.perf_counter()
res = l0tre.evaluate(model, x, epsilon=0.25, t_max=1)
print(f"{time.perf_counter() - t0:.3f} s, bounds [{res.global_lower}, {res.global_upper}]", file=sys.stderr)
