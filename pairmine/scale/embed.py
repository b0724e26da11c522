"""The embed stage on Ray: one actor per GPU (or per ``--cpus-per-worker``) that loads the
encoder once and takes shards from a bounded queue.

A unit is the single-machine unit, a shard of ``shard_size`` source items, encoded and
written by :meth:`pairmine.embed.ShardEncoder.run`, the function the single-machine path
calls; batches are formed inside the shard with the run's batch size, never by Ray (whose
batching changes batch composition with the block layout). An actor that dies is restarted
and its shard retried (``--max-retries``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
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
    run_actor_units,
    where_am_i,
)

if TYPE_CHECKING:
    from pairmine.embed import ShardEncoder, ShardJob

log = logging.getLogger(__name__)

QUEUE_PER_WORKER = 2  # shards queued on an actor: the next is ready when one is written


class _FaultOnFirstBatch:
    """The Progress a worker's shard reports to: it reports nobody, and is where the fault
    hook (``PAIRMINE_RAY_FAULT``) kills the worker mid-shard, after its first batch."""

    def __init__(self, job: ShardJob, shard: int) -> None:
        self.job, self.shard, self.fired = job, shard, False

    def start(self, description: str, total: int | None, unit: str = "items") -> None:
        pass

    def advance(self, n: int = 1, **fields: Any) -> None:
        if not self.fired:
            self.fired = True
            begin_attempt(self.job.out, "embed", self.shard, fault=True)

    def finish(self) -> None:
        pass


class EmbedWorker:
    """A Ray actor: the encoder, loaded once, and the shards it is given."""

    def __init__(self, job: ShardJob) -> None:
        from pairmine.embed import ShardEncoder

        self.job = job
        self.encoder: ShardEncoder = ShardEncoder.open(job)

    def shard(self, k: int) -> dict[str, Any]:
        begin_attempt(self.job.out, "embed", k, fault=False)
        t = time.perf_counter()
        computed = self.encoder.run([k], _FaultOnFirstBatch(self.job, k))
        return {**where_am_i(), "images": computed, "seconds": time.perf_counter() - t}


def embed_on_ray(job: ShardJob, todo: list[int], done: int, options: RayOptions,
                 progress: Progress) -> tuple[int, dict[str, Any]]:
    """Encode the shards ``todo`` on Ray actors. Returns the images encoded and the report."""
    import ray

    from pairmine.scale.cluster import check_nodes, connect

    source = Path(job.record.source)
    see = [source] if source.exists() else []  # a folder or a file list (not a tar pattern)
    with connect(options) as cluster:
        gpu = options.gpus_per_worker > 0
        check_nodes(cluster, see=see, write=[job.out], resource="GPU" if gpu else "CPU")
        reset_attempts(job.out)
        report = ClusterReport("embed", resumed=done)
        bar = UnitProgress(progress, "embed", job.n_shards, done, "shards")
        computed = 0
        if todo:
            capacity = default_workers(cluster.total("GPU" if gpu else "CPU"),
                                       options.gpus_per_worker if gpu
                                       else options.cpus_per_worker)
            n_workers = min(len(todo), options.workers or capacity)
            actor = ray.remote(EmbedWorker).options(
                **options.resources(), max_restarts=options.max_retries,
                max_task_retries=options.max_retries, **fault_env())
            log.info("embed on Ray: %d shard(s) on %d worker(s)", len(todo), n_workers)
            workers: list[Any] = [actor.remote(job) for _ in range(n_workers)]

            def finished(k: int, where: dict[str, Any]) -> None:
                nonlocal computed
                computed += int(where["images"])
                report.add(where)
                bar.advance(1, images=computed)

            try:
                run_actor_units(workers, todo, lambda w, k: w.shard.remote(k),
                                QUEUE_PER_WORKER, finished, "embed shard")
            finally:
                for w in workers:
                    ray.kill(w)
        report.seconds = bar.finish()
        report.count_retries(job.out)
    log.info("embed on Ray: %d shards on %d node(s), %d retried", report.units,
             len(report.by_node), len(report.retried))
    return computed, report.to_json()
