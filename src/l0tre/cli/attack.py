"""The ``l0tre attack`` subcommand: :func:`add_parser` registers it, :func:`run` executes it.

Outputs in ``--out DIR``:

* ``results.json`` — ``config``, ``global`` (success_rate, mean / median / std L0,
  seconds_per_image, ...) and one row per input (``index`` in the source set, ``label``,
  ``predicted``, ``success``, ``l0``, ``adversarial_label``);
* ``adversarial.npz`` — ``index`` (int64), ``x_adv`` (float32 ``(N, C, H, W)``, the original
  where the attack failed) and ``success`` (bool);
* ``examples.png`` — up to 8 successful inputs: original | adversarial | difference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..apps.attack.result import AttackResult
from ..atomic import atomic_write, atomic_write_text

__all__ = ["add_parser", "run", "parse_indices", "save_outputs"]


def parse_indices(text: str) -> list[int]:
    """``"0,3,10-12"`` → ``[0, 3, 10, 11, 12]``.

    Raises:
        ValueError: malformed item or a reversed range.
    """
    out: list[int] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            if "-" in item:
                a, b = (int(v) for v in item.split("-", 1))
                if b < a:
                    raise ValueError
                out.extend(range(a, b + 1))
            else:
                out.append(int(item))
        except ValueError:
            raise ValueError(f"--indices: expected comma-separated integers or ranges like 0-9, got {item!r}") from None
    if not out:
        raise ValueError("--indices: expected at least one index")
    return out


def add_parser(subparsers: Any) -> None:
    """Register the ``attack`` subcommand on an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "attack",
        help="find adversarial examples with as few changed pixels as possible",
        description="Minimal-L0 adversarial attack (L0-TRE upper-bound path with refinement). "
        "Every example is re-verified on the model; L0 counts positions (h, w).",
    )
    p.add_argument("--model", required=True, help="built-in model name or model file")
    p.add_argument("--data", required=True, help="mnist:test, cifar10:test, an image folder, .npy/.npz")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--epsilon", type=float, default=0.5, help="value grid step, must divide 1 (default 0.5)")
    p.add_argument("--max-pixels", type=int, default=None, help="L0 budget: larger examples count as failures")
    p.add_argument("--time-budget", type=float, default=None, help="seconds; best examples so far are returned")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (default: CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per model call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--effort", choices=("fast", "default", "thorough"), default="default",
                   help="search breadth: fast (~3x quicker, slightly larger L0), default, thorough")
    p.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="search evaluations: bfloat16 with float32 re-checks near the boundary (auto: where "
                        "the CPU has AMX or the GPU bf16 units); examples are always verified in float32")
    p.add_argument("--limit", type=int, default=None, help="attack at most this many inputs")
    p.add_argument("--indices", default=None, help="positions in the data set, e.g. 0,5,10-19")
    p.add_argument("--data-root", default=None, help="shared data directory (else $L0TRE_DATA)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--json", action="store_true", help="print results.json to stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``l0tre attack``; returns the exit status (0 ok, 2 bad arguments or inputs)."""
    from ..apps.attack.core import attack
    from ..data import load_data
    from ..models import load_model

    try:
        indices = parse_indices(args.indices) if args.indices else None
        clf = load_model(args.model, device=args.device, data_root=args.data_root)
        data = load_data(args.data, data_root=args.data_root, limit=args.limit, indices=indices,
                         input_shape=clf.input_shape)  # type: ignore[arg-type]
        res = attack(clf, data.x, labels=data.y, epsilon=args.epsilon, max_pixels=args.max_pixels,
                     time_budget=args.time_budget, seed=args.seed, batch_size=args.batch_size,
                     effort=args.effort, precision=args.precision, show_progress=not args.quiet)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"l0tre attack: error: {exc}", file=sys.stderr)
        return 2
    config = {"model": str(args.model), "data": str(args.data), "command": "attack"}
    payload = save_outputs(Path(args.out), res, data.x, data.indices, config)
    if args.json:
        print(json.dumps(payload, indent=1))
    elif not args.quiet:
        g = payload["global"]
        print(f"attacked {g['attacked']} inputs ({g['misclassified']} misclassified skipped): "
              f"success {g['successes']}/{g['attacked']}, mean L0 {g['mean_l0']}, median {g['median_l0']}, "
              f"{g['seconds_per_image']:.3f} s/image → {args.out}")
    return 0


def save_outputs(out: Path, res: AttackResult, x: torch.Tensor, indices: torch.Tensor,
                 config: dict[str, Any]) -> dict[str, Any]:
    """Write ``results.json``, ``adversarial.npz`` and ``examples.png`` into ``out``.

    Args:
        res: the attack result; x: ``(N, C, H, W)`` originals; indices: ``(N,)`` source positions.

    Returns:
        the ``results.json`` payload.
    """
    out.mkdir(parents=True, exist_ok=True)
    payload = res.to_dict()
    payload["config"] = {**config, **payload["config"]}
    for row, idx in zip(payload["inputs"], indices.tolist(), strict=True):
        row["index"] = int(idx)
    atomic_write_text(out / "results.json", json.dumps(payload, indent=1))
    atomic_write(out / "adversarial.npz", lambda fh: np.savez_compressed(
        fh, index=indices.numpy().astype(np.int64), x_adv=res.x_adv.numpy().astype(np.float32),
        success=res.success.numpy()))
    save_grid(out / "examples.png", x, res)
    return payload


def save_grid(path: Path, x: torch.Tensor, res: AttackResult, limit: int = 8) -> bool:
    """PNG of up to ``limit`` successful inputs: original | adversarial | difference.

    Returns whether a figure was written (``False`` without successes).
    """
    ok = res.success.nonzero().squeeze(1)[:limit].tolist()
    if not ok:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(ok), 3, figsize=(6, 2 * len(ok)), squeeze=False)
    for r, i in enumerate(ok):
        orig, adv = x[i].detach().float().cpu(), res.x_adv[i].detach().float().cpu()
        diff = (adv - orig).abs().amax(0)
        for c, (img, title) in enumerate([(orig, f"#{i} label {int(res.predicted[i])}"),
                                          (adv, f"→ {int(res.adversarial_label[i])}, L0={int(res.l0[i])}"),
                                          (diff, "difference")]):
            ax = axes[r][c]
            if c == 2:
                ax.imshow(img.numpy(), cmap="hot", interpolation="nearest", vmin=0.0, vmax=float(img.max()) or 1.0)
            elif img.shape[0] == 3:
                ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            else:
                ax.imshow(img[0].numpy(), cmap="gray", interpolation="nearest", vmin=0.0, vmax=1.0)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
