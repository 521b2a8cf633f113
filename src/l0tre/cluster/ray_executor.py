"""Work units on a Ray cluster: :class:`RayExecutor` (the only module that imports Ray).

The engine hands an executor the work units of one shard (:mod:`l0tre.engine.executor`); this
one runs them on Ray workers (a few consecutive units per call) and yields each result as it
arrives (``ray.wait``). The model and objective go to the object store once per run, a level's
incremental chain once per level and a shard's tensors once per shard (:mod:`.shipping`); a call
is only its rank ranges. Each worker keeps at most ``in_flight`` calls queued, so stopping (time
budget, Ctrl-C: the loop closes the generator) cancels little work: queued calls are cancelled, a
running one stops at its next model call. A unit whose worker is lost (a killed process, a lost
node) is submitted again; a result is yielded only once per unit, so nothing is merged twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import ray
import ray.exceptions
import torch
from ray import cloudpickle

from ..arith import ieee_float32
from ..engine.executor import ShardTask, Task, WorkUnit
from ..engine.search import SearchTask
from ..execution.incremental import IncrementalPrefix
from ..validate import Choice, optional_int, positive_float, positive_int
from .shipping import RunPart, SearchPart, ShardPart, assemble, chain_part, pack, place, run_part, shard_part, unpack

R = TypeVar("R")

__all__ = ["RayExecutor", "WorkerKind"]

#: lost work, submitted again (application errors are raised instead)
_LOST = (ray.exceptions.WorkerCrashedError, ray.exceptions.RayActorError, ray.exceptions.ObjectLostError,
         ray.exceptions.NodeDiedError, ray.exceptions.OwnerDiedError, ray.exceptions.ActorUnavailableError)
_CACHED = 8  # parts a worker keeps unpacked (run, chains, recent shards)


class WorkerKind(Choice):
    """How units run: ``actors`` hold the unpacked model between units; ``tasks`` unpack it for
    every unit (no state on the workers)."""

    ACTORS = "actors"
    TASKS = "tasks"

    @classmethod
    def argument(cls) -> str:
        return "workers"


class _Unpacked:
    """A worker's unpacked parts by object id (the few most recent)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.parts: dict[str, Any] = {}

    def get(self, ref: ray.ObjectRef, attach: RunPart | None = None) -> Any:
        """The part behind ``ref``, unpacked here once; the least recently used part is dropped
        (the run and chain parts, used by every call, stay)."""
        key = ref.hex()
        if key in self.parts:
            self.parts[key] = self.parts.pop(key)  # most recently used last
        else:
            obj = unpack(ray.get(ref), self.device)
            if isinstance(obj, RunPart):
                obj = place(obj, self.device)
            elif isinstance(obj, IncrementalPrefix) and attach is not None:
                obj = dataclasses.replace(obj, model=attach.model)
            if len(self.parts) >= _CACHED:
                self.parts.pop(next(iter(self.parts)))
            self.parts[key] = obj
        return self.parts[key]


def _cancel_check(evaluations: int) -> None:
    """Progress callback on a worker: stop a unit whose task was cancelled (actor tasks)."""
    is_canceled = getattr(ray.get_runtime_context(), "is_canceled", None)  # Ray >= 2.40
    if is_canceled is not None and is_canceled():
        raise KeyboardInterrupt("unit cancelled")


@dataclass(frozen=True)
class _Refs:
    """The object refs of a shard's parts (sent with every unit; Ray does not resolve them)."""

    run: ray.ObjectRef
    chain: ray.ObjectRef | None
    shard: ray.ObjectRef


def _run_units(cache: _Unpacked, refs: _Refs, units: tuple[WorkUnit, ...], check: bool) -> list[object]:
    run = cache.get(refs.run)
    chain = None if refs.chain is None else cache.get(refs.chain, attach=run)
    shard: ShardPart | SearchPart = cache.get(refs.shard)
    task = assemble(run, chain, shard)
    if check:
        task = dataclasses.replace(task, on_batch=_cancel_check)
    with ieee_float32(), torch.no_grad():
        return [task.run(unit) for unit in units]


def _device(gpus: float) -> torch.device:
    return torch.device("cuda" if gpus > 0 else "cpu")


@ray.remote
class _Worker:
    """An actor that keeps the unpacked model (and recent shards) between units."""

    def __init__(self, gpus: float, threads: int) -> None:
        torch.set_num_threads(threads)
        self.cache = _Unpacked(_device(gpus))

    def pid(self) -> int:
        return os.getpid()

    def run(self, refs: _Refs, units: tuple[WorkUnit, ...]) -> list[object]:
        return _run_units(self.cache, refs, units, check=True)


@ray.remote
def _task(refs: _Refs, units: tuple[WorkUnit, ...], gpus: float, threads: int) -> list[object]:
    """Units as a stateless task (unpacks every part it needs)."""
    torch.set_num_threads(threads)
    return _run_units(_Unpacked(_device(gpus)), refs, units, check=False)


class RayExecutor:
    """Runs the engine's work units on a Ray cluster (``l0tre[ray]``).

    Args:
        address: ``"auto"`` joins the running cluster (``ray start --head`` on this machine or
            ``RAY_ADDRESS``) and starts a local one when there is none; ``"ray://host:10001"`` or
            ``"host:6379"`` joins that cluster; ``None`` starts a local one. When Ray is already
            initialised in this process, that connection is used.
        num_workers: workers (default: the cluster's CPUs / ``cpus_per_worker``, or its GPUs /
            ``gpus_per_worker`` when that is set).
        gpus_per_worker: GPUs per worker (0: the workers run on CPUs; 0.5: two per GPU).
        cpus_per_worker: CPUs reserved per worker, also its torch threads (rounded down, ≥ 1).
        workers: ``"actors"`` (default; each holds the model between units) or ``"tasks"``.
        in_flight: calls queued per worker (1: none waiting; 2 hides the round trip).
        units_per_call: consecutive units sent in one call (default 4 on CPU workers, where a
            unit is 16 small model calls, 1 on GPU workers); more amortises the per-call
            overhead, fewer balances the load and stops sooner when cancelled.
        max_retries: times a unit whose worker was lost is submitted again.

    Use it as ``prepare(..., executor=ex)`` / ``evaluate(..., executor=ex)``, and :meth:`close`
    it (or use ``with``) to release the workers (and stop a local cluster it started). The
    results are those of the in-process executor: units merge by a total order on the driver.
    """

    def __init__(self, address: str | None = "auto", num_workers: int | None = None, gpus_per_worker: float = 0,
                 *, cpus_per_worker: float = 1, workers: str | WorkerKind = WorkerKind.ACTORS, in_flight: int = 2,
                 units_per_call: int | None = None, max_retries: int = 3) -> None:
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ValueError(f"address: expected 'auto', a cluster address or None, got {address!r}")
        self.address = address
        self.num_workers = optional_int("num_workers", num_workers)
        if isinstance(gpus_per_worker, bool) or not isinstance(gpus_per_worker, (int, float)) or gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker: expected a number >= 0, got {gpus_per_worker!r}")
        self.gpus_per_worker = float(gpus_per_worker)
        self.cpus_per_worker = positive_float("cpus_per_worker", cpus_per_worker)
        self.kind = WorkerKind.parse(workers)
        self.in_flight = positive_int("in_flight", in_flight)
        per_call = optional_int("units_per_call", units_per_call)
        self.units_per_call = per_call if per_call is not None else (1 if self.gpus_per_worker > 0 else 4)
        self.max_retries = optional_int("max_retries", max_retries, minimum=0) or 0
        self._started_ray = False
        self._actors: list[Any] = []
        self._parts: dict[tuple[object, ...], tuple[object, ray.ObjectRef]] = {}

    # -- cluster --------------------------------------------------------------------------------
    def start(self) -> RayExecutor:
        """Connect to (or start) the cluster and start the workers; :meth:`map` does it when
        needed. Raises ``ValueError`` when the cluster has no room for a worker."""
        if not ray.is_initialized():
            self._started_ray = _connect(self.address)
        if self.num_workers is None:
            self.num_workers = self._capacity()
        if self.kind is WorkerKind.ACTORS and not self._actors:
            opts = {"num_cpus": self.cpus_per_worker, "num_gpus": self.gpus_per_worker,
                    "max_restarts": self.max_retries, "max_task_retries": self.max_retries}
            worker = _Worker.options(**opts)  # type: ignore[attr-defined]
            self._actors = [worker.remote(self.gpus_per_worker, self._threads()) for _ in range(self.num_workers)]
        return self

    def _capacity(self) -> int:
        res = ray.cluster_resources()
        if self.gpus_per_worker > 0:
            have, need, what = float(res.get("GPU", 0)), self.gpus_per_worker, "GPUs"
        else:
            have, need, what = float(res.get("CPU", 0)), self.cpus_per_worker, "CPUs"
        count = int(have // need)
        if count < 1:
            raise ValueError(f"gpus_per_worker/cpus_per_worker: the cluster has {have:g} {what}, "
                             f"expected at least {need:g} for one worker")
        return count

    def _threads(self) -> int:
        return max(1, int(self.cpus_per_worker))

    def pids(self) -> list[int]:
        """Process ids of the worker actors (``workers="actors"``; empty before :meth:`start`)."""
        return [int(pid) for pid in ray.get([a.pid.remote() for a in self._actors])]

    def close(self) -> None:
        """Stop the workers, forget the stored parts, and shut down a local cluster started here."""
        for actor in self._actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self._actors, self._parts = [], {}
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False

    @property
    def parallelism(self) -> int:
        """Workers running units at the same time (1 before :meth:`start` when ``num_workers`` is
        not given); the engine cuts shards into enough units to keep them busy."""
        return len(self._actors) or int(self.num_workers or 1)

    def __enter__(self) -> RayExecutor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the executor interface --------------------------------------------------------------
    def map(self, task: Task[R], units: Sequence[WorkUnit]) -> Generator[tuple[WorkUnit, R], None, None]:
        """Yield ``(unit, result)`` for every unit as results arrive; closing cancels the rest.
        ``task``: a shard's pass (:class:`~l0tre.engine.executor.ShardTask`) or its search
        (:class:`~l0tre.engine.search.SearchTask`)."""
        if not isinstance(task, (ShardTask, SearchTask)):
            raise TypeError(f"task: RayExecutor runs ShardTask and SearchTask work, got {type(task).__name__}")
        self.start()
        refs = self._refs(task)
        workers = len(self._actors) or int(self.num_workers or 1)
        # never fewer calls than queue slots: few large units still spread over every worker
        size = max(1, min(self.units_per_call, len(units) // (workers * self.in_flight)))
        # calls of consecutive units, popped from the end: submitted in the given order
        todo = [tuple(units[i:i + size]) for i in range(0, len(units), size)][::-1]
        running: dict[ray.ObjectRef, tuple[tuple[WorkUnit, ...], int, int]] = {}  # ref -> units, worker, attempt
        yielded: set[tuple[int, int, int]] = set()
        try:
            for slot in range(workers):
                for _ in range(self.in_flight):
                    self._submit(todo, running, refs, slot, 0)
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                call, slot, attempt = running.pop(ready[0])
                results = self._result(ready[0], call, attempt)
                if results is None:  # lost: the same units again, on the next worker
                    todo.append(call)
                    self._submit(todo, running, refs, slot + 1, attempt + 1)
                    continue
                self._submit(todo, running, refs, slot, 0)
                for unit, result in zip(call, results, strict=True):
                    key = (unit.shard, unit.r0, unit.r1)
                    if key in yielded:
                        continue
                    yielded.add(key)
                    if task.on_batch is not None:
                        task.on_batch(int(result.evaluations.sum()))
                    yield unit, cast(R, result)
        finally:
            for ref in running:
                with contextlib.suppress(Exception):
                    ray.cancel(ref)

    def _submit(self, todo: list[tuple[WorkUnit, ...]],
                running: dict[ray.ObjectRef, tuple[tuple[WorkUnit, ...], int, int]],
                refs: _Refs, slot: int, attempt: int) -> None:
        if not todo:
            return
        call = todo.pop()
        if self._actors:
            ref = self._actors[slot % len(self._actors)].run.remote(refs, call)
        else:
            ref = _task.options(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker,
                                max_retries=self.max_retries).remote(refs, call, self.gpus_per_worker,
                                                                     self._threads())
        running[ref] = (call, slot, attempt)

    def _result(self, ref: ray.ObjectRef, call: tuple[WorkUnit, ...], attempt: int) -> list[Any] | None:
        """The results of a call's units; ``None`` when its worker was lost and it may run again."""
        try:
            results: list[Any] = ray.get(ref)
            return results
        except _LOST as exc:
            if attempt >= self.max_retries:
                raise RuntimeError(f"RayExecutor: units {list(call)} lost {attempt + 1} times: {exc}") from exc
            return None
        except ray.exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None

    def _refs(self, task: ShardTask | SearchTask) -> _Refs:
        """Object refs of the run part (once per model and objective), the chain (once per
        chain) and the shard part (once per call); stale shard parts are dropped."""
        run = self._put(("run", id(task.model), id(task.objective)), (task.model, task.objective),
                        lambda: run_part(task))
        chain = None if task.incremental is None else self._put(
            ("chain", id(task.incremental)), task.incremental, lambda: chain_part(task))
        shard = ray.put(_packed(shard_part(task)))
        return _Refs(run, chain, shard)

    def _put(self, key: tuple[object, ...], owner: object, build: Any) -> ray.ObjectRef:
        if key not in self._parts:  # the owner is kept so that its id is not reused
            self._parts[key] = (owner, ray.put(_packed(build())))
        return self._parts[key][1]


def _packed(part: object) -> bytes:
    """``part`` packed for the object store; a model that cannot be sent is a ``TypeError``."""
    try:
        return pack(part, cloudpickle.CloudPickler)
    except (pickle.PicklingError, TypeError, RuntimeError, AttributeError) as exc:
        raise TypeError(f"model: RayExecutor sends the model, objective and inputs to its workers; "
                        f"expected objects that pickle (a torch.nn.Module or TorchScript model), got "
                        f"{type(exc).__name__}: {exc}") from exc


def _connect(address: str | None) -> bool:
    """Initialise Ray; whether a local cluster was started here (and is ours to shut down)."""
    quiet: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address == "auto":
        try:
            ray.init(address="auto", logging_level=logging.WARNING)
            return False
        except ConnectionError:
            ray.init(**quiet)
            return True
    if address is None:
        ray.init(**quiet)
        return True
    ray.init(address=address, logging_level=logging.WARNING)
    return False
