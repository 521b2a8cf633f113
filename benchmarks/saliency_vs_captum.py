"""Saliency timings (issue 18): l0tre's full-grid map against captum's ``FeatureAblation``, and
``top:K`` saliency of large randomly initialised networks.

``captum`` — same model, images and device, in one run: l0tre's map over every grid colour
(ε = 0.5: 26 colours per RGB pixel, 2 per MNIST pixel), l0tre with the grid reduced to one
baseline (0), and captum ``FeatureAblation`` with a per-pixel feature mask and baseline 0 on the
margin ``z_j − max_{k≠j} z_k``; the largest difference of the two one-baseline maps is reported
(it should be float32 rounding)::

    python benchmarks/saliency_vs_captum.py captum --model paper-mnist --images 100
    python benchmarks/saliency_vs_captum.py captum --model cifar10-resnet20 --images 100

``large`` — a ResNet-18- or ResNet-50-shaped network (random weights: timings only, never
robustness numbers) on 224×224 inputs, ``pixels=top:K``::

    python benchmarks/saliency_vs_captum.py large --arch resnet18 --pixels top:1000 --images 2

Prints a table and writes ``--json-out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import l0tre

os.environ.setdefault("L0TRE_TUNING_CACHE", "off")


def _margin(net: nn.Module | l0tre.Classifier, ref: torch.Tensor):  # noqa: ANN202 - captum forward function
    """Margin of ``ref`` for captum; captum stacks ``k`` perturbed copies of the batch: rows ``r``
    belong to input ``r mod N``."""

    def f(x: torch.Tensor) -> torch.Tensor:
        out = net(x)
        r = ref.repeat(out.shape[0] // ref.shape[0]).view(-1, 1).to(out.device)
        return out.gather(1, r).squeeze(1) - out.scatter(1, r, float("-inf")).max(1).values

    return f


def _captum(clf: l0tre.Classifier, x: torch.Tensor, rows: int) -> tuple[torch.Tensor, float]:
    from captum.attr import FeatureAblation

    n, c, h, w = x.shape
    xd = x.to(clf.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = torch.cat([clf(xd[i : i + rows]).argmax(1) for i in range(0, n, rows)])
        mask = torch.arange(h * w, device=xd.device).view(1, 1, h, w).expand(n, c, h, w)
        attr = FeatureAblation(_margin(clf, ref)).attribute(
            xd, baselines=0.0, feature_mask=mask, perturbations_per_eval=max(1, rows // n))
    if xd.device.type == "cuda":
        torch.cuda.synchronize()
    return attr[:, 0].cpu(), time.perf_counter() - t0


def run_captum(args: argparse.Namespace) -> dict[str, Any]:
    clf = l0tre.load_model(args.model, device=args.device)
    x = l0tre.load_data(args.data or ("mnist:test" if "mnist" in args.model else "cifar10:test"),
                        limit=args.images, input_shape=clf.input_shape).x
    t0 = time.perf_counter()
    full = l0tre.saliency(clf, x, precision=args.precision)
    t_full = time.perf_counter() - t0
    t0 = time.perf_counter()
    one = l0tre.saliency(clf, x, baseline=0.0, precision="float32")
    t_one = time.perf_counter() - t0
    cap, t_cap = _captum(clf, x, args.rows)
    diff = float((one.sensitivity - cap).abs().max())
    return {"model": args.model, "images": int(x.shape[0]), "device": str(clf.device),
            "l0tre_full_grid_s": t_full, "l0tre_full_grid_evaluations": full.evaluations,
            "l0tre_one_baseline_s": t_one, "captum_feature_ablation_s": t_cap,
            "max_abs_diff_one_baseline_vs_captum": diff, "flipping_pixels": int(full.flips.sum()),
            "inputs_with_flip": int(full.flips.flatten(1).any(1).sum()),
            "zero_sensitivity_fraction": full.summary()["zero_sensitivity_fraction"]}


class _Block(nn.Module):
    """A ResNet basic (2 convs) or bottleneck (1-3-1 convs, ×4) block."""

    def __init__(self, cin: int, width: int, stride: int, bottleneck: bool) -> None:
        super().__init__()
        cout = width * 4 if bottleneck else width
        if bottleneck:
            layers: list[nn.Module] = [nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                       nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
                                       nn.ReLU(), nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        else:
            layers = [nn.Conv2d(cin, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                      nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)]
        self.body = nn.Sequential(*layers)
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())
        self.out = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def resnet_shaped(arch: str, classes: int = 1000, seed: int = 0, head_gain: float = 50.0) -> nn.Module:
    """A torchvision-shaped ResNet-18 or ResNet-50 with random weights (eval mode).

    ``head_gain`` scales the classifier's weights so that the logits spread like a trained
    network's (ResNet-18: logit std ≈ 1.5 on the bundled photos, top-2 margins 0.02–0.6, against ≈ 0.04 at the default
    initialisation, where the top-2 margins, ≈ 1e-3, lie inside the incremental chain's re-check
    tolerance and most rows would be recomputed by the plain forward pass: a cost trained
    networks do not have). It changes no cost per evaluation; ``head_gain=1`` is the plain init."""
    torch.manual_seed(seed)
    depth, bottleneck = {"resnet18": ((2, 2, 2, 2), False), "resnet50": ((3, 4, 6, 3), True)}[arch]
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                               nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for stage, blocks in enumerate(depth):
        for b in range(blocks):
            block = _Block(cin, 64 * 2**stage, 2 if b == 0 and stage > 0 else 1, bottleneck)
            layers.append(block)
            cin = block.out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    net = nn.Sequential(*layers).eval()
    for m in net.modules():  # non-trivial BatchNorm statistics, so that folding is exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
    with torch.no_grad():
        net[-1].weight.mul_(head_gain)
    return net


def run_large(args: argparse.Namespace) -> dict[str, Any]:
    from l0tre.readers.images import IMAGENET_MEAN, IMAGENET_STD

    net = resnet_shaped(args.arch)
    clf = l0tre.Classifier(net, preprocessing={"mean": IMAGENET_MEAN, "std": IMAGENET_STD}, device=args.device,
                           input_shape=(3, 224, 224))
    folder = args.data or str(Path(os.environ.get("L0TRE_DATA", "../shared/data")) / "imagenet" / "samples")
    x = l0tre.load_data(folder, preprocess="imagenet", limit=args.images).x
    per_image = []
    for i in range(x.shape[0]):
        t0 = time.perf_counter()
        if args.run == "evaluate":  # t = 1 bounds (only the upper bound is claimed with a selection)
            r = l0tre.evaluate(clf, x[i : i + 1], t_max=1, pixels=args.pixels, precision=args.precision,
                               show_progress=not args.quiet)
            per_image.append({"seconds": time.perf_counter() - t0, "evaluations": r.evaluations,
                              "upper": int(r.upper[0]), "precision": r.precision})
            continue
        s = l0tre.saliency(clf, x[i : i + 1], pixels=args.pixels, precision=args.precision,
                           show_progress=not args.quiet)
        per_image.append({"seconds": time.perf_counter() - t0, "evaluations": s.evaluations,
                          "rechecked": s.rechecked, "precision": s.precision})
    secs = sorted(r["seconds"] for r in per_image)
    return {"arch": args.arch, "run": args.run, "pixels": args.pixels, "device": str(clf.device),
            "images": len(per_image),
            "median_seconds_per_image": secs[len(secs) // 2], "per_image": per_image,
            "note": "random weights: timings only"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="suite", required=True)
    c = sub.add_parser("captum")
    c.add_argument("--model", default="paper-mnist")
    c.add_argument("--data", default=None)
    c.add_argument("--images", type=int, default=100)
    c.add_argument("--rows", type=int, default=512, help="captum rows per forward (perturbations_per_eval × N)")
    lg = sub.add_parser("large")
    lg.add_argument("--arch", choices=("resnet18", "resnet50"), default="resnet18")
    lg.add_argument("--pixels", default="top:1000")
    lg.add_argument("--images", type=int, default=2)
    lg.add_argument("--data", default=None)
    lg.add_argument("--quiet", action="store_true")
    lg.add_argument("--run", choices=("saliency", "evaluate"), default="saliency",
                    help="time the saliency map (default) or evaluate --t-max 1 with the same pixels")
    for q in (c, lg):
        q.add_argument("--device", default="cpu")
        q.add_argument("--precision", default="auto")
        q.add_argument("--threads", type=int, default=None)
        q.add_argument("--json-out", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = run_captum(args) if args.suite == "captum" else run_large(args)
    out["torch_threads"] = torch.get_num_threads()
    for k, v in out.items():
        if k != "per_image":
            print(f"{k:40s} {v}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
