"""What several ``l0tre`` commands share: model and data loading, input selection, notices,
signal helpers and formatting."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import math
import os
import random
import signal
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from ..api import prepare
from ..atomic import OutputError
from ..classifier import Classifier
from ..data import Dataset, EmbeddedDataWarning, load_data
from ..engine import Executor
from ..models import load_model
from ..outdir import CHECKPOINT, run_files
from .parsing import UsageError

__all__ = [
    "check_forward",
    "default_max_evaluations",
    "fmt_seconds",
    "image_shape",
    "load_classifier",
    "load_inputs",
    "notice",
    "one_line",
    "output_errors",
    "raise_interrupt",
    "ray_executor",
    "refuse_to_replace",
    "seed_everything",
    "select_inputs",
    "signals_ignored",
    "without_env",
]

_PREDICT_CHUNK = 512  # inputs per model call when --only-correct sorts them


# -- messages and formatting ------------------------------------------------------------------------
def notice(args: argparse.Namespace, text: str) -> None:
    """A notice ``l0tre: TEXT`` on stderr unless ``--quiet``."""
    if not getattr(args, "quiet", False):
        print(f"l0tre: {text}", file=sys.stderr)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type name when empty)."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__


def fmt_seconds(sec: float) -> str:
    """A duration for people: ms, s, min, h, days or years (``?`` when not finite)."""
    if not math.isfinite(sec):
        return "?"
    if sec < 1:
        return f"{sec * 1000:.0f} ms"
    if sec < 120:
        return f"{sec:.1f} s"
    if sec < 7200:
        return f"{sec / 60:.1f} min"
    if sec < 2 * 86400:
        return f"{sec / 3600:.1f} h"
    if sec < 2 * 365 * 86400:
        return f"{sec / 86400:.1f} days"
    return f"{sec / (365 * 86400):.3g} years"


# -- process state ------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def without_env(name: str) -> Iterator[None]:
    """Temporarily remove an environment variable (the demo ignores ``$L0TRE_DATA``)."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: behave like Ctrl-C (the engine turns it into a final snapshot)."""
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM while the final files are written (restored afterwards)."""
    saved: list[tuple[signal.Signals, Any]] = []
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            saved.append((sig, signal.signal(sig, signal.SIG_IGN)))
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for sig, handler in saved:
            signal.signal(sig, handler)


# -- output folders ------------------------------------------------------------------------------------
def refuse_to_replace(out: Path, *, resume: bool | None, overwrite: bool) -> None:
    """Refuse an output folder that holds an earlier run, unless ``--overwrite`` (or ``--resume``
    with a checkpoint to continue from); ``resume`` is ``None`` for a command without ``--resume``.

    Raises:
        UsageError: one line naming the folder, its run files and the flags that proceed.
    """
    found = run_files(out)
    if not found or overwrite or (resume and CHECKPOINT in found):
        return
    held = f"{str(out)!r} already holds a run ({', '.join(found)})"
    if resume is None:
        raise UsageError(f"--out: {held}; pass --overwrite to replace it, or choose another --out")
    if resume:
        raise UsageError(f"--resume: {held} but no {CHECKPOINT} to continue from; pass --overwrite to start "
                         "over, or choose another --out")
    raise UsageError(f"--out: {held}; pass --resume to continue it, or --overwrite to start over "
                     "(or choose another --out)")


@contextlib.contextmanager
def output_errors(argument: str) -> Iterator[None]:
    """Inside, a failed write (:class:`~l0tre.atomic.OutputError`) names ``argument`` (``--out``)."""
    try:
        yield
    except OutputError as exc:
        if exc.argument is not None:
            raise
        raise exc.for_argument(argument) from exc


# -- where the work runs --------------------------------------------------------------------------------
@contextlib.contextmanager
def ray_executor(args: argparse.Namespace) -> Iterator[Executor | None]:
    """The executor of ``--ray`` (:func:`~l0tre.cli.parsing.add_ray_options`), started, and
    closed on exit; ``None`` without ``--ray`` (then Ray is not imported). Commands that run
    through the engine pass it as ``prepare(..., executor=...)``.

    Raises:
        UsageError: ``--ray-workers``/``--ray-gpus-per-worker`` without ``--ray``, Ray not
            installed, or a cluster that cannot be joined.
    """
    address = getattr(args, "ray", None)
    if address is None:
        gpus: float = getattr(args, "ray_gpus_per_worker", 0.0)
        if getattr(args, "ray_workers", None) is not None or gpus:
            raise UsageError("--ray-workers/--ray-gpus-per-worker: expected together with --ray ADDRESS")
        yield None
        return
    try:
        from ..cluster import RayExecutor
    except ImportError as exc:
        raise UsageError(f"--ray: needs Ray (pip install 'l0tre[ray]'), got {type(exc).__name__}: {exc}") from None
    executor = RayExecutor(address, num_workers=getattr(args, "ray_workers", None),
                           gpus_per_worker=getattr(args, "ray_gpus_per_worker", 0.0))
    try:
        try:
            executor.start()
        except ConnectionError as exc:
            raise UsageError(f"--ray: could not join the Ray cluster at {address!r}: {one_line(exc)}") from None
        notice(args, f"ray: {executor.num_workers} worker(s)")
        yield executor
    finally:
        executor.close()


# -- model and data -------------------------------------------------------------------------------------
def default_max_evaluations() -> int:
    """The evaluation cap :func:`l0tre.api.prepare` applies when none is given."""
    return int(inspect.signature(prepare).parameters["max_evaluations"].default)


def load_classifier(args: argparse.Namespace) -> Classifier:
    """``load_model`` with the CLI's model options (``--model``, ``--arch``, ``--device``,
    ``--trust-pickle``, ``--data-root``)."""
    return load_model(args.model, arch=args.arch, device=args.device, trust_pickle=args.trust_pickle,
                      data_root=args.data_root)


def image_shape(model: Classifier) -> tuple[int, int, int] | None:
    """The model's expected ``(C, H, W)`` when it is known (for the data loaders)."""
    shape = model.input_shape
    return (shape[0], shape[1], shape[2]) if shape is not None and len(shape) == 3 else None


def check_forward(model: Classifier, x: torch.Tensor) -> None:
    """Run the model on one input; a shape mismatch becomes a one-line ``ValueError``."""
    try:
        out = model(x[:1])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"model: running it on the data's images of shape {tuple(x.shape[1:])} failed "
            f"(a model/data shape mismatch?): {first}"
        ) from exc
    if out.shape[1] < 2:
        raise ValueError(f"model output: expected scores for at least 2 classes, got shape {tuple(out.shape)}")


def load_inputs(args: argparse.Namespace, model: Classifier, *, limit: int | None,
                indices: list[int] | None, start: int = 0) -> Dataset:
    """``load_data`` of ``--data`` shaped for ``model``; its notes (the embedded fallback among
    them, instead of its Python warning) are printed as notices."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmbeddedDataWarning)  # said by the notice below
        data = load_data(args.data, data_root=args.data_root, limit=limit, indices=indices, start=start,
                         input_shape=image_shape(model))
    for note in data.notes:
        notice(args, f"data: {note}")
    return data


def select_inputs(model: Classifier, args: argparse.Namespace) -> Dataset:
    """Load ``--data`` with the selection options; ``--only-correct`` keeps correctly classified
    inputs (then ``--limit`` counts those).

    Raises:
        ValueError: a bad selection, no inputs, or inputs the model cannot run on.
    """
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"limit: expected a positive integer, got {args.limit}")
    data = load_inputs(args, model, limit=None if args.only_correct else args.limit, indices=args.indices,
                       start=args.start)
    if len(data) == 0:
        raise ValueError(f"data: expected at least one input, got none from {args.data!r} with this selection")
    check_forward(model, data.x)
    return _only_correct(model, data, args) if args.only_correct else data


def _only_correct(model: Classifier, data: Dataset, args: argparse.Namespace) -> Dataset:
    """The inputs of ``data`` the model classifies correctly, at most ``--limit`` of them."""
    if data.y is None:
        raise ValueError(f"only-correct: the data {args.data!r} has no labels")
    keep: list[torch.Tensor] = []
    found = 0
    for i in range(0, len(data), _PREDICT_CHUNK):
        chunk = slice(i, i + _PREDICT_CHUNK)
        ok = (model.predict(data.x[chunk], batch_size=_PREDICT_CHUNK) == data.y[chunk]).nonzero().squeeze(1) + i
        keep.append(ok)
        found += int(ok.numel())
        if args.limit is not None and found >= args.limit:
            break
    sel = torch.cat(keep)[: args.limit]
    if sel.numel() == 0:
        raise ValueError(f"only-correct: the model classifies none of the selected inputs of {args.data!r} correctly")
    notice(args, f"only-correct: kept {sel.numel()} correctly classified input(s)")
    return Dataset(x=data.x[sel], y=data.y[sel], indices=data.indices[sel], name=data.name,
                   notes=[*data.notes, f"only correctly classified inputs ({sel.numel()})"])
