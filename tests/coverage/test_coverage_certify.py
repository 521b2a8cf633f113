"""Proofs of the coverage application: tighter unreachability (CROWN over the whole input box,
:mod:`l0tre.apps.coverage.proofs`) and ``certify=True`` (not coverable within L0 ≤ t,
:mod:`l0tre.apps.coverage.certified`), checked by brute force on tiny nets."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from l0tre.apps.coverage.certified import CertifyCoverage, prove_not_coverable
from l0tre.apps.coverage.core import coverage
from l0tre.apps.coverage.neurons import Neurons
from l0tre.apps.coverage.proofs import ProofSettings, tighten_unreachable
from l0tre.certify.graph import build_graph
from l0tre.certify.objective import neuron_graph
from l0tre.certify.target import Target


def _net(seed: int, channels: int = 1) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 3, 2), nn.ReLU(), nn.Conv2d(3, 2, 2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(18, 5), nn.ReLU(), nn.Linear(5, 3))


def _single_pixel_changes(x0: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Every change of one pixel of ``x0`` ``(C, H, W)`` to every row of ``values`` ``(V, C)``."""
    c, h, w = x0.shape
    out = x0.unsqueeze(0).repeat(h * w * len(values), 1, 1, 1).view(h * w, len(values), c, h * w)
    pix = torch.arange(h * w)
    out[pix, :, :, pix] = values.unsqueeze(0).expand(h * w, -1, -1).to(x0.dtype)
    return out.view(-1, c, h, w)


def _fired_at_one(net: nn.Module, kind: str, seeds: torch.Tensor) -> torch.Tensor:
    """``(T,)`` bool: fired by some single-pixel change (grid of 21 values per channel, plus 200
    random colours) of some seed — an independent search (numpy-free plain forward passes)."""
    c = seeds.shape[1]
    grid = torch.linspace(0, 1, 21)
    values = torch.cartesian_prod(*[grid] * c).view(-1, c) if c > 1 else grid.view(-1, 1)
    values = torch.cat([values, torch.rand(200, c, generator=torch.Generator().manual_seed(7))])
    found = Neurons.discover(build_graph(net, tuple(seeds.shape[1:]), dtype=torch.float32), kind)
    fired = torch.zeros(found.total, dtype=torch.bool)
    for x0 in seeds:
        xs = _single_pixel_changes(x0, values)
        fired |= (found.values(xs)[0] > 0).any(dim=0)
    return fired


@pytest.mark.parametrize(("kind", "seed"), [("element", 0), ("element", 1), ("channel", 6), ("channel", 9)])
def test_not_coverable_at_one_is_never_fired_by_a_single_pixel(kind: str, seed: int) -> None:
    net = _net(seed)
    seeds = torch.rand(3, 1, 5, 5, generator=torch.Generator().manual_seed(seed))
    res = coverage(net, seeds, neurons=kind, t_max=0, certify=True, certify_t=1)
    nc = res.not_coverable
    fired = _fired_at_one(net, kind, seeds)
    examined = nc >= 0
    assert bool((examined == (~res.before & ~res.unreachable)).all())
    assert not bool((fired & (nc >= 1)).any()), "a neuron proven not coverable at t=1 fires"
    assert int((nc >= 1).sum()) > 0 and bool((fired & examined).any())  # both outcomes occur
    payload = res.to_dict()["coverage"]["not_coverable"]
    assert payload["t"] == 1 and payload["count"] == int((nc >= 1).sum())
    assert len(payload["neurons"]) == payload["count"] and payload["revoked"] == 0
    json.dumps(payload)


def test_three_channel_pixels_and_level_two() -> None:
    net = _net(4, channels=3)
    seeds = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(4))
    res = coverage(net, seeds, neurons="element", t_max=0, certify=True, certify_t=2)
    fired = _fired_at_one(net, "element", seeds)
    assert not bool((fired & (res.not_coverable >= 1)).any())
    # t = 2: no random change of two pixels fires a neuron proven at 2
    found = Neurons.discover(build_graph(net, (3, 5, 5), dtype=torch.float32), "element")
    gen = torch.Generator().manual_seed(5)
    at2 = res.not_coverable >= 2
    for x0 in seeds:
        xs = x0.repeat(4000, 1, 1, 1)
        pix = torch.rand(4000, 25, generator=gen).argsort(1)[:, :2]
        vals = (torch.rand(4000, 2, 3, generator=gen) < 0.5).float()
        for k in range(2):
            xs[torch.arange(4000), :, pix[:, k] // 5, pix[:, k] % 5] = vals[:, k]
        assert not bool(((found.values(xs)[0] > 0).any(0) & at2).any())


def test_sabotaged_bounds_fall_back_to_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    net = _net(0)
    seeds = torch.rand(3, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    fired = _fired_at_one(net, "element", seeds)

    def sabotaged(self: Target, lo: torch.Tensor, hi: torch.Tensor, labels: torch.Tensor, opts: object) -> torch.Tensor:
        out = torch.full((lo.shape[0], self.num_classes), 1.0, dtype=self.graph.dtype)
        return out.scatter(1, labels.view(-1, 1).cpu(), float("inf"))

    graph = build_graph(net, (1, 5, 5))
    found = Neurons.discover(graph, "element")
    cols = (~(found.values(seeds)[0] > 0).any(0)).nonzero().squeeze(1)
    monkeypatch.setattr(Target, "margin_bounds", sabotaged)
    res = prove_not_coverable(graph, found, cols, seeds, 0.0, (0.0, 1.0), CertifyCoverage(prefilter=False))
    corner_fired = fired[cols]
    assert bool(corner_fired.any())
    # every neuron was "proven"; the spot check must have revoked the ones a corner change fires
    assert not bool((corner_fired & (res.largest_t >= 1)).any())
    assert bool(res.revoked[corner_fired].all()) and bool((res.largest_t[res.revoked] == 0).all())
    # with the prefilter, they are not even tried
    res = prove_not_coverable(graph, found, cols, seeds, 0.0, (0.0, 1.0))
    assert not bool((corner_fired & (res.largest_t >= 1)).any())


def _difference_net() -> nn.Sequential:
    """Channel 0 of the second conv is ``relu(x) − relu(x) − 0.01`` (dead for every input, but
    interval bounds give it an upper bound near 1); channel 1 is ``relu(x) − 0.2`` (live)."""
    conv1, conv2 = nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 1)
    with torch.no_grad():
        conv1.weight[:] = 1.0
        conv1.bias.zero_()
        conv2.weight[:] = torch.tensor([[1.0, -1.0], [1.0, 0.0]]).view(2, 2, 1, 1)
        conv2.bias[:] = torch.tensor([-0.01, -0.2])
    return nn.Sequential(conv1, nn.ReLU(), conv2, nn.ReLU(), nn.Flatten(), nn.Linear(2 * 9, 2))


def test_crown_proves_a_dead_neuron_intervals_miss() -> None:
    net = _difference_net()
    seeds = torch.full((2, 1, 3, 3), 0.1)
    ibp_only = coverage(net, seeds, neurons="channel", t_max=0)  # no search: interval proof only
    assert int(ibp_only.unreachable.sum()) == 0
    res = coverage(net, seeds, neurons="channel", t_max=1, reach=False)
    found = res.layers[1]
    dead, live = found.offset, found.offset + 1
    assert bool(res.unreachable[dead]) and not bool(res.unreachable[live])
    assert bool(res.after[live])  # the live one is fired by a test (x = 1 somewhere)
    assert "open_upper_bounds" not in res.to_dict()["coverage"] or res.describe(dead) not in \
        res.to_dict()["coverage"]["open_upper_bounds"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tight_proofs_are_never_fired_by_a_search(seed: int) -> None:
    net = _net(seed, channels=2)
    graph = build_graph(net, (2, 5, 5))
    for kind in ("element", "channel"):
        found = Neurons.discover(graph, kind)
        cols = torch.arange(found.total)
        proof = tighten_unreachable(graph, found, cols, 0.0, (0.0, 1.0), ProofSettings(intermediate="crown"))
        # random points and sign-gradient ascent from them: never fire a proven neuron
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(3000, 2, 5, 5, generator=gen, dtype=torch.float64)
        x = torch.cat([x, (x > 0.5).double()])
        fired = (found.values(x)[0] > 0).any(0)
        assert not bool((fired & proof.proven).any())
        assert bool(((proof.upper > 0) | proof.proven).all())
        assert bool((proof.upper[fired] > 0).all())


def test_objective_graph_matches_the_model_and_rejects_bad_selections() -> None:
    net = _net(0).double()
    graph = build_graph(net, (1, 5, 5))
    relus = [i for i, n in enumerate(graph.nodes) if type(n.op).__name__ == "ReluOp"]
    pre0, pre1 = graph.nodes[relus[0]].inputs[0], graph.nodes[relus[2]].inputs[0]
    g = neuron_graph(graph, [(pre0, torch.tensor([3, 40])), (pre1, torch.tensor([2]))], 0.25)
    x = torch.rand(6, 1, 5, 5, dtype=torch.float64)
    acts = graph.activations(x, {pre0, pre1})
    want = torch.stack([torch.full((6,), 0.25, dtype=torch.float64), acts[pre0].flatten(1)[:, 3],
                        acts[pre0].flatten(1)[:, 40], acts[pre1][:, 2]], dim=1)
    torch.testing.assert_close(g.forward(x), want)
    with pytest.raises(ValueError, match="selections"):
        neuron_graph(graph, [(pre0, torch.tensor([48]))], 0.0)
    with pytest.raises(ValueError, match="selections"):
        neuron_graph(graph, [], 0.0)
    with pytest.raises(ValueError, match="t_max"):
        CertifyCoverage(t_max=0)
    with pytest.raises(TypeError, match="certify"):
        coverage(net, x.float(), certify=1)  # type: ignore[arg-type]
    res = prove_not_coverable(graph, Neurons.discover(graph, "element"), torch.zeros(0, dtype=torch.int64),
                              x[:2], 0.0, (0.0, 1.0))
    assert res.largest_t.numel() == 0 and res.complete


def test_cli_certify(tmp_path: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from l0tre.cli import main

    monkeypatch.delenv("L0TRE_DATA", raising=False)  # the embedded MNIST sample
    out = f"{tmp_path}/c"
    code = main(["coverage", "--model", "paper-mnist", "--data", "mnist:test", "--limit", "2", "--measure-only",
                 "--layers", "14", "--certify", "--certify-time", "2s", "--out", out, "--quiet"])
    assert code == 0
    res = json.load(open(f"{out}/results.json"))
    nc = res["coverage"]["not_coverable"]
    assert res["config"]["certify"] is True and res["config"]["certify_t"] == 1
    assert nc["t"] == 1 and nc["examined"] == res["coverage"]["total"] - round(res["coverage"]["before"] * 200)
    assert len(nc["largest_t"]) == nc["examined"] and nc["count"] == len(nc["neurons"])
    assert "Not coverable" in open(f"{out}/index.html").read()
    code = main(["coverage", "--model", "paper-mnist", "--data", "mnist:test", "--limit", "2", "--measure-only",
                 "--certify", "--certify-t", "0", "--out", f"{tmp_path}/bad", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "certify_t" in err[0]
