"""The paper's architectures: parameter counts computed here from the tables, output shapes,
deterministic training under a seed, the saved file loads by itself, and `l0tre train`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from l0tre import load_model
from l0tre.cli import main
from l0tre.models.training import TrainConfig, save_trained, train
from l0tre.models.zoo import ZOO, dnn


def conv(cin: int, cout: int, k: int = 3) -> int:
    return cin * cout * k * k + cout


def fc(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def bn(c: int) -> int:
    return 2 * c  # scale and offset (running statistics are buffers)


#: the tables read as in docs/studies.md; valid 3x3 convolutions shrink 28 by 2 each
PARAMS = {
    "sdnn": conv(1, 8, 2) + bn(8) + conv(8, 16, 2) + bn(16) + conv(16, 32, 2) + bn(32) + fc(17 * 17 * 32, 10),
    "dnn-0": conv(1, 32) + conv(32, 64) + fc(12 * 12 * 64, 128) + fc(128, 10),
    "dnn-1": conv(1, 32) + fc(26 * 26 * 32, 10),
    "dnn-2": conv(1, 32) + conv(32, 64) + fc(24 * 24 * 64, 10),
    "dnn-3": conv(1, 32) + conv(32, 64) + bn(64) + fc(24 * 24 * 64, 10),
    "dnn-4": conv(1, 32) + conv(32, 64) + bn(64) + fc(24 * 24 * 64, 128) + fc(128, 10),
    "dnn-5": conv(1, 32) + conv(32, 64) + bn(64) + fc(24 * 24 * 64, 128) + fc(128, 10),
    "dnn-6": conv(1, 32) + conv(32, 64) + conv(64, 128) + bn(128) + fc(22 * 22 * 128, 128) + fc(128, 10),
    "dnn-7": conv(1, 16) + conv(16, 32) + bn(32) + conv(32, 64) + bn(64) + conv(64, 128) + bn(128)
    + fc(20 * 20 * 128, 256) + fc(256, 10),
    "case2-mnist": conv(1, 32) + conv(32, 32) + conv(32, 64) + conv(64, 64) + fc(4 * 4 * 64, 200) + fc(200, 200)
    + fc(200, 10),
    "case2-cifar": conv(3, 64) + conv(64, 64) + conv(64, 128) + conv(128, 128) + fc(5 * 5 * 128, 256)
    + fc(256, 256) + fc(256, 10),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_parameter_count_and_output_shape(name: str) -> None:
    spec = ZOO[name]
    module = spec.build().eval()
    assert sum(p.numel() for p in module.parameters()) == PARAMS[name]
    out = module(torch.rand(3, *spec.input_shape))
    assert out.shape == (3, 10)


def test_dropout_only_in_training() -> None:
    """DNN-5 differs from DNN-4 by dropout: same parameters, same function in eval mode."""
    torch.manual_seed(0)
    a = dnn(4)
    b = dnn(5)
    with torch.no_grad():  # the same tensors in the same order (dropout shifts the layer indices)
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert ka.split(".")[1] == kb.split(".")[1] and va.shape == vb.shape
            vb.copy_(va)
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(a.eval()(x), b.eval()(x))
    b.train()
    assert not torch.equal(b(x), b(x))
    with pytest.raises(ValueError, match="i: expected an integer in 0..7, got 8"):
        dnn(8)


def _tiny(arch: str, seed: int, root: Path) -> TrainConfig:
    return TrainConfig(arch, epochs=2, seed=seed, batch_size=32, limit=96, test_limit=50, data_root=root,
                       show_progress=False)


@pytest.mark.parametrize("arch", ["dnn-5", "sdnn"])
def test_training_is_deterministic_under_a_seed(arch: str, shared_data: Path) -> None:
    first, again, other = (train(_tiny(arch, s, shared_data)) for s in (3, 3, 4))
    sd1, sd2, sd3 = (r.module.state_dict() for r in (first, again, other))
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert first.losses == again.losses and first.test_accuracy == again.test_accuracy
    assert any(not torch.equal(sd1[k], sd3[k]) for k in sd1 if sd1[k].is_floating_point())
    assert first.train_images == 96 and first.test_images == 50 and len(first.losses) == 2


def test_sdnn_subtracts_the_mean_training_image(shared_data: Path) -> None:
    from l0tre.data import load_data

    result = train(_tiny("sdnn", 0, shared_data))
    mean = load_data("mnist14:train", data_root=shared_data, limit=96).x.mean(0)
    assert torch.allclose(result.module[0].average, mean)


def test_saved_file_loads_without_arch(shared_data: Path, tmp_path: Path) -> None:
    """DNN-4 and DNN-5 have the same parameter shapes: the file's architecture name decides."""
    result = train(_tiny("dnn-5", 0, shared_data))
    path = save_trained(result, tmp_path / "m.pt")
    stored = torch.load(path, weights_only=True)
    assert stored["arch"] == "dnn-5" and stored["test_accuracy"] == result.test_accuracy
    model = load_model(path)
    assert model.input_shape == (1, 28, 28)
    x = torch.rand(5, 1, 28, 28)
    want = result.module.eval()(x)
    assert torch.equal(model.model.eval()(x), want)  # same layers, same weights: bit for bit
    # through the Classifier, whose padding of the batch to a bucket size may change the rounding
    assert torch.allclose(model(x), want, rtol=0, atol=1e-5)
    assert [type(m).__name__ for m in model.model].count("Dropout") == 1


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="no CIFAR-10 training set is on disk"):
        TrainConfig("case2-cifar")
    with pytest.raises(ValueError, match="arch: expected one of sdnn, dnn-0"):
        TrainConfig("dnn-9")
    with pytest.raises(ValueError, match="epochs: expected an integer >= 1, got 0"):
        TrainConfig("dnn-1", epochs=0)


def test_cli_train(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dnn1.pt"
    args = ["train", "dnn-1", "--out", str(out), "--epochs", "1", "--limit", "64", "--test-limit", "40",
            "--data-root", str(shared_data), "--quiet", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["arch"] == "dnn-1" and summary["test_images"] == 40
    assert load_model(out).input_shape == (1, 28, 28)
    assert main(args) == 2  # the file exists
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["train", "case2-cifar", "--out", str(tmp_path / "c.pt")]) == 2
    assert "no CIFAR-10 training set is on disk" in capsys.readouterr().err
    assert not (tmp_path / "c.pt").exists()
