"""The match stage: every pair of different images whose embeddings score in ``[min, max]``.

reader (an embeddings store) → band search, block by block (``pairmine.engines``) → writer (one
pair shard per block; a block's shard is renamed into place last, so its presence marks the
block done and an interrupted run resumes where it stopped) → ``manifest.json`` last.

Algorithm 1 of the paper (``sim = E_K @ E_K.T``, keep ``Min <= sim <= Max``) with its K subset
drawn by a seeded generator. A pair ``{a, b}`` is stored once with ``a < b``; Algorithm 1 lists
both orders, so the ordered count is twice the unordered one. Images with the same content hash
are never a pair: they go to ``duplicates.parquet``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import ConfigError, StoreError
from pairmine.progress import NullProgress, Progress
from pairmine.stores import (
    DUPLICATES_FILE,
    MANIFEST,
    PAIRS_DIR,
    PAIRS_FORMAT,
    PAIRS_SCHEMA,
    PARTIAL_DIR,
    SUBSET_FILE,
    Embeddings,
    begin_run,
    check_seed,
    content_codes,
    draw_subset,
    input_record,
    open_embeddings,
    parse_subset,
    read_json,
    shard_name,
    write_json_atomic,
    write_parquet_atomic,
)

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from pairmine.scale import RayOptions
    from pairmine.stores import Run

log = logging.getLogger(__name__)

AGAINST = ("subset", "all")
# The score histogram has HIST_WIDTH-wide bins over the range the one search covers: the band,
# or with wide_histogram [min - HIST_MARGIN, 1.0], or the sweep's grid. Widening is opt-in:
# on CIFAR-10 ResNet-20 features it put 56x more pairs in range and made the search 3.4x
# slower (docs/matching.md, "The match stage").
HIST_WIDTH = 0.005
HIST_MARGIN = 0.05
MAX_SWEEP_POINTS = 201
_BLOCKS = "blocks"  # under PARTIAL_DIR: per-block statistics (and shards before --max-per-anchor)
_ENGINE_FILE = "engine.json"  # under blocks/: the engine's plan, as the first block saw it
_RUNNING_INFO = ("candidates", "pairs")  # engine info that counts this run only, not the store


# ---------------------------------------------------------------------------------------------
# the run's plan: every option checked and resolved before anything is written


@dataclass(frozen=True)
class Sweep:
    """Pair counts for every band ``[m, M]`` with ``m < M`` on one grid, from one search."""

    grid: tuple[float, ...]

    @classmethod
    def parse(cls, spec: str | Sequence[float]) -> Sweep:
        """``"LO:HI:STEP"`` (e.g. ``0.90:1.0:0.01``) or ``(lo, hi, step)``."""
        parts: Sequence[Any] = spec.split(":") if isinstance(spec, str) else spec
        try:
            lo, hi, step = (float(p) for p in parts)
        except (TypeError, ValueError):
            raise ConfigError(f"--sweep {spec!r} is not LO:HI:STEP",
                              "e.g. --sweep 0.90:1.0:0.01") from None
        if not (-1.0 <= lo < hi <= 1.0) or not step > 0:
            raise ConfigError(f"--sweep {spec!r} needs -1 <= LO < HI <= 1 and STEP > 0",
                              "e.g. --sweep 0.90:1.0:0.01")
        n = round((hi - lo) / step)
        if n < 1 or abs(lo + n * step - hi) > 1e-9:
            raise ConfigError(f"--sweep {spec!r}: HI - LO is not a multiple of STEP",
                              "e.g. --sweep 0.90:1.0:0.01")
        if n + 1 > MAX_SWEEP_POINTS:
            raise ConfigError(f"--sweep {spec!r} has {n + 1} grid points "
                              f"(at most {MAX_SWEEP_POINTS})", "use a coarser STEP")
        # rounded so that 0.9 + 7 * 0.01 is 0.97, the bound a user types
        return cls(tuple(round(lo + k * step, 10) for k in range(n + 1)))


@dataclass(frozen=True)
class _Plan:
    min_score: float
    max_score: float
    subset: int | float | None
    seed: int
    against: str
    max_per_anchor: int | None
    engine: str
    device: str
    sweep: Sweep | None
    wide_histogram: bool
    block_rows: int | None

    @property
    def search_range(self) -> tuple[float, float]:
        """The one band the engine searches: the pair band, widened for the histogram and the
        sweep; pairs are then filtered to ``[min, max]``. The histogram covers all of it."""
        lo, hi = self.min_score, self.max_score
        if self.wide_histogram:
            lo, hi = max(-1.0, self.min_score - HIST_MARGIN), 1.0
        if self.sweep is not None:
            lo, hi = min(lo, self.sweep.grid[0]), max(hi, self.sweep.grid[-1])
        return lo, hi

    def hist_edges(self) -> list[float]:
        lo, hi = self.search_range
        n = max(1, math.ceil((hi - lo) / HIST_WIDTH - 1e-9))
        return [round(lo + k * HIST_WIDTH, 10) for k in range(n)] + [hi]

    def config(self) -> dict[str, Any]:
        return {"min": self.min_score, "max": self.max_score, "subset": self.subset,
                "seed": self.seed, "against": self.against,
                "max_per_anchor": self.max_per_anchor, "engine": self.engine,
                "device": self.device,
                "sweep": None if self.sweep is None else list(self.sweep.grid),
                "wide_histogram": self.wide_histogram, "block_rows": self.block_rows}


def _check_band(min_score: float, max_score: float) -> None:
    for name, v in (("--min", min_score), ("--max", max_score)):
        if not (isinstance(v, int | float) and -1.0 <= float(v) <= 1.0):
            raise ConfigError(f"{name} {v} is outside [-1, 1]",
                              "scores are cosines of unit vectors; e.g. --min 0.97 --max 0.99")
    if min_score > max_score:
        raise ConfigError(f"--min {min_score} is greater than --max {max_score}",
                          "the band is [min, max], both inclusive; e.g. --min 0.97 --max 0.99")


# ---------------------------------------------------------------------------------------------
# result


@dataclass(frozen=True)
class MatchResult:
    """What a match run produced; ``manifest`` is the store's full manifest."""

    path: Path
    manifest: dict[str, Any]
    pairs: int  # unordered pairs {a, b}, stored once
    ordered: int  # Algorithm 1's count: both (a, b) and (b, a)
    anchors: int
    anchors_with_pairs: int
    duplicates: int
    engine: str
    seconds: float
    per_anchor: dict[str, float] = field(default_factory=dict)
    sweep: dict[str, Any] | None = None
    resumed: bool = False
    blocks_skipped: int = 0
    cluster: dict[str, Any] | None = None  # with Ray: units per node, retried units, nodes
    unit_plan: dict[str, Any] | None = None  # a dry run's plan (nothing was written)


# ---------------------------------------------------------------------------------------------
# the stage


def match(emb: str | Path, out: str | Path, *, min_score: float = 0.97,
          max_score: float = 0.99, subset: str | int | float | None = None, seed: int = 0,
          against: str = "subset", max_per_anchor: int | None = None, engine: str = "auto",
          device: str = "auto", sweep: str | Sequence[float] | None = None,
          wide_histogram: bool = False, block_rows: int | None = None, overwrite: bool = False,
          progress: Progress | None = None, ray: str | None = None,
          ray_workers: int | None = None, gpus_per_worker: float = 0.0,
          cpus_per_worker: float = 1.0, max_retries: int = 3,
          dry_run: bool = False) -> MatchResult:
    """Find all pairs of the store ``emb`` scoring in ``[min_score, max_score]``; write ``out``.

    ``subset`` is the paper's K (a fraction or a count, drawn with ``seed``); ``against`` is
    ``"subset"`` (Algorithm 1: subset x subset) or ``"all"`` (subset anchors x every image).
    ``max_per_anchor`` keeps each image's K best positives (a pair stays when either end keeps
    it). ``sweep`` (``"LO:HI:STEP"``) also counts pairs for every band on that grid.
    ``wide_histogram`` widens the one search to ``[min - 0.05, 1.0]`` so that the score
    histogram shows the scores near the band (exact, at a measured cost). An interrupted run
    resumes from its finished blocks and gives the same bytes.

    ``ray`` (``"auto"``, ``"local"`` or a cluster address) computes the blocks as Ray tasks
    (``ray_workers`` at a time, each with ``gpus_per_worker``/``cpus_per_worker``, retried
    ``max_retries`` times); the store is byte-identical to one written without Ray.
    ``dry_run`` writes nothing: the result's ``unit_plan`` lists the blocks to compute, the
    bytes each reads and a time estimate from one block measured here.
    """
    from pairmine.engines import plan_blocks, resolve_engine

    t0 = time.perf_counter()
    progress = progress or NullProgress()
    emb, out = Path(emb), Path(out)

    # --- validate everything before OUT is touched
    _check_band(min_score, max_score)
    if against not in AGAINST:
        raise ConfigError(f"--against {against!r} is not one of {', '.join(AGAINST)}",
                          "subset: the subset against itself (Algorithm 1); all: every image")
    if max_per_anchor is not None and (isinstance(max_per_anchor, bool)
                                       or not isinstance(max_per_anchor, int)
                                       or max_per_anchor < 1):
        raise ConfigError(f"--max-per-anchor {max_per_anchor} is not an integer >= 1")
    if block_rows is not None and block_rows < 1:
        raise ConfigError(f"--block-rows {block_rows} is not an integer >= 1")
    plan = _Plan(min_score=float(min_score), max_score=float(max_score),
                 subset=parse_subset(subset), seed=check_seed(seed), against=against,
                 max_per_anchor=max_per_anchor, engine=engine, device=device,
                 sweep=None if sweep is None else Sweep.parse(sweep), wide_histogram=wide_histogram,
                 block_rows=block_rows)
    _check_paths(emb, out)
    scale = None
    if ray is not None:
        from pairmine.scale import RayOptions

        scale = RayOptions(address=ray, workers=ray_workers, gpus_per_worker=gpus_per_worker,
                           cpus_per_worker=cpus_per_worker, max_retries=max_retries).checked()
    store = open_embeddings(emb)
    n = len(store)
    if n == 0:
        raise StoreError(f"embeddings store {emb} holds no images", "embed some images first")
    _check_store(store)
    anchors = draw_subset(n, plan.subset, plan.seed)
    if scale is not None and scale.gpus_per_worker > 0 and scale.address != "local":
        # the driver may have no GPU (a CPU-only head): "auto" means what a worker has
        from pairmine.scale.cluster import on_a_worker

        resolved = on_a_worker(scale, resolve_engine, engine, device)
    else:
        resolved = resolve_engine(engine, device)
    codes, hash_column = _hash_codes(store)
    n_blocks = plan_blocks(n, _engine_anchors(anchors, n), block_rows)

    # --- the store: locked for this run; resumed only from a run with the same identity
    emb_record = input_record(emb)
    identity = {"config": plan.config(), "inputs": {"embeddings": emb_record},
                "engine": list(resolved), "blocks": n_blocks}
    job = BlockJob(emb=emb.absolute(), out=out.absolute(), plan=plan, resolved=resolved,
                   n_blocks=n_blocks, emb_manifest_sha256=emb_record["manifest_sha256"])
    if dry_run:
        return _dry_run(job, SearchInputs(store, anchors, codes), scale, t0)
    with begin_run(out, PAIRS_FORMAT, identity, overwrite=overwrite) as run:
        return _run(run, job, SearchInputs(store, anchors, codes), hash_column, identity,
                    progress, t0, scale)


def _dry_run(job: BlockJob, inputs: SearchInputs, scale: RayOptions | None,
             t0: float) -> MatchResult:
    from pairmine.scale.match import plan_blocks_run

    workers = 1 if scale is None else (scale.workers or 1)
    unit_plan = plan_blocks_run(job, inputs, workers)
    return MatchResult(path=job.out, manifest={}, pairs=0, ordered=0, anchors=len(inputs.anchors),
                       anchors_with_pairs=0, duplicates=0, engine=job.resolved[0],
                       seconds=time.perf_counter() - t0, blocks_skipped=unit_plan.done,
                       unit_plan=unit_plan.to_json())


def _run(run: Run, job: BlockJob, inputs: SearchInputs, hash_column: str | None,
         identity: dict[str, Any], progress: Progress, t0: float,
         scale: RayOptions | None) -> MatchResult:
    out, resumed = run.out, run.resumed
    store, anchors, codes, n = inputs.store, inputs.anchors, inputs.codes, len(inputs.store)
    plan, resolved, n_blocks, block_rows = job.plan, job.resolved, job.n_blocks, job.plan.block_rows
    write_parquet_atomic(out / SUBSET_FILE, _id_table(anchors))

    # --- search, block by block (here, or as Ray tasks: the same unit function either way)
    t_search = time.perf_counter()
    block_dir = job.block_dir
    cluster: dict[str, Any] | None = None
    if scale is None:
        stats, skipped = _search(job, inputs, progress)
    else:
        from pairmine.scale.match import search_on_ray

        stats, skipped, cluster = search_on_ray(job, scale, progress)
    t_search = time.perf_counter() - t_search
    shards = [out / PAIRS_DIR / shard_name("pairs", i, ".parquet") for i in range(n_blocks)]

    # --- optional cap per image, over the finished block shards
    t_cap = time.perf_counter()
    found = sum(s["band"] for s in stats)
    if plan.max_per_anchor is not None:
        blocks = [block_dir / shard_name("pairs", i, ".parquet") for i in range(n_blocks)]
        _cap_per_image(blocks, shards, n, plan.max_per_anchor, progress)
    t_cap = time.perf_counter() - t_cap

    # --- duplicates, statistics, manifest
    t_dup = time.perf_counter()
    n_dup, n_dup_groups = _write_duplicates(out / DUPLICATES_FILE, store, codes, anchors,
                                            plan.against, hash_column)
    t_dup = time.perf_counter() - t_dup
    degree = _degrees(shards, n)
    per_anchor = _distribution(degree[anchors])
    unordered = int(degree.sum()) // 2
    counts = {"unordered": unordered, "ordered": 2 * unordered,
              "unordered_before_max_per_anchor": found,
              "anchors": len(anchors),
              "anchors_with_pairs": int((degree[anchors] > 0).sum()),
              "images_with_pairs": int((degree > 0).sum()),
              "duplicates": n_dup, "duplicate_groups": n_dup_groups}
    lo, hi = plan.search_range
    engine_plan = read_json(block_dir / _ENGINE_FILE)
    manifest: dict[str, Any] = {
        "format": PAIRS_FORMAT,
        "inputs": identity["inputs"],
        "config": plan.config(),
        "min": plan.min_score,
        "max": plan.max_score,
        "shards": [f"{PAIRS_DIR}/{p.name}" for p in shards],
        "duplicates": {"file": DUPLICATES_FILE, "hash_column": hash_column, "pairs": n_dup,
                       "groups": n_dup_groups},
        "subset": {"file": SUBSET_FILE, "count": len(anchors), "of": n, "seed": plan.seed,
                   "requested": plan.subset, "against": plan.against},
        "engine": {"name": resolved[0], "device": resolved[1], **engine_plan},
        "search": {"lo": lo, "hi": hi, "blocks": n_blocks,
                   "block_rows": engine_plan.get("block_rows", block_rows),
                   "candidates": sum(s["candidates"] for s in stats),
                   "pairs_in_range": sum(s["found"] for s in stats)},
        "counts": counts,
        "per_anchor": per_anchor,
        "histogram": _histogram_record(plan, stats),
        "sweep": _sweep_record(plan, stats),
        "timings": {"search_s": round(t_search, 3),
                    "search_blocks_s": round(sum(s["seconds"] for s in stats), 3),
                    "max_per_anchor_s": round(t_cap, 3), "duplicates_s": round(t_dup, 3),
                    "total_s": round(time.perf_counter() - t0, 3)},
    }
    run.finish(manifest)
    log.info("match: %d pairs (%d ordered) from %d anchors in %.1f s", unordered,
             2 * unordered, len(anchors), time.perf_counter() - t0)
    return MatchResult(path=out, manifest=read_json(out / MANIFEST), pairs=unordered,
                       ordered=2 * unordered, anchors=len(anchors),
                       anchors_with_pairs=counts["anchors_with_pairs"], duplicates=n_dup,
                       engine=resolved[0],
                       seconds=time.perf_counter() - t0, per_anchor=per_anchor,
                       sweep=manifest["sweep"], resumed=resumed, blocks_skipped=skipped,
                       cluster=cluster)


def _check_paths(emb: Path, out: Path) -> None:
    e, o = emb.resolve(), out.resolve()
    if e == o or e in o.parents or o in e.parents:
        raise ConfigError(f"output {out} overlaps the embeddings store {emb}",
                          "write the pairs store to its own directory")


def _check_store(store: Embeddings) -> None:
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


def _engine_anchors(anchors: np.ndarray, n: int) -> np.ndarray | None:
    # the whole store needs no id list: the engine may take its faster all-rows path
    return None if len(anchors) == n else anchors


def _id_table(ids: np.ndarray) -> pa.Table:
    import pyarrow as pa

    return pa.table({"id": pa.array(ids, type=pa.int64())})


# ---------------------------------------------------------------------------------------------
# content hashes: equal hashes are duplicates, never pairs


def _hash_codes(store: Embeddings) -> tuple[np.ndarray, str | None]:
    codes, column = content_codes(store.meta)
    if column is None:
        log.warning("embeddings store %s has no content hash column: duplicates are not "
                    "detected", store.path)
    return codes, column


def _duplicate_groups(codes: np.ndarray, members: np.ndarray) -> Iterator[np.ndarray]:
    """Sorted ids of each group of ``members`` that share a code, groups of 2 or more."""
    import numpy as np

    order = np.lexsort((members, codes[members]))
    ids, cs = members[order], codes[members][order]
    starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    for s, e in zip(starts, ends, strict=True):
        if e - s > 1:
            yield ids[s:e]


def _write_duplicates(path: Path, store: Embeddings, codes: np.ndarray, anchors: np.ndarray,
                      against: str, column: str | None) -> tuple[int, int]:
    """``duplicates.parquet`` (a, b, sha256; a < b): every pair with equal content hash among
    the pairs the search considers (both in the subset, or one of them with --against all).
    Streamed in batches so that one huge group of identical images cannot exhaust memory."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pairmine.stores import atomic_path

    schema = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("sha256", pa.string())])
    n = len(store)
    is_anchor = np.zeros(n, dtype=bool)
    is_anchor[anchors] = True
    members = anchors if against == "subset" else np.arange(n, dtype=np.int64)
    hashes = store.meta.column(column) if column is not None else None
    total = groups = 0
    batch: list[tuple[np.ndarray, np.ndarray]] = []
    batch_rows = 0
    with atomic_path(path) as tmp:
        writer = pq.ParquetWriter(tmp, schema, compression="zstd", write_statistics=True,
                                  store_schema=True)
        try:
            def flush() -> None:
                nonlocal batch, batch_rows
                if batch:
                    a = np.concatenate([x for x, _ in batch])
                    b = np.concatenate([y for _, y in batch])
                    assert hashes is not None
                    h = hashes.take(pa.array(a))
                    writer.write_table(pa.table({"a": a, "b": b, "sha256": h}, schema=schema))
                batch, batch_rows = [], 0

            if hashes is not None:
                for ids in _duplicate_groups(codes, members):
                    ia, ib = np.triu_indices(len(ids), k=1)
                    a, b = ids[ia], ids[ib]
                    if against == "all":  # only pairs the search would have considered
                        keep = is_anchor[a] | is_anchor[b]
                        a, b = a[keep], b[keep]
                    if len(a) == 0:
                        continue
                    groups += 1
                    total += len(a)
                    batch.append((a, b))
                    batch_rows += len(a)
                    if batch_rows >= 1 << 20:
                        flush()
                flush()
            if total == 0:
                writer.write_table(schema.empty_table())
        finally:
            writer.close()
    return total, groups


# ---------------------------------------------------------------------------------------------
# the search


@dataclass(frozen=True)
class BlockJob:
    """Everything computing any block of one match run needs, as paths and options (small and
    picklable: a Ray task gets this, never the matrix). A block is done when its statistics
    and then its pair shard exist (the shard is renamed into place last)."""

    emb: Path
    out: Path
    plan: _Plan
    resolved: tuple[str, str]
    n_blocks: int
    emb_manifest_sha256: str

    @property
    def block_dir(self) -> Path:
        return self.out / PARTIAL_DIR / _BLOCKS

    @property
    def shard_dir(self) -> Path:
        # with --max-per-anchor the block shards are an intermediate, capped afterwards
        return self.block_dir if self.plan.max_per_anchor is not None else self.out / PAIRS_DIR

    def stats_path(self, i: int) -> Path:
        return self.block_dir / shard_name("block", i, ".json")

    def shard_path(self, i: int) -> Path:
        return self.shard_dir / shard_name("pairs", i, ".parquet")

    def done_blocks(self) -> set[int]:
        return {i for i in range(self.n_blocks)
                if self.shard_path(i).exists() and self.stats_path(i).exists()}


@dataclass(frozen=True)
class SearchInputs:
    """The opened inputs of a search: the (memory-mapped) store, the anchors, content codes."""

    store: Embeddings
    anchors: np.ndarray
    codes: np.ndarray

    @classmethod
    def open(cls, job: BlockJob) -> SearchInputs:
        """Open the inputs from the job's paths (a worker), checking they are the run's."""
        from pairmine.stores import sha256_file

        found = sha256_file(job.emb / MANIFEST)
        if found != job.emb_manifest_sha256:
            raise StoreError(f"the embeddings store {job.emb} changed since this match run "
                             "started", "rerun match; one store must not be rewritten during "
                                        "a run")
        store = open_embeddings(job.emb)
        codes, _ = content_codes(store.meta)
        return cls(store, draw_subset(len(store), job.plan.subset, job.plan.seed), codes)


BlockDone = Callable[[int, dict[str, Any]], None]


def plan_units(job: BlockJob) -> tuple[list[int], set[int]]:
    """The blocks still to compute, in order (consecutive units share their anchor rows'
    neighbourhood), and those an earlier run finished."""
    done = job.done_blocks()
    return [i for i in range(job.n_blocks) if i not in done], done


def run_blocks(job: BlockJob, inputs: SearchInputs, indices: Sequence[int],
               on_block: BlockDone | None = None, progress: Progress | None = None) -> None:
    """Compute and write the blocks ``indices``: the one unit of the match stage, run in this
    process or in a Ray task. Each block writes its statistics, then its shard (last).
    ``progress`` gets the engine's own report (comparisons)."""
    from pairmine.engines import band_search

    plan = job.plan
    wanted = set(indices)
    if not wanted:
        return
    lo, hi = plan.search_range
    edges = plan.hist_edges()
    engine_file = job.block_dir / _ENGINE_FILE
    search = band_search(inputs.store.vectors, lo, hi,
                         anchors=_engine_anchors(inputs.anchors, len(inputs.store)),
                         against="anchors" if plan.against == "subset" else "all",
                         engine=job.resolved[0], device=job.resolved[1],
                         block_rows=plan.block_rows,
                         skip_blocks=frozenset(set(range(job.n_blocks)) - wanted),
                         progress=progress)
    try:
        t = time.perf_counter()
        for block in search:
            if block.index not in wanted:
                continue
            s, table = _block_result(block, inputs.codes, plan, edges)
            s["seconds"] = round(time.perf_counter() - t, 4)
            if not engine_file.exists():
                # the engine's plan (pruning, margins) as the first computed block saw it: a
                # resumed run that computes nothing still records it
                write_json_atomic(engine_file, {k: v for k, v in search.info.items()
                                                if k not in _RUNNING_INFO})
            write_json_atomic(job.stats_path(block.index), s)
            write_parquet_atomic(job.shard_path(block.index), table)  # last: marks it done
            if on_block is not None:
                on_block(block.index, s)
            t = time.perf_counter()
    finally:
        search.close()


def _search(job: BlockJob, inputs: SearchInputs,
            progress: Progress) -> tuple[list[dict[str, Any]], int]:
    """Run the engine over the blocks not yet done; return every block's statistics."""
    todo, done = plan_units(job)
    stats: dict[int, dict[str, Any]] = {i: read_json(job.stats_path(i)) for i in sorted(done)}
    pairs_so_far = sum(s["band"] for s in stats.values())
    progress.start("match", total=job.n_blocks, unit="blocks")
    if done:
        log.info("resuming: %d of %d blocks already done", len(done), job.n_blocks)
        progress.advance(len(done), pairs=pairs_so_far)

    def finished(index: int, s: dict[str, Any]) -> None:
        nonlocal pairs_so_far
        stats[index] = s
        pairs_so_far += s["band"]
        progress.advance(1, pairs=pairs_so_far)

    run_blocks(job, inputs, todo, finished)
    progress.finish()
    return collect_stats(job, stats), len(done)


def collect_stats(job: BlockJob, known: dict[int, dict[str, Any]] | None = None
                  ) -> list[dict[str, Any]]:
    """Every block's statistics, after checking that every block is done."""
    missing = sorted(set(range(job.n_blocks)) - job.done_blocks())
    if missing:
        raise RuntimeError(f"the engine did not return blocks {missing[:5]} of {job.n_blocks}")
    known = known or {}
    return [known[i] if i in known else read_json(job.stats_path(i))
            for i in range(job.n_blocks)]


def _block_result(block: Any, codes: np.ndarray, plan: _Plan,
                  edges: list[float]) -> tuple[dict[str, Any], pa.Table]:
    """Filter one engine block: drop duplicates, histogram and sweep over the searched range,
    keep the band. Engines yield a block sorted by (a, b) whatever their threading, so a
    shard's bytes depend only on the block."""
    import numpy as np
    import pyarrow as pa

    a = np.asarray(block.a, dtype=np.int64)
    b = np.asarray(block.b, dtype=np.int64)
    score = np.asarray(block.score, dtype=np.float32)
    keep = codes[a] != codes[b]
    a, b, score = a[keep], b[keep], score[keep]  # still sorted by (a, b), as engines yield
    s64 = score.astype(np.float64)  # every comparison on the exact float32 value
    in_band = (s64 >= plan.min_score) & (s64 <= plan.max_score)

    e = np.asarray(edges, dtype=np.float64)
    inside = (s64 >= e[0]) & (s64 <= e[-1])  # the last bin is closed
    hist = np.bincount(np.minimum(np.searchsorted(e, s64[inside], side="right") - 1,
                                  len(e) - 2), minlength=len(e) - 1)
    stats: dict[str, Any] = {"index": int(block.index), "candidates": int(block.candidates),
                             "found": len(a), "duplicates_dropped": int((~keep).sum()),
                             "band": int(in_band.sum()), "hist": hist.tolist()}
    if plan.sweep is not None:
        grid = np.asarray(plan.sweep.grid, dtype=np.float64)
        srt = np.sort(s64)
        stats["sweep_ge"] = (len(srt) - np.searchsorted(srt, grid, side="left")).tolist()
        stats["sweep_gt"] = (len(srt) - np.searchsorted(srt, grid, side="right")).tolist()
    table = pa.table({"a": a[in_band], "b": b[in_band], "score": score[in_band]},
                     schema=PAIRS_SCHEMA())
    return stats, table


def _histogram_record(plan: _Plan, stats: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    counts = np.sum([s["hist"] for s in stats], axis=0) if stats else []
    return {"edges": plan.hist_edges(), "counts": [int(c) for c in counts],
            "width": HIST_WIDTH, "wide": plan.wide_histogram,
            "note": "unordered pairs (duplicates excluded) per bin [e_i, e_i+1), last bin "
                    "closed; before --max-per-anchor"}


def _sweep_record(plan: _Plan, stats: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``counts[i][j]`` = unordered pairs with ``grid[i] <= score <= grid[j]`` (i < j), from
    ``#(score >= m) - #(score > M)`` summed over blocks."""
    import numpy as np

    if plan.sweep is None:
        return None
    ge = np.sum([s["sweep_ge"] for s in stats], axis=0)
    gt = np.sum([s["sweep_gt"] for s in stats], axis=0)
    grid = list(plan.sweep.grid)
    counts = [[int(ge[i] - gt[j]) if i < j else None for j in range(len(grid))]
              for i in range(len(grid))]
    return {"grid": grid, "counts": counts,
            "note": "counts[i][j]: unordered pairs with grid[i] <= score <= grid[j], "
                    "duplicates excluded, before --max-per-anchor"}


# ---------------------------------------------------------------------------------------------
# --max-per-anchor: each image keeps its K best positives; a pair stays if either end keeps it


def _cap_per_image(blocks: list[Path], shards: list[Path], n: int, k: int,
                   progress: Progress) -> None:
    """Two passes over the block shards with memory O(N·K + one shard): find each image's K-th
    best (score desc, other id asc), then write each block's kept pairs as the final shard.
    Final shards are written in block order and skipped when present, so resuming is safe."""
    import numpy as np
    import pyarrow.parquet as pq

    progress.start("max-per-anchor", total=2 * len(blocks), unit="shards")
    x = np.zeros(0, np.int64)
    other = np.zeros(0, np.int64)
    score = np.zeros(0, np.float32)
    for path in blocks:
        t = pq.read_table(path)
        a, b = t.column("a").to_numpy(), t.column("b").to_numpy()
        s = t.column("score").to_numpy()
        x, other, score = (np.concatenate([x, a, b]), np.concatenate([other, b, a]),
                           np.concatenate([score, s, s]))
        order = np.lexsort((other, -score, x))
        x, other, score = x[order], other[order], score[order]
        starts = np.flatnonzero(np.r_[True, x[1:] != x[:-1]])
        rank = np.arange(len(x)) - np.repeat(starts, np.diff(np.r_[starts, len(x)]))
        keep = rank < k
        x, other, score = x[keep], other[keep], score[keep]
        progress.advance(1)
    # the K-th best of each image that has at least K positives; the others keep everything
    kth_score = np.full(n, -np.inf, dtype=np.float64)
    kth_other = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    if len(x):
        starts = np.flatnonzero(np.r_[True, x[1:] != x[:-1]])
        ends = np.r_[starts[1:], len(x)]
        full = (ends - starts) == k
        last = ends[full] - 1
        kth_score[x[last]] = score[last]
        kth_other[x[last]] = other[last]

    def kept_by(img: np.ndarray, partner: np.ndarray, s: np.ndarray) -> np.ndarray:
        ks, ko = kth_score[img], kth_other[img]
        kept: np.ndarray = (s > ks) | ((s == ks) & (partner <= ko))
        return kept

    for src, dst in zip(blocks, shards, strict=True):
        if not dst.exists():
            t = pq.read_table(src)
            a, b = t.column("a").to_numpy(), t.column("b").to_numpy()
            s = t.column("score").to_numpy().astype(np.float64)
            write_parquet_atomic(dst, t.filter(kept_by(a, b, s) | kept_by(b, a, s)))
        progress.advance(1)
    progress.finish()


# ---------------------------------------------------------------------------------------------
# statistics over the final shards


def _degrees(shards: list[Path], n: int) -> np.ndarray:
    """Positives per image: the number of stored pairs each id belongs to."""
    import numpy as np
    import pyarrow.parquet as pq

    degree = np.zeros(n, dtype=np.int64)
    for path in shards:
        t = pq.read_table(path, columns=["a", "b"])
        degree += np.bincount(t.column("a").to_numpy(), minlength=n)
        degree += np.bincount(t.column("b").to_numpy(), minlength=n)
    return degree


def _distribution(values: np.ndarray) -> dict[str, float]:
    import numpy as np

    if len(values) == 0:
        return {}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"min": int(values.min()), "median": round(float(p50), 6),
            "mean": round(float(values.mean()), 6), "p90": round(float(p90), 6),
            "p99": round(float(p99), 6), "max": int(values.max())}
