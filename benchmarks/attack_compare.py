#!/usr/bin/env python
"""Compare ``l0tre.attack`` with peer L0 attacks on the same model, inputs and device.

Run it in the benchmark's own virtual environment (peers are the ``[compare]`` extra and
never test dependencies)::

    python3 -m venv .venv-compare
    .venv-compare/bin/pip install torch==2.14.1 torchvision==0.29.1   # torchvision that imports
    .venv-compare/bin/pip install -e '.[compare,plots]'
    .venv-compare/bin/pip install --no-deps adv-lib==0.2.8   # σ-zero; its dependency visdom does not build
    L0TRE_DATA=/work/shared/data .venv-compare/bin/python benchmarks/attack_compare.py \\
        --workload mnist --limit 100

Protocol (identical for every method):

* the same model (``paper-mnist`` on the first ``--limit`` MNIST test images,
  ``cifar10-resnet20`` on the bundled CIFAR-10 test images, or the TRADES-trained
  ``mnist-smallcnn-trades`` on the first ``--limit`` MNIST test images), in eval mode, float32, on
  ``--device``, with ``torch.set_num_threads(--threads)``; only inputs the model classifies
  correctly are attacked (untargeted: any label other than the true one);
* every method returns images in pixel space ``[0, 1]``; an image outside ``[0, 1]`` (beyond
  1e-6) counts as a failure;
* success is re-checked on the model here (``argmax != label``), whatever a method reports;
* L0 = number of positions ``(h, w)`` where any channel changed by more than 1e-6 (a CIFAR
  pixel counts once); statistics are over the successful images;
* time = wall-clock seconds of the method's calls (model loading excluded) / images attempted;
  a method whose cumulative time exceeds ``--budget`` seconds stops after the chunk in
  progress and its remaining images are reported as not attempted (status column);
* CPU time = ``time.process_time()`` seconds (all threads of this process, user + system)
  around the same calls / images attempted. It is much less sensitive than wall time to other
  work on a shared machine; with ``--threads 2`` it can be up to twice the wall time of a
  method that keeps both threads busy. The 1-minute load average is recorded before and after
  each method (``loadavg``) as a hint of how busy the machine was.

Peer settings are the libraries' defaults unless the paper that introduced the attack
recommends otherwise for L0 (noted in ``PEERS`` below). σ-zero (``adv-lib``): the package's
``adv_lib.attacks`` ``__init__`` imports torchvision, which fails to import beside torch 2.13 CPU
("operator torchvision::nms does not exist"), so the file ``adv_lib/attacks/sigma_zero.py`` is
loaded by its path with importlib as a module of its own (``adv_lib_sigma_zero``); it only
imports ``adv_lib.utils.losses``, which needs no torchvision. ``adv-lib`` itself is installed
with ``pip install --no-deps adv-lib==0.2.8`` (its dependency visdom does not build here).
Each workload also reports the per-image best over all methods (the smallest L0 any method
found for that image) and each method's mean gap to it. Foolbox's L0 attacks and ART's
Carlini-L0 count channel elements, not pixels; they are scored with the pixel rule above.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import random
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import l0tre  # noqa: E402
from l0tre.apps.attack import attack  # noqa: E402

WORKLOADS: dict[str, dict[str, Any]] = {
    "mnist": {"model": "paper-mnist", "data": "mnist:test", "default_limit": 1000},
    "cifar": {"model": "cifar10-resnet20", "data": "cifar10:test", "default_limit": 100},
    "trades": {"model": "mnist-smallcnn-trades", "data": "mnist:test", "default_limit": 100},
}
# l0tre settings per workload (documented in docs/benchmarks_attack.md): the three effort
# presets; MNIST uses the default grid (epsilon 0.5), CIFAR-10 the corner colours (epsilon 1).
L0TRE_EPSILON: dict[str, float] = {"mnist": 0.5, "cifar": 1.0, "trades": 0.5}
L0TRE_VARIANTS: dict[str, str] = {"l0tre-fast": "fast", "l0tre": "default", "l0tre-thorough": "thorough"}
PEERS: dict[str, str] = {
    "l0tre-fast": "l0tre.attack(effort='fast')",
    "l0tre": "l0tre.attack(effort='default')",
    "l0tre-thorough": "l0tre.attack(effort='thorough')",
    "fb-L0FMN": "foolbox 3 L0FMNAttack, library defaults (steps=100, max_stepsize=1, gamma=0.05, "
                "binary_search_steps=10)",
    "sz-SigmaZero": "adv-lib 0.2.8 sigma_zero (file loaded by path, see the module docstring), library "
                    "defaults: num_steps=1000, eta_0=1.0, sigma=0.001, tau_0=0.3, tau_factor=0.01, "
                    "grad_norm=inf",
    "fb-L0BB": "foolbox 3 L0BrendelBethgeAttack started from L0FMNAttack (defaults) examples; BB defaults "
               "(steps=1000, lr=1e-3, lr_decay=0.5, lr_num_decay=20, momentum=0.8, overshoot=1.1, "
               "binary_search_steps=10); needs numba",
    "fb-Pointwise": "foolbox 3 PointwiseAttack, defaults (init: SaltAndPepperNoiseAttack, "
                    "l2_binary_search=True)",
    "ta-JSMA": "torchattacks JSMA, defaults (theta=1.0, gamma=0.1; untargeted mode = target (y+1) mod 10)",
    "ta-SparseFool": "torchattacks SparseFool, defaults (steps=10, lam=3, overshoot=0.02)",
    "ta-Pixle": "torchattacks Pixle, defaults (x/y_dimensions=(2,10), restarts=20, max_iterations=10)",
    "art-JSMA": "ART SaliencyMapMethod, theta=1.0 (JSMA paper's L0 setting), gamma=1.0, random "
                "incorrect target (seeded)",
    "art-CWL0": "ART CarliniL0Method, defaults (lr=0.01, binary_search_steps=10, max_iter=10, "
                "initial_const=0.01, warm_start=True)",
}
ALL_METHODS = list(PEERS)


class PixelSpaceNet(nn.Module):
    """The classifier as a plain module on ``[0, 1]`` inputs (normalisation inside)."""

    def __init__(self, clf: l0tre.Classifier) -> None:
        super().__init__()
        module = clf.modules()
        if module is None:
            raise TypeError("the benchmark needs a torch.nn.Module model")
        self.net = module
        pre = clf.preprocessing
        mean = torch.tensor(pre.mean if pre else (0.0,)).view(1, -1, 1, 1)
        std = torch.tensor(pre.std if pre else (1.0,)).view(1, -1, 1, 1)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def plain(self) -> nn.Module:
        """The wrapped network itself when the normalisation is the identity (the MNIST models:
        the same function, and ``l0tre.attack`` then sees the layers, e.g. for its incremental
        chain, as a user who passes the loaded model does), else this wrapper."""
        identity = bool((self.mean == 0).all() and (self.std == 1).all())
        return self.net if identity else self


@dataclass
class Chunked:
    """A method that attacks a chunk of images: ``(x, y) -> x_adv`` (all torch, CPU/device)."""

    run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    chunk: int
    version: str


def l0tre_settings(name: str, workload: str) -> dict[str, Any]:
    return {"effort": L0TRE_VARIANTS[name], "epsilon": L0TRE_EPSILON[workload]}


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_method(name: str, net: nn.Module, shape: tuple[int, int, int], device: str,
                 workload: str, seed: int, batch: int) -> Chunked:
    """Import and configure a method (raises ImportError when it is not installed)."""
    if name in L0TRE_VARIANTS:
        plain = net.plain() if isinstance(net, PixelSpaceNet) else net
        clf = l0tre.Classifier(plain, device=device, input_shape=shape, name="benchmark")
        settings = l0tre_settings(name, workload)

        def run_l0tre(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            res = attack(clf, x, labels=y, seed=seed, **settings)
            return res.x_adv

        return Chunked(run_l0tre, batch, l0tre.__version__)
    if name == "sz-SigmaZero":
        sigma_zero, version = _load_sigma_zero()

        def run_sz(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return sigma_zero(net, x.to(device), y.to(device)).detach()

        return Chunked(run_sz, batch, version)
    if name.startswith("fb-"):
        import foolbox as fb

        fmodel = fb.PyTorchModel(net, bounds=(0, 1), device=device)
        if name == "fb-L0BB":
            import numba  # noqa: F401 - foolbox's L0 Brendel-Bethge solver needs it

            # small chunks: several CPU seconds per image, and the budget is checked between chunks
            return Chunked(_bb_from_fmn(fb, fmodel, net, device), min(batch, 5), fb.__version__)
        atk = fb.attacks.L0FMNAttack() if name == "fb-L0FMN" else fb.attacks.PointwiseAttack()

        def run_fb(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            raw, _, _ = atk(fmodel, x.to(device), y.to(device), epsilons=None)
            return raw.detach()

        return Chunked(run_fb, batch, fb.__version__)
    if name.startswith("ta-"):
        import torchattacks as ta

        if name == "ta-JSMA":
            ta_atk = ta.JSMA(net)
        elif name == "ta-SparseFool":
            ta_atk = ta.SparseFool(net)
        else:
            ta_atk = ta.Pixle(net)

        def run_ta(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return ta_atk(x.to(device), y.to(device)).detach()

        chunk = batch if name == "ta-Pixle" else 5
        return Chunked(run_ta, chunk, ta.__version__)
    if name.startswith("art-"):
        import art
        from art.attacks.evasion import CarliniL0Method, SaliencyMapMethod
        from art.estimators.classification import PyTorchClassifier

        est = PyTorchClassifier(model=net, loss=nn.CrossEntropyLoss(), input_shape=shape, nb_classes=10,
                                clip_values=(0.0, 1.0), device_type="gpu" if device.startswith("cuda") else "cpu")
        if name == "art-JSMA":
            art_atk: Any = SaliencyMapMethod(est, theta=1.0, gamma=1.0, batch_size=batch, verbose=False)
        else:
            art_atk = CarliniL0Method(est, batch_size=1, verbose=False)

        def run_art(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if name == "art-JSMA":
                out = art_atk.generate(x=x.cpu().numpy())  # y=None: a random incorrect target
            else:
                out = art_atk.generate(x=x.cpu().numpy(), y=np.eye(10, dtype=np.float32)[y.cpu().numpy()])
            return torch.from_numpy(np.asarray(out, dtype=np.float32))

        chunk = batch if name == "art-JSMA" else 2
        return Chunked(run_art, chunk, art.__version__)
    raise ValueError(f"unknown method {name!r}; expected one of {ALL_METHODS}")


def _load_sigma_zero() -> tuple[Callable[..., torch.Tensor], str]:
    """``adv_lib/attacks/sigma_zero.py`` loaded by its path as the module ``adv_lib_sigma_zero``
    (importing ``adv_lib.attacks`` would import torchvision, which is broken beside torch 2.13 CPU)."""
    import importlib.util

    import adv_lib

    path = Path(adv_lib.__path__[0]) / "attacks" / "sigma_zero.py"
    spec = importlib.util.spec_from_file_location("adv_lib_sigma_zero", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}", name="adv_lib")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.sigma_zero, f"adv-lib {adv_lib.__version__}"


def _bb_from_fmn(fb: Any, fmodel: Any, net: nn.Module, device: str) -> Callable[..., torch.Tensor]:
    """foolbox's L0 Brendel-Bethge started from L0FMN's examples; BB needs adversarial starting
    points, so the images L0FMN does not fool are returned unchanged (failures)."""
    fmn = fb.attacks.L0FMNAttack()
    bb = fb.attacks.L0BrendelBethgeAttack()

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = x.to(device), y.to(device)
        start, _, _ = fmn(fmodel, x, y, epsilons=None)
        with torch.no_grad():
            ok = net(start).argmax(1) != y
        out = x.clone()
        if bool(ok.any()):
            raw, _, _ = bb(fmodel, x[ok], y[ok], starting_points=start[ok], epsilons=None)
            out[ok] = raw.detach()
        return out

    return run


def per_image_best(methods: dict[str, Any]) -> dict[str, Any]:
    """The smallest L0 any method found per image and each method's mean gap to it.

    Methods stopped by the time budget attack a prefix of the images, so two views are given:
    ``l0`` / ``mean_l0`` / ``gap_to_best`` / ``is_best_on``: per image, over the methods that
    reached it (``None`` where none of them fooled it); ``common``: the same over the
    ``common["attempted"]`` first images that **every** method that ran attacked, with each
    method's ``gap_to_best_common`` / ``is_best_on_common`` there. A gap is the mean of
    ``l0 − best`` over the images the method fooled (0 where it is the best); ``reached_by``
    is, per image, how many methods attacked it.
    """
    ran = [r for r in methods.values() if r.get("attempted")]
    n = max((r["attempted"] for r in ran), default=0)
    n_common = min((r["attempted"] for r in ran), default=0)
    best: list[int | None] = []
    for i in range(n):
        found = [r["l0"][i] for r in ran if i < r["attempted"] and r["success"][i]]
        best.append(min(found) if found else None)
    for r in ran:
        for suffix, m in (("", r["attempted"]), ("_common", n_common)):
            gaps = [r["l0"][i] - best[i] for i in range(m) if r["success"][i] and best[i] is not None]
            r["gap_to_best" + suffix] = float(np.mean(gaps)) if gaps else None
            r["is_best_on" + suffix] = sum(1 for g in gaps if g == 0)
    vals = [b for b in best if b is not None]
    common = [b for b in best[:n_common] if b is not None]
    return {"l0": best, "mean_l0": float(np.mean(vals)) if vals else None,
            "median_l0": float(np.median(vals)) if vals else None, "images": len(vals),
            "reached_by": [sum(1 for r in ran if i < r["attempted"]) for i in range(n)],
            "common": {"attempted": n_common, "images": len(common),
                       "mean_l0": float(np.mean(common)) if common else None,
                       "median_l0": float(np.median(common)) if common else None}}


def score(net: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
          device: str) -> tuple[np.ndarray, np.ndarray]:
    """The shared rule: success (re-checked, inside [0, 1]) and L0 in positions."""
    x_adv = x_adv.detach().to("cpu", torch.float32)
    if x_adv.shape != x.shape:
        raise ValueError(f"method returned shape {tuple(x_adv.shape)}, expected {tuple(x.shape)}")
    inside = ((x_adv >= -1e-6) & (x_adv <= 1 + 1e-6)).flatten(1).all(1) & torch.isfinite(x_adv).flatten(1).all(1)
    with torch.no_grad():
        pred = torch.cat([net(x_adv[i : i + 256].to(device)).argmax(1).cpu() for i in range(0, x.shape[0], 256)])
    l0 = ((x_adv - x).abs() > 1e-6).any(dim=1).flatten(1).sum(1)
    success = inside & (pred != y) & (l0 >= 1)
    return success.numpy(), l0.numpy()


def run_method(name: str, net: nn.Module, x: torch.Tensor, y: torch.Tensor, shape: tuple[int, int, int],
               args: argparse.Namespace, workload: str) -> dict[str, Any]:
    out: dict[str, Any] = {"settings": PEERS[name], "attempted": 0}
    try:
        seed_all(args.seed)
        # a copy per method: l0tre.attack may switch the module it is given to channels_last
        # (Classifier.set_mode converts in place), which would change what the next methods run
        method = build_method(name, copy.deepcopy(net), shape, args.device, workload, args.seed, args.batch)
    except ImportError as exc:
        out["status"] = f"not installed ({exc.name or exc})"
        return out
    except Exception as exc:  # noqa: BLE001 - report any set-up failure in the table
        out["status"] = f"set-up failed: {type(exc).__name__}: {exc}"[:200]
        return out
    out["version"] = method.version
    if name in L0TRE_VARIANTS:
        out["settings"] = f"l0tre.attack({', '.join(f'{k}={v!r}' for k, v in l0tre_settings(name, workload).items())})"
    success = np.zeros(0, dtype=bool)
    l0 = np.zeros(0, dtype=np.int64)
    elapsed = 0.0
    cpu = 0.0
    load_before = _loadavg()
    budget = float(args.method_budget.get(name, args.budget))
    out["budget_s"] = budget
    status = "ok"
    n = x.shape[0]
    for c0 in range(0, n, method.chunk):
        if elapsed >= budget:
            status = f"time budget {budget:.0f}s: {c0}/{n} images attempted"
            break
        xb, yb = x[c0 : c0 + method.chunk], y[c0 : c0 + method.chunk]
        seed_all(args.seed + c0)
        t0 = time.perf_counter()
        c0_cpu = time.process_time()
        try:
            adv = method.run(xb.clone(), yb.clone())
        except Exception as exc:  # noqa: BLE001
            elapsed += time.perf_counter() - t0
            cpu += time.process_time() - c0_cpu
            status = f"error after {c0}/{n} images: {type(exc).__name__}: {exc}"[:200]
            if not args.quiet:
                traceback.print_exc()
            break
        elapsed += time.perf_counter() - t0
        cpu += time.process_time() - c0_cpu
        s, d = score(net, xb, yb, adv, args.device)
        success = np.concatenate([success, s])
        l0 = np.concatenate([l0, d])
        if not args.quiet:
            print(f"  {name}: {success.size}/{n} images, {elapsed:.1f}s (CPU {cpu:.1f}s), "
                  f"success {success.mean():.3f}, "
                  f"mean L0 {l0[success].mean() if success.any() else float('nan'):.2f}", flush=True)
    m = int(success.size)
    if status == "ok" and elapsed > budget:
        status = f"ok (all attempted; the last chunk ended past the {budget:.0f}s budget, at {elapsed:.0f}s)"
    ok_l0 = l0[success].astype(np.float64)
    out.update({
        "status": status,
        "attempted": m,
        "success_rate": float(success.mean()) if m else None,
        "mean_l0": float(ok_l0.mean()) if ok_l0.size else None,
        "median_l0": float(np.median(ok_l0)) if ok_l0.size else None,
        "std_l0": float(ok_l0.std()) if ok_l0.size else None,
        "seconds": elapsed,
        "seconds_per_image": elapsed / m if m else None,
        "cpu_seconds": cpu,
        "cpu_seconds_per_image": cpu / m if m else None,
        "loadavg": {"before": load_before, "after": _loadavg()},
        "success": success.tolist(),
        "l0": l0.tolist(),
    })
    return out


def _source_state() -> dict[str, Any]:
    """The git commit of the tree l0tre is imported from and its uncommitted files under src/
    (read-only git queries; empty where git is unavailable)."""
    import subprocess

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = git("status", "--porcelain", "--", "src")
    return {"commit": git("rev-parse", "HEAD"), "uncommitted": [ln[3:] for ln in dirty.splitlines()]}


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def run_workload(workload: str, args: argparse.Namespace, previous: dict[str, Any] | None = None,
                 save: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run ``args.methods`` on a workload; methods of ``previous`` (the same workload, images and
    limit, from an earlier run) that were not re-run are kept. ``save`` is called with the
    workload's results so far after each method, so that a long run loses nothing it computed."""
    spec = WORKLOADS[workload]
    limit = args.limit if args.limit is not None else spec["default_limit"]
    clf = l0tre.load_model(spec["model"], device=args.device, data_root=args.data_root)
    data = l0tre.load_data(spec["data"], data_root=args.data_root, limit=limit)
    if data.y is None:
        raise ValueError(f"{spec['data']}: labels are needed")
    pred = clf.predict(data.x)
    keep = pred == data.y
    x, y = data.x[keep].contiguous(), data.y[keep].contiguous()
    net = PixelSpaceNet(clf).to(args.device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    shape = tuple(int(v) for v in x.shape[1:])
    print(f"[{workload}] {spec['model']} on {spec['data']} first {limit}: {int(keep.sum())} correctly classified",
          flush=True)
    methods: dict[str, Any] = {}
    kept: dict[str, Any] = {}
    if previous and previous.get("indices") == data.indices[keep].tolist() and previous.get("limit") == limit:
        kept = {k: v for k, v in previous.get("methods", {}).items() if k not in args.methods}
    for name in args.methods:
        print(f"[{workload}] {name} ...", flush=True)
        methods[name] = run_method(name, net, x, y, shape, args, workload)  # type: ignore[arg-type]
        methods[name]["command"] = args.command_line
        methods[name]["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        r = methods[name]
        print(f"[{workload}] {name}: {r['status']}; success {r.get('success_rate')}, mean L0 {r.get('mean_l0')}, "
              f"s/img {r.get('seconds_per_image')}, CPU s/img {r.get('cpu_seconds_per_image')}", flush=True)
        if save is not None:
            save(_assemble(spec, limit, data, keep, {**kept, **methods}, args))
    return _assemble(spec, limit, data, keep, {**kept, **methods}, args)


def _assemble(spec: dict[str, Any], limit: int, data: Any, keep: torch.Tensor, ran: dict[str, Any],
              args: argparse.Namespace) -> dict[str, Any]:
    """A workload's results: the methods in ``ALL_METHODS`` order, head-to-head figures against
    ``l0tre`` and the per-image best."""
    methods = {k: ran[k] for k in ALL_METHODS if k in ran}
    # head-to-head: l0tre's mean L0 on the images each peer attacked successfully
    if "l0tre" in methods and methods["l0tre"].get("attempted"):
        ours = methods["l0tre"]
        for name, r in methods.items():
            if name in L0TRE_VARIANTS or not r.get("attempted"):
                continue
            m = min(r["attempted"], ours["attempted"])
            both = [i for i in range(m) if r["success"][i] and ours["success"][i]]
            r["common_images"] = len(both)
            r["common_mean_l0"] = float(np.mean([r["l0"][i] for i in both])) if both else None
            r["common_l0tre_mean_l0"] = float(np.mean([ours["l0"][i] for i in both])) if both else None
    best = per_image_best(methods)
    return {
        "best": best,
        "model": spec["model"], "data": spec["data"], "limit": limit, "n_loaded": len(data),
        "n_correct": int(keep.sum()), "indices": data.indices[keep].tolist(), "methods": methods,
        "run": {"command": args.command_line, "budget_s": args.budget, "method_budget_s": args.method_budget,
                "batch": args.batch,
                "threads": args.threads, "device": args.device,
                "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")},
    }


# -- reporting ----------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown(results: dict[str, Any]) -> str:
    lines: list[str] = []
    meta = results["meta"]
    lines.append(f"Generated by `benchmarks/attack_compare.py` on {meta['date']} ({meta['device_name']}, "
                 f"{meta['threads']} torch threads, torch {meta['torch']}).")
    lines.append("")
    for workload, w in results["workloads"].items():
        lines.append(f"### {workload}: `{w['model']}`, `{w['data']}` first {w['limit']} "
                     f"({w['n_correct']} correctly classified, attacked)")
        lines.append("")
        commands = sorted({r["command"] for r in w["methods"].values() if r.get("command")})
        if commands:
            lines.append("Command" + ("s" if len(commands) > 1 else "") + ": "
                         + ", ".join(f"`{c}`" for c in commands) + ".")
            run = w.get("run")
            if run:
                lines.append(f"Last run {run['date']}: {run['threads']} torch thread(s), device {run['device']}, "
                             f"budget {run['budget_s']:.0f} s per method (checked between chunks"
                             + "".join(f"; {k} {v:.0f} s" for k, v in (run.get("method_budget_s") or {}).items())
                             + "), "
                             f"{run['batch']} images per call for batched methods.")
            lines.append("")
        lines.append("| method | success (images attempted) | mean L0 | median L0 | std L0 | s / image (wall) | "
                     "CPU s / image | "
                     "head-to-head mean L0 (peer vs l0tre, images both fooled; n, peer lower on) "
                     "| status |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for name, r in w["methods"].items():
            sr = r.get("success_rate")
            h2h = "–"
            if r.get("common_images"):
                h2h = f"{_fmt(r['common_mean_l0'])} vs {_fmt(r['common_l0tre_mean_l0'])} (n={r['common_images']}"
                ours = w["methods"].get("l0tre")
                if ours and ours.get("l0"):
                    m = min(len(r["l0"]), len(ours["l0"]))
                    lower = sum(1 for i in range(m) if r["success"][i] and ours["success"][i]
                                and r["l0"][i] < ours["l0"][i])
                    h2h += f"; peer lower on {lower}"
                h2h += ")"
            att = r.get("attempted", 0)
            att_s = f"{att} img" if att == w["n_correct"] else f"**{att} of {w['n_correct']} img**"
            lines.append(
                f"| {name} | {'–' if sr is None else f'{100 * sr:.1f} %'} ({att_s}) | "
                f"{_fmt(r.get('mean_l0'))} | {_fmt(r.get('median_l0'), 1)} | {_fmt(r.get('std_l0'))} | "
                f"{_fmt(r.get('seconds_per_image'), 3)} | {_fmt(r.get('cpu_seconds_per_image'), 3)} | "
                f"{h2h} | {r['status']} |"
            )
        lines.extend(_best_lines(w))
        lines.append("")
        lines.append(_verdict(w))
        lines.append("")
    return "\n".join(lines)


def _best_lines(w: dict[str, Any]) -> list[str]:
    """The per-image best paragraph(s) of a workload: over the methods that reached each image, and
    (when some method stopped early) over the first images that every method attacked."""
    best = w.get("best")
    if not best or not best.get("images"):
        return []
    ms = w["methods"]
    gaps = ", ".join(f"{k} {_fmt(r.get('gap_to_best'))} (best on {r.get('is_best_on', 0)})"
                     for k, r in ms.items() if r.get("gap_to_best") is not None)
    lines = ["", f"Per-image best over all methods (the smallest L0 any method that reached the image found, "
                 f"{best['images']} images): mean **{_fmt(best['mean_l0'])}**, median {_fmt(best['median_l0'], 1)}. "
                 f"Mean gap to it over the images each method fooled (images where it is the best): {gaps}."]
    common = best.get("common")
    if common and common["attempted"] < w["n_correct"]:
        gaps_c = ", ".join(f"{k} {_fmt(r.get('gap_to_best_common'))} (best on {r.get('is_best_on_common', 0)})"
                           for k, r in ms.items() if r.get("gap_to_best_common") is not None)
        lines += ["", f"On the first **{common['attempted']}** images, the ones every method attacked within its "
                      f"budget ({common['images']} fooled by some method): per-image best mean "
                      f"**{_fmt(common['mean_l0'])}**, median {_fmt(common['median_l0'], 1)}; gaps: {gaps_c}."]
    return lines


def _verdict(w: dict[str, Any]) -> str:
    ms = {k: v for k, v in w["methods"].items() if v.get("attempted")}
    lines = []
    for variant in L0TRE_VARIANTS:
        if variant not in ms:
            continue
        ours = ms[variant]
        notes = []
        for name, r in ms.items():
            if name in L0TRE_VARIANTS:
                continue
            if r.get("mean_l0") is not None and ours.get("mean_l0") is not None and r["mean_l0"] < ours["mean_l0"]:
                notes.append(f"{name} has a lower mean L0 ({r['mean_l0']:.2f} vs {ours['mean_l0']:.2f})")
            if (r.get("success_rate") or 0) > (ours.get("success_rate") or 0):
                notes.append(f"{name} has a higher success rate")
            faster = []
            for key, label in (("seconds_per_image", "wall"), ("cpu_seconds_per_image", "CPU")):
                a, b = r.get(key), ours.get(key)
                if a is not None and b is not None and a < b:
                    faster.append(f"{label} {a:.3f} vs {b:.3f} s/image")
            if faster:
                notes.append(f"{name} is faster ({'; '.join(faster)})")
        lines.append(f"- peers beating **{variant}**: " + ("; ".join(notes) if notes else "none") + ".")
    if not lines:
        return "_l0tre was not run._"
    return "\n".join(lines)


def figures(results: dict[str, Any], img_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    ws = list(results["workloads"].items())
    paths = []
    for kind in ("l0", "time"):
        fig, axes = plt.subplots(1, len(ws), figsize=(6 * len(ws), 4.6), squeeze=False)
        for ax, (workload, w) in zip(axes[0], ws, strict=True):
            names = [k for k, v in w["methods"].items() if v.get("attempted")]
            colors = ["tab:red" if k in L0TRE_VARIANTS else "tab:blue" for k in names]
            # a method stopped by the budget is labelled with the images it attempted
            labels = [k if w["methods"][k]["attempted"] == w["n_correct"]
                      else f"{k}\n({w['methods'][k]['attempted']}/{w['n_correct']})" for k in names]
            pos = np.arange(len(names))
            if kind == "l0":
                vals = np.array([w["methods"][k]["mean_l0"] or np.nan for k in names], dtype=float)
                std = np.array([w["methods"][k]["std_l0"] or 0.0 for k in names], dtype=float)
                # log axis: the lower whisker stops at 1 pixel (L0 >= 1)
                low = np.minimum(std, np.maximum(vals - 1.0, 0.0))
                ax.bar(pos, vals, yerr=np.vstack([low, std]), capsize=4, color=colors)
                for xi, v in zip(pos, vals, strict=True):
                    if np.isfinite(v):
                        ax.annotate(f"{v:.1f}", (xi, v), textcoords="offset points", xytext=(0, 2),
                                    ha="center", fontsize=7)
                ax.set_yscale("log")
                ax.set_ylabel("adversarial L0 (pixels), mean ± std (log scale)")
            else:
                wall = [w["methods"][k]["seconds_per_image"] or np.nan for k in names]
                cpu = [w["methods"][k].get("cpu_seconds_per_image") or np.nan for k in names]
                ax.bar(pos - 0.2, wall, width=0.4, color=colors, label="wall")
                ax.bar(pos + 0.2, cpu, width=0.4, color=colors, alpha=0.45, hatch="//", label="CPU (process)")
                ax.set_yscale("log")
                ax.set_ylabel("seconds per image (log scale)")
                ax.legend(fontsize=8)
            ax.set_xticks(pos, labels, rotation=45, ha="right", fontsize=8)
            ax.set_title(f"{workload}: {w['model']} ({w['n_correct']} images)")
        fig.tight_layout()
        path = img_dir / f"attack_{kind}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_doc(path: Path, table: str) -> None:
    begin, end = "<!-- BEGIN attack_compare -->", "<!-- END attack_compare -->"
    block = f"{begin}\n{table}\n{end}"
    if path.exists():
        text = path.read_text()
        if begin in text and end in text:
            text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
    else:
        text = "# L0 attack comparison\n\n" + block + "\n"
    _write_atomic(path, text)


def _parse_method_budget(ap: argparse.ArgumentParser, text: str) -> dict[str, float]:
    """``'name=seconds,...'`` → ``{name: seconds}`` (names from ``ALL_METHODS``, seconds > 0)."""
    out: dict[str, float] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, value = item.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = float("nan")
        if name not in ALL_METHODS or not seconds > 0:
            ap.error(f"--method-budget: expected NAME=SECONDS with NAME in {ALL_METHODS} and SECONDS > 0, "
                     f"got {item!r}")
        out[name] = seconds
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=["mnist", "cifar", "trades", "all"], default="all")
    ap.add_argument("--limit", type=int, default=None,
                    help="images per workload (default: 1000 MNIST, 100 CIFAR, 100 TRADES)")
    ap.add_argument("--methods", default=",".join(ALL_METHODS),
                    help="comma-separated subset of: " + ", ".join(ALL_METHODS))
    ap.add_argument("--budget", type=float, default=600.0, help="seconds per method and workload (checked per chunk)")
    ap.add_argument("--method-budget", default="",
                    help="per-method budgets overriding --budget, e.g. 'fb-L0BB=900,art-CWL0=150' (seconds)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=100, help="images per call for batched methods")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "attack_compare.json")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks_attack.md")
    ap.add_argument("--img-dir", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--fresh", action="store_true", help="do not merge with the workloads already in --json")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--render", action="store_true",
                    help="run nothing: rewrite --doc and the figures from the results in --json")
    args = ap.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in ALL_METHODS]
    if bad:
        ap.error(f"--methods: unknown {bad}; expected some of {ALL_METHODS}")
    args.method_budget = _parse_method_budget(ap, args.method_budget)
    if args.render:
        results = json.loads(args.json.read_text())
        for w in results["workloads"].values():  # recomputed: older files lack the common-images view
            w["best"] = per_image_best(w["methods"])
        table = markdown(results)
        write_doc(args.doc, table)
        figures(results, args.img_dir)
        print(table)
        return 0
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(False)
    workloads = list(WORKLOADS) if args.workload == "all" else [args.workload]

    results: dict[str, Any] = {"workloads": {}}
    if args.json.exists() and not args.fresh:
        results = json.loads(args.json.read_text())
    device_name = args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(0)
    if args.device == "cpu":
        device_name = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    versions = {}
    for mod in ("foolbox", "torchattacks", "art", "numba", "adv_lib"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception as exc:  # noqa: BLE001
            versions[mod] = f"unavailable ({type(exc).__name__})"
    args.command_line = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    results["meta"] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": args.command_line,
        "device": args.device, "device_name": device_name, "threads": args.threads, "torch": torch.__version__,
        "python": platform.python_version(), "peers": versions, "budget_s": args.budget, "seed": args.seed,
        "pixel_rule": "L0 = positions (h, w) with any channel changed by > 1e-6; success re-checked on the model",
        "l0tre_source": _source_state(),
    }
    for workload in workloads:

        def save(res: dict[str, Any], workload: str = workload) -> None:
            results["workloads"][workload] = res
            _write_atomic(args.json, json.dumps(results, indent=1))

        save(run_workload(workload, args, results["workloads"].get(workload), save))
    table = markdown(results)
    write_doc(args.doc, table)
    figures(results, args.img_dir)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
