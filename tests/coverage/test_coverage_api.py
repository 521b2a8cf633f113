"""Neuron discovery, coverage counts against an independent count (forward hooks on the model's
own ReLU modules), errors, time budget, and the CLI end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from l0tre.apps.coverage import NeuronKind, Neurons, coverage
from l0tre.certify.target import resolve
from l0tre.cli import main
from l0tre.models import paper_mnist_cnn, resnet20


class _Functional(nn.Module):
    """ReLUs called functionally (``F.relu``, ``torch.relu``), and a ReLU on the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(3 * 4 * 4, 5)
        self.out = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x)).flatten(1)
        return F.relu(self.out(torch.relu(self.fc(h))))


def _neurons(model: nn.Module, shape: tuple[int, int, int], kind: str) -> Neurons:
    return Neurons.discover(resolve(model, shape, dtype=torch.float32).graph, kind)


def test_functional_relus_count_and_logits_never() -> None:
    torch.manual_seed(0)
    found = _neurons(_Functional(), (1, 6, 6), "channel")
    assert [layer.shape for layer in found.layers] == [(3, 4, 4), (5,)]  # not the ReLU on the logits
    assert found.total == 3 + 5
    assert _neurons(_Functional(), (1, 6, 6), "element").total == 3 * 16 + 5


def test_resnet20_neuron_counts() -> None:
    relus = 1 + 3 * 3 * 2  # stem, two per basic block (the second one functional after the addition)
    graph = resolve(resnet20(), (3, 32, 32), dtype=torch.float32).graph
    found = Neurons.discover(graph, "channel")
    assert len(found.layers) == relus
    assert found.total == 16 + 6 * 16 + 6 * 32 + 6 * 64
    el = Neurons.discover(graph, "element")
    assert el.total == 7 * 16 * 32 * 32 + 6 * 32 * 16 * 16 + 6 * 64 * 8 * 8


def _hook_values(model: nn.Sequential, x: torch.Tensor, kind: str) -> np.ndarray:
    """Neuron values from forward hooks on the model's ``nn.ReLU`` modules (plain numpy after)."""
    outs: list[np.ndarray] = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: outs.append(o.detach().numpy()))
             for m in model if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    cols = [o.mean(axis=(2, 3)) if kind == "channel" and o.ndim == 4 else o.reshape(o.shape[0], -1) for o in outs]
    return np.concatenate(cols, axis=1)


@pytest.mark.parametrize("kind", ["channel", "element"])
def test_seed_coverage_agrees_with_hooks(kind: str) -> None:
    torch.manual_seed(1)
    model = paper_mnist_cnn()
    x = torch.rand(6, 1, 28, 28)
    res = coverage(model, x, neurons=kind, t_max=0, prove=False)
    expect = (_hook_values(model, x, kind) > 0.01).any(axis=0)
    res01 = coverage(model, x, neurons=kind, t_max=0, threshold=0.01, prove=False)
    assert res.total == (592 if kind == "channel" else 50960)
    np.testing.assert_array_equal(res01.before.numpy(), expect)
    assert res.coverage_before == pytest.approx((_hook_values(model, x, kind) > 0).any(axis=0).mean())


def test_paper_mnist_seed_coverage_matches_the_issue(shared_data: object) -> None:
    """The issue's independent counts: 100 seeds cover 99.3 % (channel) and 93.7 % (element)."""
    import l0tre

    clf = l0tre.load_model("paper-mnist")
    x = l0tre.load_data("mnist:test", data_root=str(shared_data), limit=100).x
    for kind, expect in (("channel", 0.993), ("element", 0.937)):
        res = coverage(clf, x, neurons=kind, t_max=0)
        direct = (_hook_values(clf.model, x, kind) > 0).any(axis=0).mean()
        assert res.coverage_before == pytest.approx(direct, abs=1e-12)
        assert round(res.coverage_before, 3) == expect


def test_errors_name_the_argument() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(9, 3))
    x = torch.rand(2, 1, 3, 3)
    with pytest.raises(ValueError, match="hidden ReLU"):
        coverage(net, x)
    relu_net = nn.Sequential(nn.Flatten(), nn.Linear(9, 4), nn.ReLU(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match="neurons: expected one of 'channel', 'element'"):
        coverage(relu_net, x, neurons="layer")
    with pytest.raises(ValueError, match="threshold: expected a finite number >= 0"):
        coverage(relu_net, x, threshold=-0.5)
    with pytest.raises(ValueError, match="t_max"):
        coverage(relu_net, x, t_max=-1)
    with pytest.raises(ValueError, match="layers: expected names among"):
        coverage(relu_net, x, layers=["nope"])
    assert NeuronKind.parse("ELEMENT") is NeuronKind.ELEMENT


def test_time_budget_returns_checked_tests() -> None:
    torch.manual_seed(2)
    model = paper_mnist_cnn()
    x = torch.rand(2, 1, 28, 28) * 0.2
    res = coverage(model, x, neurons="element", t_max=3, time_budget=1.0, batch_size=64, prove=False)
    assert res.stopped in ("time_budget", "complete")
    vals = _hook_values(model, res.x, "element") if res.x.shape[0] else np.zeros((0, res.total))
    for u in (res.test_of >= 0).nonzero().squeeze(1).tolist():
        assert vals[int(res.test_of[u]), u] > 0
    assert res.seconds < 30


def test_cli_end_to_end(tmp_path: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("L0TRE_DATA", raising=False)  # the embedded MNIST sample
    out = f"{tmp_path}/cov"
    code = main(["coverage", "--model", "paper-mnist", "--data", "mnist:test", "--limit", "2", "--t-max", "2",
                 "--max-evaluations", "60", "--out", out, "--quiet"])
    assert code == 0
    res = json.load(open(f"{out}/results.json"))
    assert set(res["coverage"]) >= {"neurons", "threshold", "total", "before", "after", "unreachable", "per_layer"}
    assert res["coverage"]["total"] == 592 and res["config"]["command"] == "coverage"
    assert 0 <= res["coverage"]["before"] <= res["coverage"]["after"] <= 1
    npz = np.load(f"{out}/tests.npz")
    k = npz["seed"].shape[0]
    assert npz["x"].shape == (k, 1, 28, 28) and npz["x"].dtype == np.float32
    assert npz["l0"].shape == npz["label"].shape == (k,)
    for name in ("coverage_l0.png", "distances.png", "tests.png", "per_layer.png", "index.html"):
        assert (tmp_path / "cov" / name).stat().st_size > 0  # type: ignore[operator]
    code = main(["coverage", "--model", "paper-mnist", "--data", "mnist:test", "--limit", "3", "--out", out])
    assert code == 2 and "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--neurons", "layer"], ["--threshold", "-1"]])
def test_cli_bad_input_exit_2(tmp_path: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                              bad: list[str]) -> None:
    monkeypatch.delenv("L0TRE_DATA", raising=False)
    code = main(["coverage", "--model", "paper-mnist", "--data", "mnist:test", "--limit", "2", "--measure-only",
                 "--out", f"{tmp_path}/o", *bad])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "error" in err[0] and bad[0].lstrip("-") in err[0]


def test_measure_only_cli(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("L0TRE_DATA", raising=False)
    out = f"{tmp_path}/m"
    assert main(["coverage", "--model", "paper-mnist", "--data", "mnist:test", "--limit", "4", "--measure-only",
                 "--neurons", "element", "--out", out, "--quiet", "--no-figures"]) == 0
    res = json.load(open(f"{out}/results.json"))
    assert res["stopped"] == "measure_only" and res["tests"]["count"] == 0
    assert res["coverage"]["before"] == res["coverage"]["after"]
    assert math.isclose(sum(r["neurons"] for r in res["coverage"]["per_layer"]), 50960)


def test_ctrl_c_returns_what_was_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt in the middle of a level: the level's tests found so far are re-checked
    and returned, and the result says it was interrupted."""
    from l0tre.apps.coverage import search as search_mod

    torch.manual_seed(2)
    model = paper_mnist_cnn()
    x = torch.rand(2, 1, 28, 28) * 0.2
    real = search_mod.Search._update
    calls = {"n": 0}

    def interrupt_after_two(self: object, best: object, cand: object, value: torch.Tensor) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real(self, best, cand, value)  # type: ignore[arg-type]

    monkeypatch.setattr(search_mod.Search, "_update", interrupt_after_two)
    res = coverage(model, x, neurons="element", t_max=2, batch_size=32, max_evaluations=10**6, prove=False)
    assert res.stopped == "interrupted" and calls["n"] == 3
    assert res.levels[-1].mode.endswith("(stopped)") and 0 < res.levels[-1].evaluations <= 64
    vals = _hook_values(model, res.x, "element") if res.x.shape[0] else np.zeros((0, res.total))
    assert res.x.shape[0] > 0
    for u in (res.test_of >= 0).nonzero().squeeze(1).tolist():
        assert vals[int(res.test_of[u]), u] > 0
