"""``match()``: check the inputs, lock the store, search block by block, cap, count, write the
manifest last, and say what was found."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import ConfigError, StoreError
from pairmine.match.cap import keep_best_per_image
from pairmine.match.config import MatchConfig
from pairmine.match.duplicates import hash_codes, write_duplicates
from pairmine.match.manifest import pairs_manifest
from pairmine.match.plan import BlockJob, SearchInputs, engine_anchors
from pairmine.match.search import search_here
from pairmine.match.stats import count_record, degrees, distribution
from pairmine.progress import NullProgress, Progress
from pairmine.stores import (
    DUPLICATES_FILE,
    MANIFEST,
    PAIRS_FORMAT,
    SUBSET_FILE,
    Embeddings,
    begin_run,
    draw_subset,
    input_record,
    open_embeddings,
    read_json,
    write_parquet_atomic,
)

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from pairmine.scale import RayOptions
    from pairmine.stores import Run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MatchResult:
    """What a match run produced; ``manifest`` is the store's full manifest, ``config`` the
    options it ran with."""

    path: Path
    manifest: dict[str, Any]
    config: MatchConfig
    pairs: int  # unordered pairs {a, b}, stored once
    ordered: int  # Algorithm 1's count: both (a, b) and (b, a)
    band: tuple[float, float]  # [min, max], both inclusive
    anchors: int
    images: int  # the store's images, the anchors' population
    against: str  # "subset" (Algorithm 1) or "all"
    anchors_with_pairs: int
    duplicates: int
    engine: str
    device: str  # the device the engine ran on
    blocks: int
    seconds: float
    pairs_before_cap: int | None = None  # with max_per_anchor: the band's pairs before the cap
    per_anchor: dict[str, float] = field(default_factory=dict)
    sweep: dict[str, Any] | None = None
    resumed: bool = False
    blocks_skipped: int = 0
    cluster: dict[str, Any] | None = None  # with Ray: units per node, retried units, nodes
    unit_plan: dict[str, Any] | None = None  # a dry run's plan (nothing was written)


def match(emb: str | Path, out: str | Path, config: MatchConfig | None = None, *,
          overwrite: bool = False, progress: Progress | None = None, dry_run: bool = False,
          **options: Any) -> MatchResult:
    """Find all pairs of the store ``emb`` scoring in ``[min_score, max_score]``; write ``out``.

    ``config`` holds the options (:class:`MatchConfig`); the same fields may be given as
    keyword arguments instead or on top (``match(emb, out, min_score=0.9)`` is
    ``match(emb, out, MatchConfig(min_score=0.9))``); an unknown one is a ``ConfigError``.
    ``subset`` is the paper's K (a fraction or a count, drawn with ``seed``); ``against`` is
    ``"subset"`` (Algorithm 1: subset x subset) or ``"all"`` (subset anchors x every image).
    ``max_per_anchor`` keeps each image's K best positives (a pair stays when either end keeps
    it). ``sweep`` (``"LO:HI:STEP"``) also counts pairs for every band on that grid.
    ``wide_histogram`` widens the one search to ``[min - 0.05, 1.0]`` so that the score
    histogram shows the scores near the band (exact, at a measured cost). An interrupted run
    resumes from its finished blocks and gives the same bytes; ``overwrite`` replaces a
    complete store.

    ``ray`` (``"auto"``, ``"local"`` or a cluster address) computes the blocks as Ray tasks
    (``ray_workers`` at a time, each with ``gpus_per_worker``/``cpus_per_worker``, retried
    ``max_retries`` times); the store is byte-identical to one written without Ray.
    ``dry_run`` writes nothing: the result's ``unit_plan`` lists the blocks to compute, the
    bytes each reads and a time estimate from one block measured here.
    """
    config = MatchConfig.build(config, options)
    from pairmine.engines import plan_blocks, resolve_engine

    t0 = time.perf_counter()
    progress = progress or NullProgress()
    emb, out = Path(emb), Path(out)

    # --- validate everything before OUT is touched
    plan = config.plan()
    _check_paths(emb, out)
    scale = config.ray_options()
    store = open_embeddings(emb)
    n = len(store)
    if n == 0:
        raise StoreError(f"embeddings store {emb} holds no images", "embed some images first")
    _check_store(store)
    anchors = draw_subset(n, plan.subset, plan.seed)
    if scale is not None and scale.gpus_per_worker > 0 and scale.address != "local":
        # the driver may have no GPU (a CPU-only head): "auto" means what a worker has
        from pairmine.scale.cluster import on_a_worker

        resolved = on_a_worker(scale, resolve_engine, plan.engine, plan.device)
    else:
        resolved = resolve_engine(plan.engine, plan.device)
    codes, hash_column = hash_codes(store)
    n_blocks = plan_blocks(n, engine_anchors(anchors, n), plan.block_rows)

    # --- the store: locked for this run; resumed only from a run with the same identity
    emb_record = input_record(emb)
    identity = {"config": plan.config(), "inputs": {"embeddings": emb_record},
                "engine": list(resolved), "blocks": n_blocks}
    job = BlockJob(emb=emb.absolute(), out=out.absolute(), plan=plan, resolved=resolved,
                   n_blocks=n_blocks, emb_manifest_sha256=emb_record["manifest_sha256"])
    inputs = SearchInputs(store, anchors, codes)
    if dry_run:
        return _dry_run(config, job, inputs, scale, t0)
    with begin_run(out, PAIRS_FORMAT, identity, overwrite=overwrite) as run:
        return _run(run, config, job, inputs, hash_column, identity, progress, t0, scale)


def _dry_run(config: MatchConfig, job: BlockJob, inputs: SearchInputs,
             scale: RayOptions | None, t0: float) -> MatchResult:
    from pairmine.scale.match import plan_blocks_run

    workers = 1 if scale is None else (scale.workers or 1)
    unit_plan = plan_blocks_run(job, inputs, workers)
    plan = job.plan
    return MatchResult(path=job.out, manifest={}, config=config, pairs=0, ordered=0,
                       band=(plan.min_score, plan.max_score), anchors=len(inputs.anchors),
                       images=len(inputs.store), against=plan.against, anchors_with_pairs=0,
                       duplicates=0, engine=job.resolved[0], device=job.resolved[1],
                       blocks=job.n_blocks, seconds=time.perf_counter() - t0,
                       blocks_skipped=unit_plan.done, unit_plan=unit_plan.to_json())


def _run(run: Run, config: MatchConfig, job: BlockJob, inputs: SearchInputs,
         hash_column: str | None, identity: dict[str, Any], progress: Progress, t0: float,
         scale: RayOptions | None) -> MatchResult:
    out, plan = run.out, job.plan
    store, anchors, n = inputs.store, inputs.anchors, len(inputs.store)
    write_parquet_atomic(out / SUBSET_FILE, _id_table(anchors))

    # --- search, block by block (here, or as Ray tasks: the same unit function either way)
    t_search = time.perf_counter()
    cluster: dict[str, Any] | None = None
    if scale is None:
        stats, skipped = search_here(job, inputs, progress)
    else:
        from pairmine.scale.match import search_on_ray

        stats, skipped, cluster = search_on_ray(job, scale, progress)
    t_search = time.perf_counter() - t_search
    shards = job.final_shards()

    # --- optional cap per image, over the finished block shards
    t_cap = time.perf_counter()
    found = sum(s["band"] for s in stats)
    if plan.max_per_anchor is not None:  # the blocks wrote their shards aside: cap into place
        blocks = [job.shard_path(i) for i in range(job.n_blocks)]
        keep_best_per_image(blocks, shards, n, plan.max_per_anchor, progress)
    t_cap = time.perf_counter() - t_cap

    # --- duplicates, statistics, manifest
    t_dup = time.perf_counter()
    n_dup, n_dup_groups = write_duplicates(out / DUPLICATES_FILE, store, inputs.codes, anchors,
                                           plan.against, hash_column)
    t_dup = time.perf_counter() - t_dup
    degree = degrees(shards, n)  # (N,) positives per image
    per_anchor = distribution(degree[anchors])
    counts = count_record(degree, anchors, found, n_dup, n_dup_groups)
    unordered = counts["unordered"]
    timings = {"search_s": round(t_search, 3),
               "search_blocks_s": round(sum(s["seconds"] for s in stats), 3),
               "max_per_anchor_s": round(t_cap, 3), "duplicates_s": round(t_dup, 3),
               "total_s": round(time.perf_counter() - t0, 3)}
    manifest = pairs_manifest(job, identity["inputs"], images=n, hash_column=hash_column,
                              stats=stats, counts=counts, per_anchor=per_anchor,
                              timings=timings)
    run.finish(manifest)
    log.info("match: %d pairs (%d ordered) from %d anchors in %.1f s", unordered,
             2 * unordered, len(anchors), time.perf_counter() - t0)
    return MatchResult(path=out, manifest=read_json(out / MANIFEST), config=config,
                       pairs=unordered, ordered=2 * unordered,
                       band=(plan.min_score, plan.max_score), anchors=len(anchors), images=n,
                       against=plan.against, anchors_with_pairs=counts["anchors_with_pairs"],
                       duplicates=n_dup, engine=job.resolved[0], device=job.resolved[1],
                       blocks=job.n_blocks, seconds=time.perf_counter() - t0,
                       pairs_before_cap=None if plan.max_per_anchor is None else found,
                       per_anchor=per_anchor, sweep=manifest["sweep"], resumed=run.resumed,
                       blocks_skipped=skipped, cluster=cluster)


def _check_paths(emb: Path, out: Path) -> None:
    e, o = emb.resolve(), out.resolve()
    if e == o or e in o.parents or o in e.parents:
        raise ConfigError(f"output {out} overlaps the embeddings store {emb}",
                          "write the pairs store to its own directory")


def _check_store(store: Embeddings) -> None:
    """Ids are the rows, vectors are float16/float32 and finite: what the engines assume."""
    import numpy as np

    ids = store.meta.column("id").to_numpy(zero_copy_only=False)
    if not np.array_equal(ids, np.arange(len(store))):
        raise StoreError(f"embeddings store {store.path}: meta ids are not the rows 0..N-1",
                         "the store is damaged; re-run embed with --overwrite")
    if store.vectors.dtype not in (np.float16, np.float32):
        raise StoreError(f"embeddings store {store.path} holds {store.vectors.dtype} vectors",
                         "expected float16 or float32; re-run embed")
    step = 1 << 16
    for i in range(0, len(store), step):  # chunked: the matrix may be a memory map
        if not np.isfinite(store.vectors[i:i + step]).all():
            raise StoreError(f"embeddings store {store.path} holds NaN or infinite vectors "
                             f"(rows {i}..{min(i + step, len(store)) - 1})",
                             "re-run embed; check the encoder's checkpoint")


def _id_table(ids: np.ndarray) -> pa.Table:
    import pyarrow as pa

    return pa.table({"id": pa.array(ids, type=pa.int64())})
