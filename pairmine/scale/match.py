"""The match stage on Ray: one task per block, in block order, with bounded in-flight work.

A unit is the single-machine unit, a row block: block ``i`` against every target after it,
written as the one shard ``pairs-i`` by :func:`pairmine.match.run_blocks`, the function the
single-machine loop calls. So a store written here is byte-identical to one written on one
machine and either can resume the other. Tasks get the run's :class:`BlockJob` (paths and
options) and memory-map the embeddings themselves; each worker process keeps the opened
inputs for the next block of the same run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pairmine.progress import Progress
from pairmine.scale.options import RayOptions
from pairmine.scale.units import (
    ClusterReport,
    UnitProgress,
    begin_attempt,
    default_workers,
    fault_env,
    reset_attempts,
    run_units,
    where_am_i,
)

if TYPE_CHECKING:
    from pairmine.match import BlockJob, SearchInputs

log = logging.getLogger(__name__)

_OPENED: dict[tuple[str, str, str], SearchInputs] = {}  # per worker process: the last run's


def _inputs(job: BlockJob) -> SearchInputs:
    from pairmine.match import SearchInputs

    key = (str(job.emb), job.emb_manifest_sha256, repr(job.plan))
    if key not in _OPENED:
        _OPENED.clear()  # one run's inputs at a time
        _OPENED[key] = SearchInputs.open(job)
    return _OPENED[key]


class _FaultOnStart:
    """The Progress the engine reports a task's block to: nobody; the fault hook
    (``PAIRMINE_RAY_FAULT``) kills the worker here, with the engine built and the block
    not yet written."""

    def __init__(self, job: BlockJob, index: int) -> None:
        self.job, self.index = job, index

    def start(self, description: str, total: int | None, unit: str = "items") -> None:
        begin_attempt(self.job.out, "match", self.index, fault=True)

    def advance(self, n: int = 1, **fields: Any) -> None:
        pass

    def finish(self) -> None:
        pass


def block_unit(job: BlockJob, index: int) -> dict[str, Any]:
    """Run on a worker: compute and write block ``index``; say where it ran."""
    from pairmine.match import run_blocks

    begin_attempt(job.out, "match", index, fault=False)
    t = time.perf_counter()
    run_blocks(job, _inputs(job), [index], progress=_FaultOnStart(job, index))
    return {**where_am_i(), "seconds": time.perf_counter() - t}


def search_on_ray(job: BlockJob, options: RayOptions,
                  progress: Progress) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    """The blocks not yet done, as Ray tasks. Returns every block's statistics, how many were
    resumed, and the cluster report."""
    import ray

    from pairmine.match import collect_stats, plan_units
    from pairmine.scale.cluster import check_nodes, connect

    todo, done = plan_units(job)
    with connect(options) as cluster:
        gpu = options.gpus_per_worker > 0
        check_nodes(cluster, read=[job.emb], write=[job.out], resource="GPU" if gpu else "CPU")
        reset_attempts(job.out)
        report = ClusterReport("match", resumed=len(done))
        bar = UnitProgress(progress, "match", job.n_blocks, len(done), "blocks")
        task = ray.remote(block_unit).options(**options.resources(),
                                              max_retries=options.max_retries, **fault_env())
        capacity = default_workers(cluster.total("GPU" if gpu else "CPU"),
                                   options.gpus_per_worker if gpu else options.cpus_per_worker)
        in_flight = options.workers or 2 * capacity  # Ray's resources bound what runs at once
        job_ref = ray.put(job)

        def finished(index: int, where: dict[str, Any]) -> None:
            report.add(where)
            bar.advance(1)

        run_units(todo, lambda i: task.remote(job_ref, i), in_flight, finished, "match block")
        report.seconds = bar.finish()
        report.count_retries(job.out)
    log.info("match on Ray: %d blocks on %d node(s), %d retried", report.units,
             len(report.by_node), len(report.retried))
    return collect_stats(job), len(done), report.to_json()


# ---------------------------------------------------------------------------------------------
# --plan: what a run would do, before it starts


@dataclass(frozen=True)
class UnitPlan:
    """The units of a match run: per block, the bytes it reads; a time estimate from one
    block measured here."""

    blocks: int
    done: int
    block_rows: int
    todo: list[int]
    bytes_per_block: list[int]
    comparisons: list[int]
    measured_block: int
    measured_seconds: float
    comparisons_per_second: float
    workers: int

    @property
    def estimate_seconds(self) -> float:
        """Compute time of the blocks to do, spread over ``workers`` (reading excluded)."""
        total = sum(self.comparisons) / max(self.comparisons_per_second, 1e-9)
        return total / max(1, self.workers)

    def to_json(self) -> dict[str, Any]:
        return {"blocks": self.blocks, "done": self.done, "block_rows": self.block_rows,
                "todo": self.todo,
                "bytes_per_block": self.bytes_per_block, "comparisons": self.comparisons,
                "measured_block": self.measured_block,
                "measured_seconds": round(self.measured_seconds, 4),
                "comparisons_per_second": self.comparisons_per_second,
                "workers": self.workers, "estimate_seconds": round(self.estimate_seconds, 3)}


def plan_blocks_run(job: BlockJob, inputs: SearchInputs, workers: int,
                    measure: bool = True) -> UnitPlan:
    """Each block reads every target row once to prepare (norms, the pruning rotation) and
    the rows from its own first anchor on; the rate is measured on the middle block."""
    from pairmine.engines import band_search
    from pairmine.engines.band import make_problem
    from pairmine.match import engine_anchors, plan_units

    plan = job.plan
    vectors = inputs.store.vectors
    anchors = engine_anchors(inputs.anchors, len(inputs.store))
    against = "anchors" if plan.against == "subset" else "all"
    rows = job.plan.block_rows
    if rows is None:
        from pairmine.engines import default_block_rows

        rows = default_block_rows()
    problem = make_problem(vectors, anchors, against, rows)
    row_bytes = problem.dim * vectors.dtype.itemsize
    todo, done = plan_units(job)
    reads = [(problem.m + problem.m - problem.block_range(k)[0]) * row_bytes
             for k in range(problem.n_blocks)]
    comparisons = [problem.comparisons(k) for k in range(problem.n_blocks)]
    k = problem.n_blocks // 2
    seconds, rate = 0.0, 0.0
    if measure and problem.n_blocks:
        lo, hi = plan.search_range
        t = time.perf_counter()
        search = band_search(vectors, lo, hi, anchors=anchors, against=against,
                             engine=job.resolved[0], device=job.resolved[1], block_rows=rows,
                             skip_blocks=frozenset(set(range(problem.n_blocks)) - {k}))
        try:
            for _ in search:
                pass
        finally:
            search.close()
        seconds = time.perf_counter() - t
        rate = comparisons[k] / max(seconds, 1e-9)
    return UnitPlan(blocks=problem.n_blocks, done=len(done), block_rows=rows, todo=todo,
                    bytes_per_block=[reads[i] for i in todo],
                    comparisons=[comparisons[i] for i in todo], measured_block=k,
                    measured_seconds=seconds, comparisons_per_second=rate, workers=workers)
