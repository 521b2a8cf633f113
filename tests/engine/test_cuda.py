"""The CUDA path gives the CPU path's results (run where a CUDA GPU is present; skipped on CPU-only
machines such as CI — `benchmarks/gpu_check.sh` runs them on a lent GPU machine)."""

from __future__ import annotations

import copy

import pytest
import torch

import l0tre

from .oracle import brute_force_dm
from .test_oracle import random_cnn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_oracle_cases_on_cuda() -> None:
    shape = (3, 2, 2)
    model = random_cnn(shape, 4, 3)
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    truth = torch.tensor([brute_force_dm(model, xi, 2)[0] for xi in x])  # on the CPU
    res = l0tre.evaluate(copy.deepcopy(model).cuda(), x.cuda(), epsilon=0.5, t_max=4, device="cuda")
    assert torch.equal(res.lower.cpu(), truth) and torch.equal(res.upper.cpu(), truth)


def test_cpu_and_cuda_bounds_identical_on_20_mnist_images(shared_data: object) -> None:
    x = l0tre.load_data("mnist:test", data_root=shared_data, limit=20).x  # type: ignore[arg-type]
    out = {}
    for device in ("cpu", "cuda"):
        clf = l0tre.load_model("paper-mnist", device=device)
        out[device] = l0tre.evaluate(clf, x, epsilon=0.5, t_max=1, device=device)
    assert torch.equal(out["cuda"].lower.cpu(), out["cpu"].lower)
    assert torch.equal(out["cuda"].upper.cpu(), out["cpu"].upper)
    # every upper bound comes with an example that flips the CPU model too
    clf = l0tre.load_model("paper-mnist")
    found = out["cuda"].found.cpu()
    pred = clf.predict(x)
    assert bool((clf.predict(out["cuda"].adversarial.cpu()[found]) != pred[found]).all())


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_attack_on_cuda_verifies_on_cpu(shared_data: object, precision: str) -> None:
    data = l0tre.load_data("mnist:test", data_root=shared_data, limit=32)  # type: ignore[arg-type]
    res = l0tre.attack(l0tre.load_model("paper-mnist", device="cuda"), data.x, labels=data.y,
                       effort="fast", precision=precision)
    assert res.config["precision"] == precision
    cpu = l0tre.load_model("paper-mnist")
    ok = res.success
    assert bool(ok[~res.misclassified].all())
    assert bool((cpu.predict(res.x_adv[ok]) != res.predicted[ok]).all())
    assert torch.equal(res.l0, (res.x_adv != data.x).any(dim=1).flatten(1).sum(1))


def test_certified_bounds_on_cuda_match_cpu() -> None:
    from l0tre.certify import bound_model

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 4 * 4, 3)).double().eval()
    x0 = torch.rand(1, 6, 6, dtype=torch.float64)
    lo, hi = x0.clone().unsqueeze(0), x0.clone().unsqueeze(0)
    lo[..., 2, 3], hi[..., 2, 3] = 0.0, 1.0
    cpu = bound_model(net, lo, hi)
    gpu = bound_model(net.cuda(), lo.cuda(), hi.cuda())
    for a, b in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-9, atol=1e-9)


def test_graph_chain_and_its_bfloat16_screen_on_cuda() -> None:
    """The graph chain on CUDA gives the CPU rows (float64), sizes its calls for a GPU, and
    evaluate's bfloat16 screen through the copy's chain keeps the float32 grid bound."""
    from l0tre.execution.graph_chain import CHUNK_BYTES, GraphPrefix

    from .test_graph_chain import _prepared, _resnet

    net = _prepared(_resnet(False))
    shape = (3, 32, 32)
    x0 = torch.rand(2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    a = torch.tensor([0, 1, 1])
    pix = torch.tensor([[0], [100], [1023]])
    vals = torch.rand(3, 1, 3, dtype=torch.float64)
    rows = {}
    for dev in ("cpu", "cuda"):
        clf = l0tre.Classifier(copy.deepcopy(net), device=dev, input_shape=shape)
        chain = GraphPrefix.trace(clf, shape)
        assert chain is not None
        caches = chain.base(x0.to(dev))
        rows[dev] = chain.outputs(caches, a.to(dev), pix.to(dev), vals.to(dev)).cpu()
        if dev == "cuda":
            per_row = caches.rest[0].numel() * caches.rest.element_size()
            assert chain.max_chunk(caches) > CHUNK_BYTES // per_row
    torch.testing.assert_close(rows["cuda"], rows["cpu"], rtol=1e-9, atol=1e-9)
    f32 = copy.deepcopy(net).float().cuda()
    x = x0.float().cuda()
    ref = l0tre.evaluate(f32, x, t_max=1, precision="float32", incremental=True)
    low = l0tre.evaluate(f32, x, t_max=1, precision="bfloat16", incremental=True)
    assert low.precision == "bfloat16" and torch.equal(low.lower.cpu(), ref.lower.cpu())
