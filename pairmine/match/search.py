"""The resumable band search, by tiles: the match stage's unit function and the assembly of
its output blocks.

A tile (``pairmine.engines.Tile``: a run of anchor rows against a run of target rows) reads
only its rows, takes the run-wide engine plan from the work folder (fitted once, on the
driver), drops exact duplicates (``Embeddings.same_content``) and writes its pairs, each with
its output block, as one file under the work folder (renamed into place: its presence marks
the tile done). When every tile of a group is written, :func:`assemble_group` writes the
group's blocks: per block its statistics, then its pair shard sorted by ``(a, b)``. Scores are
exact and correctly rounded, so a block's bytes depend on neither the tiling nor the order
the tiles ran in: :func:`match_tile` runs in this process or as a Ray task
(``pairmine.scale.executor``) and either resumes the other.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pairmine.match.plan import ENGINE_FILE, TILE_PLAN_FILE, MatchJob, MatchPlan, draw_anchors
from pairmine.stores import PAIRS_SCHEMA, read_json, write_json_atomic, write_parquet_atomic

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from pairmine.engines import EnginePlan, Problem, Tile, TileShape
    from pairmine.stores import Embeddings

log = logging.getLogger(__name__)

TILE_META_KEY = b"pairmine.tile"


def tile_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([("block", pa.int64()), ("a", pa.int64()), ("b", pa.int64()),
                      ("score", pa.float32())])


# ---------------------------------------------------------------------------------------------
# what a worker opens once per run


@dataclass
class Opened:
    """A run's inputs as one process opens them: the lazy store, the anchors, the problem
    with the run-wide engine plan. Nothing of size N."""

    store: Embeddings
    problem: Problem


_OPENED: dict[tuple[str, str, str], Opened] = {}  # per process: the last run's


def open_inputs(job: MatchJob, engine_plan: EnginePlan | None = None) -> Opened:
    """The run's inputs, opened once per process (a worker keeps them for its next tiles)."""
    from pairmine.engines import EnginePlan, make_problem

    key = (str(job.out), job.emb_manifest_sha256, repr(job.plan))
    if key in _OPENED and engine_plan is None:
        return _OPENED[key]
    _OPENED.clear()  # one run's inputs at a time
    store = job.open_store()
    anchors = draw_anchors(len(store), job.plan)
    if engine_plan is None:
        engine_plan = EnginePlan.load(job.block_dir)
        if engine_plan is None:
            raise RuntimeError(f"no engine plan under {job.block_dir}: the driver writes it "
                               "before the first tile")
    problem = make_problem(store.vectors, anchors, engine_against(job.plan), job.block_rows,
                           engine_plan)
    _OPENED[key] = Opened(store, problem)
    return _OPENED[key]


def forget_inputs() -> None:
    """Drop the inputs this process opened for an earlier run (the driver, at a run's start:
    the run's own engine plan is read afresh)."""
    _OPENED.clear()


def engine_against(plan: MatchPlan) -> str:
    return "anchors" if plan.against == "subset" else "all"


def load_shape(job: MatchJob) -> TileShape:
    from pairmine.engines import TileShape

    return TileShape(**read_json(job.block_dir / TILE_PLAN_FILE))


# ---------------------------------------------------------------------------------------------
# the unit


def match_tile(job: MatchJob, tile: Tile) -> dict[str, Any]:
    """The match stage's unit: compute one tile and write its pairs (the file is renamed into
    place last). Returns what it read and found."""
    import pyarrow as pa

    from pairmine.engines import build_engine, run_tile
    from pairmine.engines.band import Band
    from pairmine.errors import memory_step

    t0 = time.perf_counter()
    inputs = open_inputs(job)
    lo, hi = job.plan.search_range
    band = Band.checked(lo, hi)
    with memory_step(f"match tile {tile.index} ({tile.anchor_stop - tile.anchor_start} x "
                     f"{tile.stop - tile.start} rows)",
                     "lower --block-rows (a tile holds a few blocks of anchors), or run "
                     "fewer --ray-workers per node"):
        engine = build_engine(inputs.problem, band, *job.resolved, job.memory_budget)
        try:
            result = run_tile(engine, inputs.problem, band, tile)
        finally:
            engine.close()
        same = inputs.store.same_content(result.a, result.b)
    keep = ~same
    rb = job.block_rows
    first = tile.anchor_start // rb
    n_blocks = len(result.candidates)
    dropped = _bincount(result.block[same] - first, n_blocks)
    seconds = time.perf_counter() - t0
    stats = {"tile": tile.index, "candidates": result.candidates.tolist(),
             "duplicates_dropped": dropped.tolist(), "seconds": round(seconds, 6),
             "bytes_read": result.bytes_read, "comparisons": result.comparisons}
    table = pa.table({"block": result.block[keep], "a": result.a[keep], "b": result.b[keep],
                      "score": result.score[keep]}, schema=tile_schema())
    table = table.replace_schema_metadata({TILE_META_KEY: json.dumps(stats).encode()})
    write_parquet_atomic(job.tile_path(tile.index), table)
    return {"tile": tile.index, "pairs": int(keep.sum()), "bytes_read": result.bytes_read,
            "compute_seconds": seconds}


def _bincount(x: np.ndarray, n: int) -> np.ndarray:
    import numpy as np

    return np.bincount(x, minlength=n)[:n] if len(x) else np.zeros(n, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# assembling a group's blocks


def assemble_group(job: MatchJob, tiles: list[Tile]) -> list[dict[str, Any]]:
    """Write the blocks of one group from its tiles' files: per block its statistics, then
    its shard, sorted by ``(a, b)`` (the same function here and after Ray tasks). The tile
    files go once their blocks are written. Returns the blocks' statistics."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rb = job.block_rows
    t0 = tiles[0]
    first = t0.anchor_start // rb
    blocks = list(range(first, -(-t0.anchor_stop // rb)))
    tables, metas = [], []
    for t in tiles:
        table = pq.read_table(job.tile_path(t.index))
        tables.append(table)
        metas.append(json.loads((table.schema.metadata or {})[TILE_META_KEY]))
    table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables]) if tables \
        else tile_schema().empty_table()
    block = table.column("block").to_numpy()
    a, b = table.column("a").to_numpy(), table.column("b").to_numpy()
    score = table.column("score").to_numpy()
    edges = job.plan.hist_edges()
    seconds = sum(m["seconds"] for m in metas) / max(1, len(blocks))
    done = job.done_blocks()
    out = []
    for k in blocks:
        sel = block == k
        ka, kb, ks = a[sel], b[sel], score[sel]
        order = np.lexsort((kb, ka))
        s, shard = block_result(k, ka[order], kb[order], ks[order], job.plan, edges)
        s["candidates"] = int(sum(m["candidates"][k - first] for m in metas))
        dup = int(sum(m["duplicates_dropped"][k - first] for m in metas))
        s["duplicates_dropped"] = dup
        s["seconds"] = round(seconds, 4)
        out.append(s)
        if k in done:
            continue
        write_json_atomic(job.stats_path(k), s)
        write_parquet_atomic(job.shard_path(k), shard)  # last: marks the block done
    for t in tiles:
        job.tile_path(t.index).unlink(missing_ok=True)
    return out


def block_result(index: int, a: np.ndarray, b: np.ndarray, score: np.ndarray,
                 plan: MatchPlan, edges: list[float]) -> tuple[dict[str, Any], pa.Table]:
    """One block's pairs in the searched range (duplicates dropped, sorted by (a, b)):
    histogram and sweep over the range, the band kept as the shard."""
    import numpy as np
    import pyarrow as pa

    s64 = score.astype(np.float64)  # every comparison on the exact float32 value
    in_band = (s64 >= plan.min_score) & (s64 <= plan.max_score)
    e = np.asarray(edges, dtype=np.float64)  # (B + 1,) bin edges
    inside = (s64 >= e[0]) & (s64 <= e[-1])  # the last bin is closed
    hist = np.bincount(np.minimum(np.searchsorted(e, s64[inside], side="right") - 1,
                                  len(e) - 2), minlength=len(e) - 1)  # (B,)
    stats: dict[str, Any] = {"index": int(index), "candidates": 0, "found": len(a),
                             "duplicates_dropped": 0, "band": int(in_band.sum()),
                             "hist": hist.tolist()}
    if plan.sweep is not None:
        grid = np.asarray(plan.sweep.grid, dtype=np.float64)  # (G,)
        srt = np.sort(s64)
        stats["sweep_ge"] = (len(srt) - np.searchsorted(srt, grid, side="left")).tolist()
        stats["sweep_gt"] = (len(srt) - np.searchsorted(srt, grid, side="right")).tolist()
    table = pa.table({"a": a[in_band], "b": b[in_band], "score": score[in_band]},
                     schema=PAIRS_SCHEMA())
    return stats, table


def collect_stats(job: MatchJob) -> list[dict[str, Any]]:
    """Every block's statistics, after checking that every block is done."""
    missing = sorted(set(range(job.n_blocks)) - job.done_blocks())
    if missing:
        raise RuntimeError(f"the search did not write blocks {missing[:5]} of {job.n_blocks}")
    return [read_json(job.stats_path(i)) for i in range(job.n_blocks)]


def engine_record(job: MatchJob) -> dict[str, Any]:
    return read_json(job.block_dir / ENGINE_FILE)
