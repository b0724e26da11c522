"""The distributor: runs a stage's units here or on Ray, and knows no stage.

A stage plans its units (ints, or tuples whose first element is the unit's number, or objects
with a ``number``) and hands them over with a picklable, module-level unit function and a
small picklable payload (paths and options, never arrays)::

    report = execute(units, unit_fn, payload, options, progress, stage="export",
                     unit_label="shards", total=n, done=resumed, on_done=record,
                     read=[inputs], write=out)

``unit_fn(payload, unit) -> dict`` runs one unit. With ``options=None`` the units run in this
process, in order, and ``execute`` returns None; with :class:`RayOptions` they run as Ray tasks
(at most ``--ray-workers`` in flight, or twice what the cluster's resources hold), each retried
``--max-retries`` times if its worker dies, and ``execute`` returns the :class:`ClusterReport`.
``on_done(unit, result)`` runs on the driver as each unit finishes (in finishing order on Ray:
results are streamed, not gathered). The progress bar counts ``total`` things of ``unit_label``
(``done`` of them already done); a finished unit advances it by its result's ``"progress"``
(default 1), less what the unit already reported through :func:`unit_progress`.

Stateful units (an encoder loaded once per worker) pass ``actor=True``: then ``unit_fn`` is a
class, ``unit_fn(payload)`` is built once per worker (a Ray actor, or once in this process)
and ``instance(unit) -> dict`` runs each unit; each actor holds at most two units queued.

On Ray every unit:
- runs with its thread pools sized to the CPUs Ray gave it (``torch``, OpenMP/MKL/OpenBLAS,
  ``faiss``, and ``pairmine.runtime.cpu_count`` through ``PAIRMINE_CPUS``); its result says
  how many (``"threads"``) and where it ran;
- records each attempt as an empty file under the store's work folder (removed with it when
  the manifest lands), so the report says which units were retried, whatever killed the
  first attempt;
- may be killed by the fault hook: ``PAIRMINE_RAY_FAULT=STAGE:UNIT`` makes the first attempt
  of that unit kill its worker (``os._exit``) at its first :func:`fault_point` (the unit
  function's own, its first :func:`unit_progress` advance, or at the latest when it returns).
  ``@FILE`` reads ``STAGE:UNIT`` from FILE at each unit instead, so a fault can be armed in a
  cluster whose workers are already running.
A unit that fails for good stops the run with one line: pairmine's own errors as they are;
a unit whose workers ran out of memory (Ray's memory monitor, the kernel's OOM killer, a
``MemoryError``) as :class:`pairmine.errors.OutOfMemory` saying what lowers its memory; any
other death as a failure to resume by rerunning.

``ray`` is imported only inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pairmine.errors import OutOfMemory, PairmineError, is_out_of_memory
from pairmine.progress import NullProgress, Progress
from pairmine.scale.options import RayOptions
from pairmine.stores import PARTIAL_DIR

log = logging.getLogger(__name__)

FAULT_ENV = "PAIRMINE_RAY_FAULT"
CPUS_ENV = "PAIRMINE_CPUS"  # pairmine.runtime.cpu_count honours it: the CPUs Ray gave a unit
THREAD_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
ATTEMPTS_DIR = "ray-attempts"  # under PARTIAL_DIR
QUEUE_PER_ACTOR = 2  # units queued on an actor: the next is ready when one is written

UnitFn = Callable[[Any, Any], dict[str, Any]]


# ---------------------------------------------------------------------------------------------
# attempts and the fault hook


def attempts_dir(out: Path) -> Path:
    return out / PARTIAL_DIR / ATTEMPTS_DIR


def reset_attempts(out: Path) -> None:
    """Forget the attempts of an earlier (killed) run: only this run's are reported."""
    folder = attempts_dir(out)
    if folder.is_dir():
        for path in folder.iterdir():
            path.unlink(missing_ok=True)


def _record_attempt(out: Path, stage: str, unit: int) -> None:
    folder = attempts_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stage}-{unit:06d}.{uuid.uuid4().hex[:12]}").touch()


def _attempts(out: Path, stage: str, unit: int) -> int:
    return sum(1 for _ in attempts_dir(out).glob(f"{stage}-{unit:06d}.*"))


def _armed_fault() -> str | None:
    value = os.environ.get(FAULT_ENV)
    if value is None or not value.startswith("@"):
        return value
    try:
        return Path(value[1:]).read_text(encoding="utf-8").strip()
    except OSError:  # no file: nothing armed
        return None


def fault_env() -> dict[str, Any]:
    """Task options that forward the fault hook to the workers (only when it is set: a
    runtime environment of its own starts a fresh worker pool)."""
    value = os.environ.get(FAULT_ENV)
    if not value or value.startswith("@"):  # a file the workers already know of, or none
        return {}
    return {"runtime_env": {"env_vars": {FAULT_ENV: value}}}


@dataclass
class _Running:
    """The unit this process runs now (set on Ray workers only; None in the driver)."""

    out: Path | None
    stage: str
    number: int
    passed_fault_point: bool = False


_CURRENT: _Running | None = None


def fault_point() -> None:
    """Where the fault hook may kill this worker: on the first attempt of the armed unit,
    once per attempt. A no-op outside a Ray unit (the driver is never killed)."""
    running = _CURRENT
    if running is None or running.passed_fault_point or running.out is None:
        return
    running.passed_fault_point = True
    if _armed_fault() == f"{running.stage}:{running.number}" \
            and _attempts(running.out, running.stage, running.number) == 1:
        log.warning("fault injection (%s): this worker dies in unit %d", FAULT_ENV,
                    running.number)
        os._exit(1)


class _UnitBar:
    """The Progress a unit reports to. Here (no Ray) it moves the run's bar as the unit goes;
    on a worker it reports nobody and is the unit's first :func:`fault_point`."""

    def __init__(self) -> None:
        self.target: Progress | None = None
        self.reported = 0

    def start(self, description: str, total: int | None, unit: str = "items") -> None:
        pass

    def advance(self, n: int = 1, **fields: Any) -> None:
        fault_point()
        if self.target is not None:
            self.target.advance(n, **fields)
            self.reported += n

    def finish(self) -> None:
        pass


_BAR = _UnitBar()


def unit_progress() -> Progress:
    """The Progress a unit function hands to long work inside one unit (batches, samples):
    in this process it advances the run's bar; on a Ray worker it reports nobody."""
    return _BAR


def where_am_i() -> dict[str, Any]:
    """Who runs this unit: node, host, process and the GPUs Ray gave it."""
    import ray

    return {"node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
            "pid": os.getpid(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}


def limit_threads() -> int:
    """Size this worker's thread pools to the CPUs Ray gave the running task or actor (at
    least one; a fraction of a CPU is one thread): torch, OpenMP/MKL/OpenBLAS for libraries
    loaded later, faiss, and ``pairmine.runtime.cpu_count``. More threads than CPUs make
    every GEMM wait on descheduled threads. Returns the thread count."""
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get(  # type: ignore[no-untyped-call]
        "CPU", 0.0)
    n = max(1, int(cpus + 1e-9))
    os.environ[CPUS_ENV] = str(n)
    for name in THREAD_ENVS:
        os.environ[name] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    faiss = sys.modules.get("faiss")
    if faiss is not None:
        faiss.omp_set_num_threads(n)
    return n


def _run_one(call: Callable[[Any], dict[str, Any]], unit: Any, number: int, stage: str,
             out: str | None) -> dict[str, Any]:
    """The body of a unit on a worker: threads, attempt record, fault hook, the unit,
    where it ran."""
    global _CURRENT
    threads = limit_threads()
    path = None if out is None else Path(out)
    if path is not None:
        _record_attempt(path, stage, number)
    _CURRENT = _Running(path, stage, number)
    _BAR.target, _BAR.reported = None, 0
    t = time.perf_counter()
    try:
        result = dict(call(unit))
        fault_point()  # at the latest here, when the unit has not passed one
    finally:
        _CURRENT = None
    return {**result, **where_am_i(), "threads": _threads_in_use(threads),
            "seconds": time.perf_counter() - t}


def _threads_in_use(granted: int) -> int:
    """The threads the unit ran its kernels on: torch's pool where torch is loaded."""
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else granted


def _task(unit_fn: UnitFn, payload: Any, unit: Any, number: int, stage: str,
          out: str | None) -> dict[str, Any]:
    """A Ray task: one unit of a stateless unit function."""
    return _run_one(lambda u: unit_fn(payload, u), unit, number, stage, out)


class _ActorHost:
    """A Ray actor: the stage's unit class, built once (after the threads are limited, so an
    encoder's pools are sized right), and the units it is given."""

    def __init__(self, unit_class: Callable[[Any], Callable[[Any], dict[str, Any]]],
                 payload: Any) -> None:
        limit_threads()
        self.instance = unit_class(payload)

    def run(self, unit: Any, number: int, stage: str, out: str | None) -> dict[str, Any]:
        return _run_one(self.instance, unit, number, stage, out)


# ---------------------------------------------------------------------------------------------
# the report


@dataclass
class ClusterReport:
    """Where the units of one run went; ``to_json`` is what a result reports."""

    stage: str
    units: int = 0
    resumed: int = 0
    by_node: Counter[str] = field(default_factory=Counter)
    by_worker: Counter[str] = field(default_factory=Counter)
    gpus: Counter[str] = field(default_factory=Counter)
    threads: Counter[int] = field(default_factory=Counter)
    retried: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, where: dict[str, Any]) -> None:
        self.units += 1
        self.by_node[f"{where['host']} ({str(where['node'])[:8]})"] += 1
        self.by_worker[f"{where['host']}:{where['pid']}"] += 1
        if where.get("gpus") is not None:
            self.gpus[str(where["gpus"])] += 1
        if where.get("threads") is not None:
            self.threads[int(where["threads"])] += 1

    def count_retries(self, out: Path) -> None:
        counts = Counter(p.name.split(".", 1)[0] for p in attempts_dir(out).glob(
            f"{self.stage}-*"))
        self.retried = sorted(int(k.rsplit("-", 1)[1]) for k, n in counts.items() if n > 1)

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "units_run": self.units, "units_resumed": self.resumed,
                "nodes": len(self.by_node), "units_per_node": dict(self.by_node),
                "units_per_worker": dict(self.by_worker), "units_per_gpu": dict(self.gpus),
                "threads_per_unit": {str(k): v for k, v in sorted(self.threads.items())},
                "retried_units": self.retried, "seconds": round(self.seconds, 3)}


def default_workers(cluster_total: float, per_worker: float) -> int:
    """Units at once when ``--ray-workers`` is not given: what the cluster's resources hold."""
    if per_worker <= 0:
        return max(1, int(cluster_total))
    return max(1, int(cluster_total // per_worker + 1e-9))


def unit_number(unit: Any, position: int) -> int:
    """The number that names a unit in attempt records, the fault hook and messages: the unit
    itself (an int), its first element (a tuple), its ``number``, else its position."""
    if isinstance(unit, int) and not isinstance(unit, bool):
        return unit
    if isinstance(unit, tuple) and unit and isinstance(unit[0], int):
        return int(unit[0])
    number = getattr(unit, "number", None)
    return int(number) if isinstance(number, int) else position


# ---------------------------------------------------------------------------------------------
# execute


MEMORY_HINT = ("lower the unit's size (tile or block rows, --batch-size, --shard-size), run "
               "fewer --ray-workers per node, or give each worker more of a node "
               "(--cpus-per-worker)")


def execute(units: Iterable[Any], unit_fn: Any, payload: Any, options: RayOptions | None,
            progress: Progress | None = None, *, stage: str, unit_label: str = "units",
            total: int | None = None, done: int = 0,
            on_done: Callable[[Any, dict[str, Any]], None] | None = None,
            read: Sequence[Path] = (), write: Path | None = None, see: Sequence[Path] = (),
            actor: bool = False, unit_name: str | None = None,
            memory_hint: str = MEMORY_HINT) -> ClusterReport | None:
    """Run ``units`` through ``unit_fn`` with ``payload`` (see the module doc): here and in
    order without ``options`` (returns None), on Ray with them (returns the report).

    ``read``: complete stores the units read, ``write``: the output store (attempt records
    go under its work folder), ``see``: other inputs; every Ray node must see them all.
    ``unit_name`` names a unit in messages (default ``"STAGE unit"``); ``memory_hint`` says
    what lowers a unit's memory when its workers run out."""
    progress = progress or NullProgress()
    name = unit_name or f"{stage} unit"
    finished = on_done or (lambda unit, result: None)
    if options is None:
        _run_here(units, unit_fn, payload, progress, stage=stage, unit_label=unit_label,
                  total=total, done=done, on_done=finished, actor=actor)
        return None
    return _run_on_ray(units, unit_fn, payload, options, progress, stage=stage,
                       unit_label=unit_label, total=total, done=done, on_done=finished,
                       read=read, write=write, see=see, actor=actor, name=name,
                       memory_hint=memory_hint)


def _run_here(units: Iterable[Any], unit_fn: Any, payload: Any, progress: Progress, *,
              stage: str, unit_label: str, total: int | None, done: int,
              on_done: Callable[[Any, dict[str, Any]], None], actor: bool) -> None:
    progress.start(stage, total=total, unit=unit_label)
    if done:
        progress.advance(done)
    call: Callable[[Any], dict[str, Any]] = (unit_fn(payload) if actor
                                             else lambda u: unit_fn(payload, u))
    for unit in units:
        _BAR.target, _BAR.reported = progress, 0
        try:
            result = dict(call(unit))
        finally:
            _BAR.target = None
        on_done(unit, result)
        rest = int(result.get("progress", 1)) - _BAR.reported
        if rest > 0:
            progress.advance(rest)
    progress.finish()


def _run_on_ray(units: Iterable[Any], unit_fn: Any, payload: Any, options: RayOptions,
                progress: Progress, *, stage: str, unit_label: str, total: int | None,
                done: int, on_done: Callable[[Any, dict[str, Any]], None],
                read: Sequence[Path], write: Path | None, see: Sequence[Path], actor: bool,
                name: str, memory_hint: str) -> ClusterReport:
    import ray

    from pairmine.scale.cluster import check_nodes, connect

    out = None if write is None else write.absolute()
    with connect(options) as cluster:
        gpu = options.gpus_per_worker > 0
        check_nodes(cluster, read=list(read), write=[] if out is None else [out], see=list(see),
                    resource="GPU" if gpu else "CPU")
        if out is not None:
            reset_attempts(out)
        report = ClusterReport(stage, resumed=done)
        progress.start(f"{stage} (ray)", total=total, unit=unit_label)
        if done:
            progress.advance(done)
        t0 = time.perf_counter()
        capacity = default_workers(cluster.total("GPU" if gpu else "CPU"),
                                   options.gpus_per_worker if gpu else options.cpus_per_worker)
        numbered = ((unit_number(u, i), u) for i, u in enumerate(units))

        def finished(unit: Any, result: dict[str, Any]) -> None:
            report.add(result)
            on_done(unit, result)
            progress.advance(int(result.get("progress", 1)))

        failure = _Failure(name, memory_hint)
        payload_ref = ray.put(payload)
        where = None if out is None else str(out)
        if actor:
            todo = list(numbered)
            if todo:
                n_actors = min(len(todo), options.workers or capacity)
                host = ray.remote(_ActorHost).options(
                    **options.resources(), max_restarts=options.max_retries,
                    max_task_retries=options.max_retries, **fault_env())
                log.info("%s on Ray: %d unit(s) on %d actor(s)", stage, len(todo), n_actors)
                actors: list[Any] = [host.remote(unit_fn, payload_ref) for _ in range(n_actors)]
                try:
                    _actor_loop(actors, todo, lambda a, n, u: a.run.remote(u, n, stage, where),
                                finished, failure)
                finally:
                    for a in actors:
                        ray.kill(a)
        else:
            task = ray.remote(_task).options(**options.resources(),
                                              max_retries=options.max_retries, **fault_env())
            _task_loop(numbered, lambda n, u: task.remote(unit_fn, payload_ref, u, n, stage,
                                                          where),
                       options.workers or 2 * capacity, finished, failure)
        report.seconds = time.perf_counter() - t0
        progress.finish()
        if out is not None:
            report.count_retries(out)
    log.info("%s on Ray: %d unit(s) on %d node(s), %d retried", stage, report.units,
             len(report.by_node), len(report.retried))
    return report


def _task_loop(units: Iterable[tuple[int, Any]], submit: Callable[[int, Any], Any],
               in_flight: int, on_done: Callable[[Any, dict[str, Any]], None],
               failure: _Failure) -> None:
    """Submit ``units`` in order with at most ``in_flight`` running."""
    import ray

    queue = iter(units)
    pending: dict[Any, tuple[int, Any]] = {}
    exhausted = False
    while True:
        while not exhausted and len(pending) < in_flight:
            item = next(queue, None)
            if item is None:
                exhausted = True
                break
            pending[submit(*item)] = item
        if not pending:
            return
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            number, unit = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as exc:
                # the driver is about to release the store's lock: no task may write after
                for other in pending:
                    ray.cancel(other, force=True)
                if pending:
                    ray.wait(list(pending), num_returns=len(pending), timeout=30)
                raise failure.error(exc, number) from None
            on_done(unit, result)


def _actor_loop(actors: list[Any], units: list[tuple[int, Any]],
                submit: Callable[[Any, int, Any], Any],
                on_done: Callable[[Any, dict[str, Any]], None], failure: _Failure) -> None:
    """Give ``units`` to ``actors`` in order, each holding at most ``QUEUE_PER_ACTOR`` (a slow
    actor is not handed more than it can take)."""
    import ray

    queue = iter(units)
    pending: dict[Any, tuple[int, Any, Any]] = {}
    load = {id(a): 0 for a in actors}
    exhausted = False

    def fill(actor: Any) -> None:
        nonlocal exhausted
        while not exhausted and load[id(actor)] < QUEUE_PER_ACTOR:
            item = next(queue, None)
            if item is None:
                exhausted = True
                return
            pending[submit(actor, *item)] = (*item, actor)
            load[id(actor)] += 1

    for actor in actors:
        fill(actor)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            number, unit, actor = pending.pop(ref)
            load[id(actor)] -= 1
            try:
                result = ray.get(ref)
            except Exception as exc:
                raise failure.error(exc, number) from None
            on_done(unit, result)
            fill(actor)


# ---------------------------------------------------------------------------------------------
# a unit that failed for good


def _oom_kills() -> int | None:
    """The kernel's OOM-kill count on this node (``/proc/vmstat``), None where unknown."""
    try:
        with open("/proc/vmstat", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


_MEMORY_WORDS = ("out of memory", "oom", "memory pressure", "memory usage")


class _Failure:
    """Turns a unit's final failure into the one line the driver raises."""

    def __init__(self, name: str, memory_hint: str) -> None:
        self.name = name
        self.memory_hint = memory_hint
        self.oom_kills = _oom_kills()

    def killed_for_memory(self, exc: BaseException) -> bool:
        import ray

        if isinstance(exc, ray.exceptions.OutOfMemoryError):
            return True
        if not isinstance(exc, ray.exceptions.WorkerCrashedError | ray.exceptions.RayActorError
                          | ray.exceptions.NodeDiedError):
            return False
        text = str(exc).lower()
        if any(word in text for word in _MEMORY_WORDS):
            return True
        now = _oom_kills()  # the kernel's OOM killer struck on this node during the run
        return now is not None and self.oom_kills is not None and now > self.oom_kills

    def error(self, exc: BaseException, number: int) -> BaseException:
        import ray

        what = f"{self.name} {number}"
        if isinstance(exc, ray.exceptions.RayTaskError):
            cause = exc.cause
            if isinstance(cause, PairmineError):
                return cause
            if cause is not None and (is_out_of_memory(cause) or isinstance(
                    cause, ray.exceptions.OutOfMemoryError)):
                return OutOfMemory(f"{what} ran out of memory on a worker "
                                   f"({type(cause).__name__})", self.memory_hint)
            return PairmineError(f"{what} failed on a worker: {type(cause).__name__}: "
                                 f"{_first_line(str(cause))}", "rerun the same command to resume")
        if self.killed_for_memory(exc):
            return OutOfMemory(f"{what}: its workers were killed for running out of memory, "
                               "more often than --max-retries allows", self.memory_hint)
        if isinstance(exc, ray.exceptions.RayError):
            return PairmineError(f"{what} failed: {type(exc).__name__}: "
                                 f"{_first_line(str(exc))}",
                                 "the worker died more often than --max-retries allows; rerun "
                                 "the same command to resume")
        return exc


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else "no reason given"
