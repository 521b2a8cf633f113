"""The run that ``test_resume_kill.py`` kills with SIGKILL: ``python -m tests.engine.resume_child
CHECKPOINT REPORT_EVERY`` (from the repository root).

The model sleeps on every call (:class:`Paced`), so that level t = 2 lasts seconds and the test
can kill the process at a chosen point; the sleep is not part of the model's weights, so the
test resumes the checkpoint in its own process with the same model at full speed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn

import l0tre

from .test_oracle import random_mlp

SHAPE = (1, 4, 4)
#: the options of the run (the uninterrupted reference and the resume use the same)
OPTIONS: dict[str, object] = {"epsilon": 0.5, "t_max": 2, "batch_size": 16, "mode": "eager"}


class Paced(nn.Module):
    """``net`` with a pause of ``delay`` seconds before every call (not a weight)."""

    def __init__(self, net: nn.Module, delay: float = 0.0) -> None:
        super().__init__()
        self.net, self.delay = net, delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.delay:
            time.sleep(self.delay)
        return self.net(x)


def model(delay: float = 0.0) -> Paced:
    return Paced(random_mlp(SHAPE, 3, 1, hidden=16), delay)


def inputs() -> torch.Tensor:
    return torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    checkpoint, report_every = Path(argv[0]), float(argv[1])
    l0tre.evaluate(model(delay=0.01), inputs(), checkpoint=checkpoint, report_every=report_every,
                   **OPTIONS)  # type: ignore[arg-type]


if __name__ == "__main__":
    main(sys.argv[1:])
