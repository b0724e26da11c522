"""What the distributors share: attempt records, the fault hook, the driver's unit loop.

A unit records each attempt as an empty file under the store's work folder (removed with it
when the manifest lands), so the driver can say which units were retried, whatever killed
the first attempt. ``PAIRMINE_RAY_FAULT=STAGE:UNIT`` makes the first attempt of that unit
kill its worker process (``os._exit``) mid-unit: how the tests inject a crash. The value
``@FILE`` reads ``STAGE:UNIT`` from FILE at each unit instead, so a fault can be armed in a
cluster whose workers are already running (no new environment, no new worker pool).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pairmine.errors import PairmineError
from pairmine.progress import Progress
from pairmine.stores import PARTIAL_DIR

log = logging.getLogger(__name__)

FAULT_ENV = "PAIRMINE_RAY_FAULT"
ATTEMPTS_DIR = "ray-attempts"  # under PARTIAL_DIR


def attempts_dir(out: Path) -> Path:
    return out / PARTIAL_DIR / ATTEMPTS_DIR


def reset_attempts(out: Path) -> None:
    """Forget the attempts of an earlier (killed) run: only this run's are reported."""
    folder = attempts_dir(out)
    if folder.is_dir():
        for path in folder.iterdir():
            path.unlink(missing_ok=True)


def begin_attempt(out: Path, stage: str, unit: int, *, fault: bool = True) -> None:
    """Record an attempt of ``unit`` (``fault=True``: a point inside the unit instead, where
    the fault hook may fire, on a first attempt only)."""
    folder = attempts_dir(out)
    if not fault:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stage}-{unit:06d}.{uuid.uuid4().hex[:12]}").touch()
        return
    if _armed_fault() == f"{stage}:{unit}" and _attempts(out, stage, unit) == 1:
        log.warning("fault injection (%s): this worker dies in unit %d", FAULT_ENV, unit)
        os._exit(1)


def _armed_fault() -> str | None:
    value = os.environ.get(FAULT_ENV)
    if value is None or not value.startswith("@"):
        return value
    try:
        return Path(value[1:]).read_text(encoding="utf-8").strip()
    except OSError:  # no file: nothing armed
        return None


def _attempts(out: Path, stage: str, unit: int) -> int:
    return sum(1 for _ in attempts_dir(out).glob(f"{stage}-{unit:06d}.*"))


def fault_env() -> dict[str, Any]:
    """Task options that forward the fault hook to the workers (only when it is set: a
    runtime environment of its own starts a fresh worker pool)."""
    value = os.environ.get(FAULT_ENV)
    if not value or value.startswith("@"):  # a file the workers already know of, or none
        return {}
    return {"runtime_env": {"env_vars": {FAULT_ENV: value}}}


def where_am_i() -> dict[str, Any]:
    """Who runs this unit: node, host, process and the GPUs Ray gave it."""
    import ray

    return {"node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
            "pid": os.getpid(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}


@dataclass
class ClusterReport:
    """Where the units of one run went; ``to_json`` is what a result reports."""

    stage: str
    units: int = 0
    resumed: int = 0
    by_node: Counter[str] = field(default_factory=Counter)
    by_worker: Counter[str] = field(default_factory=Counter)
    gpus: Counter[str] = field(default_factory=Counter)
    retried: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, where: dict[str, Any]) -> None:
        self.units += 1
        self.by_node[f"{where['host']} ({str(where['node'])[:8]})"] += 1
        self.by_worker[f"{where['host']}:{where['pid']}"] += 1
        if where.get("gpus") is not None:
            self.gpus[str(where["gpus"])] += 1

    def count_retries(self, out: Path) -> None:
        counts = Counter(p.name.split(".", 1)[0] for p in attempts_dir(out).glob(
            f"{self.stage}-*"))
        self.retried = sorted(int(k.rsplit("-", 1)[1]) for k, n in counts.items() if n > 1)

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "units_run": self.units, "units_resumed": self.resumed,
                "nodes": len(self.by_node), "units_per_node": dict(self.by_node),
                "units_per_worker": dict(self.by_worker), "units_per_gpu": dict(self.gpus),
                "retried_units": self.retried, "seconds": round(self.seconds, 3)}


def unit_error(exc: BaseException, what: str) -> BaseException:
    """A failed unit as the driver raises it: pairmine's own errors as they are (one line),
    anything else named by unit."""
    import ray

    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause
        if isinstance(cause, PairmineError):
            return cause
        return PairmineError(f"{what} failed on a worker: {type(cause).__name__}: "
                             f"{str(cause)[:300]}", "rerun the same command to resume")
    if isinstance(exc, ray.exceptions.RayError):
        return PairmineError(f"{what} failed: {type(exc).__name__}: {str(exc)[:300]}",
                             "the worker died more often than --max-retries allows; rerun "
                             "the same command to resume")
    return exc


def run_units(units: Iterable[int], submit: Callable[[int], Any], in_flight: int,
              on_done: Callable[[int, Any], None], what: str) -> None:
    """Submit ``units`` in order with at most ``in_flight`` running; ``on_done`` as each
    finishes (in finishing order: results are streamed, not gathered)."""
    import ray

    queue = iter(units)
    pending: dict[Any, int] = {}
    exhausted = False
    while True:
        while not exhausted and len(pending) < in_flight:
            unit = next(queue, None)
            if unit is None:
                exhausted = True
                break
            pending[submit(unit)] = unit
        if not pending:
            return
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            unit = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as exc:
                # the driver is about to release the store's lock: no task may write after
                for other in pending:
                    ray.cancel(other, force=True)
                if pending:
                    ray.wait(list(pending), num_returns=len(pending), timeout=30)
                raise unit_error(exc, f"{what} {unit}") from None
            on_done(unit, result)


def run_actor_units(actors: list[Any], units: Iterable[int], submit: Callable[[Any, int], Any],
                    per_actor: int, on_done: Callable[[int, Any], None], what: str) -> None:
    """Give ``units`` to ``actors`` in order, each holding at most ``per_actor`` queued (a
    bounded queue: a slow actor is not handed more than it can take); ``on_done`` as each
    finishes."""
    import ray

    queue = iter(units)
    pending: dict[Any, tuple[int, Any]] = {}
    load = {id(a): 0 for a in actors}
    exhausted = False

    def fill(actor: Any) -> None:
        nonlocal exhausted
        while not exhausted and load[id(actor)] < per_actor:
            unit = next(queue, None)
            if unit is None:
                exhausted = True
                return
            pending[submit(actor, unit)] = (unit, actor)
            load[id(actor)] += 1

    for actor in actors:
        fill(actor)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            unit, actor = pending.pop(ref)
            load[id(actor)] -= 1
            try:
                result = ray.get(ref)
            except Exception as exc:
                raise unit_error(exc, f"{what} {unit}") from None
            on_done(unit, result)
            fill(actor)


class UnitProgress:
    """One bar over all units of a run, fed by the driver as units finish."""

    def __init__(self, progress: Progress, stage: str, total: int, done: int, unit: str) -> None:
        self.progress = progress
        self.t0 = time.perf_counter()
        progress.start(f"{stage} (ray)", total=total, unit=unit)
        if done:
            progress.advance(done)

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.progress.advance(n, **fields)

    def finish(self) -> float:
        self.progress.finish()
        return time.perf_counter() - self.t0


def default_workers(cluster_total: float, per_worker: float) -> int:
    """Units at once when ``--ray-workers`` is not given: what the cluster's resources hold."""
    if per_worker <= 0:
        return max(1, int(cluster_total))
    return max(1, int(cluster_total // per_worker + 1e-9))
