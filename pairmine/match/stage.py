"""``match()``: check the inputs, lock the store, plan the tiles and the engine once, run the
tiles (here or on Ray, through ``pairmine.scale.executor``), assemble the blocks, cap, count,
write the manifest last, and say what was found."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import ConfigError, StoreError
from pairmine.match.cap import keep_best_per_image
from pairmine.match.config import MatchConfig
from pairmine.match.duplicates import hash_column, write_duplicates
from pairmine.match.manifest import pairs_manifest
from pairmine.match.plan import TILE_PLAN_FILE, MatchJob, draw_anchors
from pairmine.match.search import (
    assemble_group,
    collect_stats,
    engine_against,
    forget_inputs,
    match_tile,
)
from pairmine.match.stats import count_record, degrees, per_anchor
from pairmine.progress import NullProgress, Progress
from pairmine.stores import (
    DUPLICATES_FILE,
    MANIFEST,
    PAIRS_FORMAT,
    SUBSET_FILE,
    Embeddings,
    begin_run,
    input_record,
    open_embeddings,
    read_json,
    write_json_atomic,
    write_parquet_atomic,
)

DEFAULT_MEMORY_BUDGET = 2 << 30  # the engines' default (pairmine.engines.DEFAULT_MEMORY_BUDGET)

if TYPE_CHECKING:
    import numpy as np

    from pairmine.engines import Problem, Tile, TileShape
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
    bytes_read: int = 0  # vector bytes this run read: its tiles and the engine plan's sample
    tiles: int = 0  # tiles of the whole search
    tiles_run: int = 0  # tiles this run computed (the others were done before)


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
    resumes from its finished tiles and gives the same bytes; ``overwrite`` replaces a
    complete store.

    The work is done in tiles (a few blocks of anchors against a run of target rows, larger
    on a GPU), each reading only its rows; the engine's plan (rotation, margins) is fitted
    once, here, from a sample. ``ray`` (``"auto"``, ``"local"`` or a cluster address) computes
    the tiles as Ray tasks (``ray_workers`` at a time, each with
    ``gpus_per_worker``/``cpus_per_worker``, retried ``max_retries`` times); the store is
    byte-identical to one written without Ray. ``dry_run`` writes nothing: the result's
    ``unit_plan`` lists the tiles, the bytes each reads, the peak memory of a worker and a
    time estimate from one tile measured here (warm), with totals for the run.
    """
    config = MatchConfig.build(config, options)
    from pairmine.engines import default_block_rows, plan_blocks, resolve_engine

    t0 = time.perf_counter()
    progress = progress or NullProgress()
    emb, out = Path(emb), Path(out)

    # --- validate everything before OUT is touched (the store is opened by its manifest)
    plan = config.plan()
    _check_paths(emb, out)
    scale = config.ray_options()
    store = open_embeddings(emb)
    n = len(store)
    if n == 0:
        raise StoreError(f"embeddings store {emb} holds no images", "embed some images first")
    _check_store(store)
    anchors = draw_anchors(n, plan)
    if scale is not None and scale.gpus_per_worker > 0 and scale.address != "local":
        # the driver may have no GPU (a CPU-only head): "auto" means what a worker has
        from pairmine.scale.cluster import on_a_worker

        resolved = on_a_worker(scale, resolve_engine, plan.engine, plan.device)
    else:
        resolved = resolve_engine(plan.engine, plan.device)
    block_rows = plan.block_rows or default_block_rows()
    n_blocks = plan_blocks(n, anchors, block_rows)

    # --- the store: locked for this run; resumed only from a run with the same identity
    emb_record = input_record(emb)
    identity = {"config": plan.config(), "inputs": {"embeddings": emb_record},
                "engine": list(resolved), "blocks": n_blocks}
    job = MatchJob(emb=emb.absolute(), out=out.absolute(), plan=plan, resolved=resolved,
                   n_blocks=n_blocks, block_rows=block_rows,
                   emb_manifest_sha256=emb_record["manifest_sha256"],
                   memory_budget=DEFAULT_MEMORY_BUDGET)
    if dry_run:
        from pairmine.match.unitplan import plan_run

        workers = 1 if scale is None else (scale.workers or 1)
        unit_plan = plan_run(job, store, anchors, workers)
        return MatchResult(path=job.out, manifest={}, config=config, pairs=0, ordered=0,
                           band=(plan.min_score, plan.max_score),
                           anchors=n if anchors is None else len(anchors), images=n,
                           against=plan.against, anchors_with_pairs=0, duplicates=0,
                           engine=resolved[0], device=resolved[1], blocks=n_blocks,
                           seconds=time.perf_counter() - t0,
                           blocks_skipped=unit_plan["blocks_done"], unit_plan=unit_plan)
    with begin_run(out, PAIRS_FORMAT, identity, overwrite=overwrite) as run:
        return _run(run, config, job, store, anchors, identity, progress, t0, scale)


def prepare_tiles(job: MatchJob, store: Embeddings, anchors: np.ndarray | None
                  ) -> tuple[Problem, TileShape, int]:
    """The run's tile shape and engine plan, from the work folder when an earlier run wrote
    them (a resumed run keeps them), else chosen for the device and fitted here, once, from a
    seeded sample of rows; written to the work folder for every tile. Also returns the vector
    bytes the sample read."""
    from pairmine.engines import EnginePlan, TileShape, default_tile_shape, make_problem
    from pairmine.engines import plan_engine as fit_engine
    from pairmine.engines.band import Band

    job.block_dir.mkdir(parents=True, exist_ok=True)
    shape_file = job.block_dir / TILE_PLAN_FILE
    if shape_file.exists():
        shape = TileShape(**read_json(shape_file))
    else:
        shape = default_tile_shape(job.resolved[1], job.block_rows, store.dim,
                                   store.vectors.dtype.itemsize, job.memory_budget,
                                   job.plan.tile_rows)
        write_json_atomic(shape_file, shape.to_json())
    problem = make_problem(store.vectors, anchors, engine_against(job.plan), job.block_rows)
    engine_plan = EnginePlan.load(job.block_dir)
    if engine_plan is None:
        lo, hi = job.plan.search_range
        engine_plan = fit_engine(problem, Band.checked(lo, hi), *job.resolved,
                                 job.memory_budget)
        engine_plan.save(job.block_dir)
    sample_bytes = problem.reader.bytes_read
    problem = make_problem(store.vectors, anchors, engine_against(job.plan), job.block_rows,
                           engine_plan)
    return problem, shape, sample_bytes


def _run(run: Run, config: MatchConfig, job: MatchJob, store: Embeddings,
         anchors: np.ndarray | None, identity: dict[str, Any], progress: Progress, t0: float,
         scale: RayOptions | None) -> MatchResult:
    from pairmine.engines import plan_tiles
    from pairmine.scale.executor import execute

    out, plan = run.out, job.plan
    n = len(store)
    k = n if anchors is None else len(anchors)
    write_subset(out / SUBSET_FILE, anchors, n)

    # --- search, tile by tile (here, or as Ray tasks: the same unit function either way)
    t_search = time.perf_counter()
    forget_inputs()
    problem, shape, bytes_read = prepare_tiles(job, store, anchors)
    tiles = plan_tiles(problem, shape)
    groups: dict[int, list[Tile]] = {}
    for t in tiles:
        groups.setdefault(t.group, []).append(t)
    done_blocks = job.done_blocks()
    written = job.done_tiles()
    left: dict[int, int] = {}
    todo: list[Tile] = []
    skipped = 0
    for g, group in groups.items():
        group_blocks = range(group[0].anchor_start // job.block_rows,
                             -(-group[0].anchor_stop // job.block_rows))
        if all(b in done_blocks for b in group_blocks):
            skipped += len(group_blocks)
            continue
        missing = [t for t in group if job.tile_path(t.index).name not in written]
        if not missing:  # every tile written by an earlier run: assemble what it left
            assemble_group(job, group)
            continue
        left[g] = len(missing)
        todo.extend(missing)
    if skipped:
        log.info("resuming: %d of %d blocks already done", skipped, job.n_blocks)

    def finished(tile: Tile, result: dict[str, Any]) -> None:
        nonlocal bytes_read
        bytes_read += int(result.get("bytes_read", 0))
        left[tile.group] -= 1
        if left[tile.group] == 0:
            assemble_group(job, groups[tile.group])

    report = execute(todo, match_tile, job, scale, progress, stage="match", unit_label="tiles",
                     total=len(tiles), done=len(tiles) - len(todo), on_done=finished,
                     read=[job.emb], write=out, unit_name="match tile")
    cluster = None if report is None else report.to_json()
    stats = collect_stats(job)
    t_search = time.perf_counter() - t_search
    shards = job.final_shards()

    # --- optional cap per image, over the finished block shards
    t_cap = time.perf_counter()
    found = sum(s["band"] for s in stats)
    if plan.max_per_anchor is not None:  # the blocks wrote their shards aside: cap into place
        blocks = [job.shard_path(i) for i in range(job.n_blocks)]
        keep_best_per_image(blocks, shards, plan.max_per_anchor, progress)
    t_cap = time.perf_counter() - t_cap

    # --- duplicates, statistics, manifest
    t_dup = time.perf_counter()
    column = hash_column(store)
    n_dup, n_dup_groups = write_duplicates(out / DUPLICATES_FILE, store, anchors,
                                           plan.against, column)
    t_dup = time.perf_counter() - t_dup
    degree = degrees(shards, n, job.block_dir)  # (N,) positives per image, on disk
    anchor_stats = per_anchor(degree, anchors)
    counts = count_record(degree, anchors, found, n_dup, n_dup_groups)
    del degree
    unordered = counts["unordered"]
    timings = {"search_s": round(t_search, 3),
               "search_blocks_s": round(sum(s["seconds"] for s in stats), 3),
               "max_per_anchor_s": round(t_cap, 3), "duplicates_s": round(t_dup, 3),
               "total_s": round(time.perf_counter() - t0, 3)}
    manifest = pairs_manifest(job, identity["inputs"], images=n, hash_column=column,
                              stats=stats, counts=counts, per_anchor=anchor_stats,
                              timings=timings)
    run.finish(manifest)
    log.info("match: %d pairs (%d ordered) from %d anchors in %.1f s", unordered,
             2 * unordered, k, time.perf_counter() - t0)
    return MatchResult(path=out, manifest=read_json(out / MANIFEST), config=config,
                       pairs=unordered, ordered=2 * unordered,
                       band=(plan.min_score, plan.max_score), anchors=k, images=n,
                       against=plan.against, anchors_with_pairs=counts["anchors_with_pairs"],
                       duplicates=n_dup, engine=job.resolved[0], device=job.resolved[1],
                       blocks=job.n_blocks, seconds=time.perf_counter() - t0,
                       pairs_before_cap=None if plan.max_per_anchor is None else found,
                       per_anchor=anchor_stats, sweep=manifest["sweep"], resumed=run.resumed,
                       blocks_skipped=skipped, cluster=cluster, bytes_read=bytes_read,
                       tiles=len(tiles), tiles_run=len(todo))


def _check_paths(emb: Path, out: Path) -> None:
    e, o = emb.resolve(), out.resolve()
    if e == o or e in o.parents or o in e.parents:
        raise ConfigError(f"output {out} overlaps the embeddings store {emb}",
                          "write the pairs store to its own directory")


def _check_store(store: Embeddings) -> None:
    """Every shard's matrix is what the manifest says (its header only: O(shards), no row is
    read) and the vectors are float16/float32, what the engines take. Finite values are
    checked by each tile on the rows it reads: no pass over the whole store here."""
    import numpy as np

    if store.vectors.dtype not in (np.float16, np.float32):
        raise StoreError(f"embeddings store {store.path} holds {store.vectors.dtype} vectors",
                         "expected float16 or float32; re-run embed")
    for k in range(len(store.shards)):
        store.matrix(k)  # raises "is damaged: ..." for a shard that does not match


ID_CHUNK = 1 << 20  # rows of subset.parquet written at once (also Arrow's row group size)


def write_subset(path: Path, ids: np.ndarray | None, n: int) -> None:
    """``subset.parquet``: the anchors' ids; for every image, streamed in row groups of
    ``ID_CHUNK`` so that no O(N) array is built (the same bytes as one table of them)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pairmine.stores import atomic_path

    if ids is not None or n <= ID_CHUNK:
        all_ids = np.arange(n, dtype=np.int64) if ids is None else ids
        write_parquet_atomic(path, pa.table({"id": pa.array(all_ids, type=pa.int64())}))
        return
    schema = pa.schema([("id", pa.int64())])
    with atomic_path(path) as tmp, pq.ParquetWriter(
            tmp, schema, compression="zstd", write_statistics=True, store_schema=True) as writer:
        for s in range(0, n, ID_CHUNK):
            part = np.arange(s, min(s + ID_CHUNK, n), dtype=np.int64)
            writer.write_table(pa.table({"id": part}, schema=schema))
