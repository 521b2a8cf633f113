"""With the grid reduced to one baseline colour, the saliency map is captum's ``FeatureAblation``
with a per-pixel feature mask and that baseline (skipped when captum is not installed)."""

from __future__ import annotations

import pytest
import torch

from l0tre.apps.saliency import saliency

from .oracle import tiny_net

captum_attr = pytest.importorskip("captum.attr")


def _margin(net: torch.nn.Module, ref: torch.Tensor):  # noqa: ANN202 - a captum forward function
    def f(x: torch.Tensor) -> torch.Tensor:
        out = net(x)
        r = ref.repeat_interleave(out.shape[0] // ref.shape[0]).view(-1, 1)
        return out.gather(1, r).squeeze(1) - out.scatter(1, r, float("-inf")).max(1).values

    return f


@pytest.mark.parametrize(("seed", "channels", "baseline"), [(0, 1, 0.0), (2, 3, 0.0), (5, 3, 1.0)])
def test_one_baseline_equals_feature_ablation(seed: int, channels: int, baseline: float) -> None:
    net = tiny_net(seed, channels)
    x = torch.rand(3, channels, 5, 5, generator=torch.Generator().manual_seed(seed))
    x[:, :, 2, 2] = baseline  # a pixel already at the baseline: 0 in both
    s = saliency(net, x, baseline=baseline, mode="eager", incremental=False)
    assert s.lower is None  # one colour proves nothing
    mask = torch.arange(25).view(1, 1, 5, 5).expand(3, channels, 5, 5)
    with torch.no_grad():
        ref = net(x).argmax(1)
        attr = captum_attr.FeatureAblation(_margin(net, ref)).attribute(
            x, baselines=baseline, feature_mask=mask, perturbations_per_eval=1)
    want = attr[:, 0]  # one value per pixel, repeated over its channels
    assert torch.equal(attr, want.unsqueeze(1).expand_as(attr))
    torch.testing.assert_close(s.sensitivity, want, atol=1e-6, rtol=1e-6)
    assert bool((s.sensitivity[:, 2, 2] == 0).all())
