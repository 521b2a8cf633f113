"""What a remote worker needs to run a work unit, packed for the object store.

A :class:`~l0tre.engine.executor.ShardTask` is split into three parts of different lifetimes,
each packed once and put in the object store once:

* :class:`RunPart` — the model and the objective: once per run;
* the incremental chain of a level (:class:`~l0tre.execution.incremental.IncrementalPrefix`),
  packed without its model: once per chain (at most one per level);
* :class:`ShardPart` — the shard's inputs, references, valid colours, level context and pair
  tables: once per shard (each of its units only names the part and its rank range);
* :class:`SearchPart` — a shard's search for examples (:mod:`l0tre.engine.search`): its open
  inputs, their ordered subsets and values: once per shard (units name ranges of its rows).

Parts are written with ``torch.save`` through a by-value pickler (models defined in a script or
a notebook travel too) and read with ``torch.load(map_location=device)``, so the driver may hold
its tensors on another device than the workers (a CPU driver, GPU workers). A compiled forward
pass (``torch.compile``) is not sent: the worker compiles its own copy.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import pickle
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from ..classifier import Classifier
from ..engine.executor import ShardTask
from ..engine.search import SearchTask
from ..engine.sensitivity import LevelContext
from ..execution.incremental import IncrementalPrefix
from ..execution.pairs import PairRecipe, PairTable
from ..objectives import Objective

__all__ = ["RunPart", "SearchPart", "ShardPart", "assemble", "chain_part", "pack", "place", "run_part", "shard_part",
           "unpack"]


@dataclass(frozen=True)
class RunPart:
    """The model (eager forward, compiled again on the worker when ``compiled``) and objective."""

    model: Classifier
    objective: Objective
    compiled: bool
    script: bytes | None = None  # a TorchScript module (``torch.jit.save``), which pickle cannot send


@dataclass(frozen=True)
class ShardPart:
    """The per-shard fields of a :class:`ShardTask` (tensors: see there)."""

    x0: torch.Tensor
    ref: torch.Tensor
    valid: torch.Tensor
    inputs: torch.Tensor
    ctx: LevelContext
    batch_size: int
    k: int
    pairs: Sequence[PairTable]
    pair_recipe: PairRecipe | None = None  # the worker builds the tables (pickled without them)


@dataclass(frozen=True)
class SearchPart:
    """The per-shard fields of a :class:`~l0tre.engine.search.SearchTask` by name (all but the
    model, objective, chain and progress callback, which travel apart or not at all)."""

    fields: dict[str, Any]


_SEARCH_APART = ("model", "objective", "incremental", "on_batch")


def run_part(task: ShardTask | SearchTask) -> RunPart:
    """The run-wide part of ``task``: a shallow copy of its model with the eager forward."""
    model = copy.copy(task.model)
    compiled = model.mode.startswith("compile")
    model._forward = model.model
    model._pre = None
    script = None
    if isinstance(model.model, torch.jit.ScriptModule):
        buf = io.BytesIO()
        with warnings.catch_warnings():  # deprecated in favour of torch.export, which loses the module
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(model.model, buf)
        script = buf.getvalue()
        model.model = model._forward = _no_model
    return RunPart(model=model, objective=task.objective, compiled=compiled, script=script)


def _no_model(x: torch.Tensor) -> torch.Tensor:
    """Stands for a TorchScript module on its way to a worker (replaced by :func:`place`)."""
    raise RuntimeError("the TorchScript model was not attached on the worker")


def chain_part(task: ShardTask | SearchTask) -> IncrementalPrefix | None:
    """The level's incremental chain without its model (the worker attaches its own copy)."""
    if task.incremental is None:
        return None
    return dataclasses.replace(task.incremental, model=None)  # type: ignore[arg-type]


def shard_part(task: ShardTask | SearchTask) -> ShardPart | SearchPart:
    """The per-shard part of ``task``."""
    if isinstance(task, SearchTask):
        return SearchPart({f.name: getattr(task, f.name) for f in dataclasses.fields(task)
                           if f.name not in _SEARCH_APART})
    return ShardPart(x0=task.x0, ref=task.ref, valid=task.valid, inputs=task.inputs, ctx=task.ctx,
                     batch_size=task.batch_size, k=task.k, pairs=tuple(task.pairs), pair_recipe=task.pair_recipe)


def pack(obj: object, pickler: type[pickle.Pickler]) -> bytes:
    """``obj`` as bytes (``torch.save`` with ``pickler``, e.g. cloudpickle's by-value pickler)."""
    module = SimpleNamespace(Pickler=pickler, Unpickler=pickle.Unpickler, load=pickle.load, dump=pickle.dump,
                             __name__="l0tre_pickle")
    buf = io.BytesIO()
    torch.save(obj, buf, pickle_module=module)
    return buf.getvalue()


def unpack(blob: bytes, device: torch.device) -> Any:
    """The object packed in ``blob``, every tensor on ``device``.

    Only for parts this package packed: loading a pickle runs code from it (the driver of the
    same run wrote it).
    """
    return torch.load(io.BytesIO(blob), map_location=device, weights_only=False, pickle_module=pickle)


def place(part: RunPart, device: torch.device) -> RunPart:
    """``part`` (just unpacked onto ``device``) ready to run there: the model's device set, its
    forward compiled again when the driver's was."""
    part.model.device = device
    if part.script is not None:
        module = torch.jit.load(io.BytesIO(part.script), map_location=device)
        part.model.model = part.model._forward = module
    if part.compiled:
        part.model.set_mode(channels_last=part.model.channels_last, compile=True)
    return part


def assemble(run: RunPart, chain: IncrementalPrefix | None,
             shard: ShardPart | SearchPart) -> ShardTask | SearchTask:
    """The task of ``run``, ``chain`` (its model attached) and ``shard``, without a progress
    callback (the driver counts a unit's evaluations when its result arrives)."""
    if chain is not None and chain.model is not run.model:
        chain = dataclasses.replace(chain, model=run.model)
    if isinstance(shard, SearchPart):
        return SearchTask(model=run.model, objective=run.objective, incremental=chain, **shard.fields)
    return ShardTask(model=run.model, objective=run.objective, x0=shard.x0, ref=shard.ref, valid=shard.valid,
                     inputs=shard.inputs, ctx=shard.ctx, batch_size=shard.batch_size, k=shard.k,
                     incremental=chain, pairs=shard.pairs, on_batch=None, pair_recipe=shard.pair_recipe)

