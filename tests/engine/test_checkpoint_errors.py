"""A checkpoint that cannot be written: an ``OutputError`` (an ``OSError``) naming the
``checkpoint`` argument and the path, raised once, with nothing left behind."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest
import torch

import l0tre

from .test_oracle import random_mlp


def test_unwritable_checkpoint_names_the_argument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    path = blocker / "run.pt"  # its parent is a file: no write can succeed
    x = torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(l0tre.OutputError) as info:
        l0tre.evaluate(random_mlp((1, 3, 3), 3, 0), x, epsilon=0.5, t_max=2, checkpoint=path)
    assert isinstance(info.value, OSError)
    assert str(info.value).startswith("checkpoint:") and str(blocker) in str(info.value)
    gc.collect()  # a generator left suspended would report a second failure here
    sys.stderr.flush()
    assert "Exception ignored" not in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
