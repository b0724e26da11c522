"""The export stage on Ray: one task per output shard (WebDataset tar + its index).

Shard boundaries depend on every sample's size (``--max-shard-bytes``) and on which samples
have problems (``--skip-missing``), so the driver plans them first: tasks over chunks of the
sample order return each sample's tar size (reading and checking its images), and
:func:`pairmine.export.shards.shard_bounds` cuts exactly where the in-order writer cuts. Then
each shard is written by :func:`pairmine.export.shards.write_one_shard` through the
single-machine writer, so the export is byte-identical to one written without Ray. With
neither limit the sizing pass is skipped (shards are every ``--shard-size`` samples).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
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
    run_units,
    where_am_i,
)

if TYPE_CHECKING:
    import numpy as np

    from pairmine.export.config import ExportConfig
    from pairmine.export.fetch import Fetcher
    from pairmine.export.plan import Plan
    from pairmine.export.shards import ShardLimits, ShardRecord

log = logging.getLogger(__name__)

SIZE_CHUNKS_PER_WORKER = 4


@dataclass(frozen=True)
class ExportJob:
    """What a task needs to rebuild the run's plan and write any shard: paths and options."""

    out: Path
    pairs: Path
    combined: bool
    shuffle: bool
    seed: int
    limits: ShardLimits
    skip_missing: bool
    cache_bytes: int
    pairs_manifest_sha256: str


_OPENED: dict[tuple[Any, ...], tuple[Plan, Fetcher]] = {}  # per worker process: the last run's


def _opened(job: ExportJob) -> tuple[Plan, Fetcher]:
    from pairmine.errors import StoreError
    from pairmine.export.fetch import Fetcher
    from pairmine.export.plan import make_plan
    from pairmine.stores import MANIFEST, sha256_file

    key = (str(job.pairs), job.pairs_manifest_sha256, job.combined, job.shuffle, job.seed)
    if key not in _OPENED:
        if sha256_file(job.pairs / MANIFEST) != job.pairs_manifest_sha256:
            raise StoreError(f"the pairs store {job.pairs} changed since this export started",
                             "rerun export")
        _OPENED.clear()
        plan = make_plan(job.pairs, combined=job.combined, shuffle=job.shuffle, seed=job.seed)
        _OPENED[key] = (plan, Fetcher(plan.source_kind, plan.images,
                                      cache_bytes=job.cache_bytes))
    return _OPENED[key]


def size_unit(job: ExportJob, lo: int, hi: int) -> tuple[np.ndarray, dict[int, Any]]:
    """Run on a worker: the tar size of samples ``[lo, hi)`` (-1: problems, returned by
    position as JSON)."""
    import numpy as np

    from pairmine.export.shards import sample_size

    plan, fetcher = _opened(job)
    sizes = np.empty(hi - lo, dtype=np.int64)
    problems: dict[int, Any] = {}
    for p in range(lo, hi):
        size, found = sample_size(plan, fetcher, p)
        sizes[p - lo] = size
        if found:
            problems[p] = [x.to_json() for x in found]
    return sizes, problems


def shard_unit(job: ExportJob, number: int, bounds: tuple[int, int]) -> dict[str, Any]:
    """Run on a worker: write shard ``number``; say where it ran."""
    from pairmine.export.shards import write_one_shard

    begin_attempt(job.out, "export", number, fault=False)
    plan, fetcher = _opened(job)
    t = time.perf_counter()
    begin_attempt(job.out, "export", number, fault=True)
    record = write_one_shard(job.out, number, bounds, plan, fetcher, job.limits,
                             skip_missing=job.skip_missing)
    return {**where_am_i(), "record": record, "seconds": time.perf_counter() - t}


def write_shards_on_ray(out: Path, plan: Plan, config: ExportConfig, *,
                        progress: Progress) -> tuple[list[ShardRecord], int, dict[str, Any]]:
    """Every shard of the export, written by Ray tasks as ``config`` (resolved, with ``ray``
    set) says. Returns the shards (in order), how many an earlier run had finished, and the
    cluster report. Raises ``StoppedAt`` at the first sample with problems when they are not
    to be skipped, as the in-order writer does."""
    import ray

    from pairmine.errors import ConfigError
    from pairmine.export.formats import EXPORT_FORMATS
    from pairmine.export.shards import finished_shard, remove_strays
    from pairmine.scale.cluster import check_nodes, connect
    from pairmine.stores import MANIFEST, sha256_file

    options = config.ray_options()
    if options is None:
        raise ConfigError("the export's shards go to Ray only with --ray",
                          "give --ray auto, local or HOST:PORT")
    job = ExportJob(out=out.absolute(), pairs=plan.pairs_path, combined=config.combined,
                    shuffle=bool(config.shuffle), seed=config.seed, limits=config.limits(),
                    skip_missing=config.skip_missing,
                    cache_bytes=EXPORT_FORMATS.get(config.fmt).cache_bytes,
                    pairs_manifest_sha256=sha256_file(plan.pairs_path / MANIFEST))
    spec = Path(str(plan.source.get("spec", "")))
    with connect(options) as cluster:
        gpu = options.gpus_per_worker > 0
        check_nodes(cluster, read=[plan.pairs_path, plan.embeddings_path], write=[job.out],
                    see=[spec] if spec.is_absolute() and spec.exists() else [],
                    resource="GPU" if gpu else "CPU")
        reset_attempts(job.out)
        capacity = default_workers(cluster.total("GPU" if gpu else "CPU"),
                                   options.gpus_per_worker if gpu else options.cpus_per_worker)
        in_flight = options.workers or 2 * capacity
        job_ref = ray.put(job)
        bounds = _plan_bounds(job, job_ref, plan.samples, capacity, in_flight, options, progress)

        records: dict[int, ShardRecord] = {}
        for number, (_, stop) in enumerate(bounds):
            found = finished_shard(job.out, number)
            if found is not None and found.next_position == stop:
                records[number] = found
        resumed = len(records)
        report = ClusterReport("export", resumed=resumed)
        bar = UnitProgress(progress, "export", len(bounds), resumed, "shards")
        task = ray.remote(shard_unit).options(**options.resources(),
                                              max_retries=options.max_retries, **fault_env())

        def finished(number: int, result: dict[str, Any]) -> None:
            records[number] = result.pop("record")
            report.add(result)
            bar.advance(1)

        todo = [k for k in range(len(bounds)) if k not in records]
        run_units(todo, lambda k: task.remote(job_ref, k, bounds[k]), in_flight, finished,
                  "export shard")
        report.seconds = bar.finish()
        report.count_retries(job.out)
    remove_strays(job.out, len(bounds))
    log.info("export on Ray: %d shards on %d node(s), %d retried", report.units,
             len(report.by_node), len(report.retried))
    return [records[k] for k in range(len(bounds))], resumed, report.to_json()


def _plan_bounds(job: ExportJob, job_ref: Any, samples: int, capacity: int, in_flight: int,
                 options: RayOptions, progress: Progress) -> list[tuple[int, int]]:
    """The shards' ``(first, next)`` sample positions, cut as the in-order writer cuts."""
    import numpy as np
    import ray

    from pairmine.export.shards import StoppedAt, shard_bounds
    from pairmine.stores.export import Problem

    limits = job.limits
    if limits.bytes is None and not job.skip_missing:
        # only the sample count cuts; a sample with problems stops the export in its shard
        return [(s, min(s + limits.samples, samples)) for s in range(0, samples, limits.samples)]
    chunk = max(256, -(-samples // (SIZE_CHUNKS_PER_WORKER * capacity)))
    starts = list(range(0, samples, chunk))
    sizes = np.zeros(samples, dtype=np.int64)
    problems: dict[int, Any] = {}
    task = ray.remote(size_unit).options(**options.resources(),
                                         max_retries=options.max_retries)
    bar = UnitProgress(progress, "export sizes", len(starts), 0, "chunks")

    def sized(index: int, result: tuple[np.ndarray, dict[int, Any]]) -> None:
        lo = starts[index]
        sizes[lo:lo + len(result[0])] = result[0]
        problems.update(result[1])
        bar.advance(1)

    run_units(range(len(starts)),
              lambda i: task.remote(job_ref, starts[i], min(starts[i] + chunk, samples)),
              in_flight, sized, "export sizing chunk")
    bar.finish()
    try:
        return shard_bounds(sizes.tolist(), limits, skip_missing=job.skip_missing)
    except ValueError as stop:
        position = int(stop.args[0])
        raise StoppedAt(Problem(**problems[position][0]), position) from None
