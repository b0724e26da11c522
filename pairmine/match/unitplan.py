"""``--plan``: what a match run would do, before it starts, told truthfully.

Per tile: the vector bytes it reads (its queries unless they are its first targets, and its
targets: exactly what the tile reader reads), its comparisons and a time from the rate of one
representative tile measured here, warm (run twice, the second timed), on the device the run
would use. For the run: the driver's reads (the engine plan's sample, the content codes of
the duplicate passes), the peak memory of a worker (a tile's rows, their converted copies, the
engine's buffers, plus this process's own footprint before any tile) and the totals.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pairmine.match.duplicates import code_passes
from pairmine.match.plan import TILE_PLAN_FILE, MatchJob
from pairmine.match.search import engine_against
from pairmine.stores import read_json

if TYPE_CHECKING:
    import numpy as np

    from pairmine.engines import Problem, Tile, TileShape
    from pairmine.stores import Embeddings

CHUNK_ROWS = 1 << 14  # rows converted to float64 at once (norms, rotation, rescore)


def rss_bytes() -> int:
    """This process's resident memory now (Linux; 0 where unknown)."""
    import os

    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def tile_memory(problem: Problem, shape: TileShape, info: dict[str, Any],
                threads: int) -> dict[str, int]:
    """Peak bytes one tile holds (host, and device for a GPU engine), from the shape: the
    stored rows (queries and targets; a rest tile's masked copy), their tile-precision
    copies, the float64 chunks (norms, rotation, exact rescore) and the engine's buffers."""
    d, item = problem.dim, problem.dtype.itemsize
    q = min(shape.anchor_blocks * problem.block_rows, problem.n_anchors)
    c = max(shape.target_rows, q)
    stored = (q + 2 * c) * d * item  # queries, targets, a rest tile's masked copy
    dims = info.get("dims")
    width = d if dims is None else int(dims) + 1
    floats = 8 * CHUNK_ROWS * d * 3  # a float64 chunk, its square and the rotated head
    rescore = 2 * CHUNK_ROWS * d * 8 * 2  # exact rescore: two float64 row chunks, |x||y|
    device = 0
    if info.get("device", "cpu") == "cpu":
        converted = (q + c) * width * 4
        tiles = list(info.get("tile", [1024, 2048]))
        buffers = threads * int(tiles[0]) * int(tiles[1]) * 4 * 2  # score tile + selection
        host = stored + converted + floats + rescore + buffers
    else:
        device = (q + c) * d * 4 + (1 << 28)  # uploads (fp32 worst case), score buffers
        host = stored + floats + rescore
    return {"host": int(host), "device": int(device)}


def plan_run(job: MatchJob, store: Embeddings, anchors: np.ndarray | None, workers: int,
             measure: bool = True) -> dict[str, Any]:
    """The plan of a run (see the module doc), as the JSON ``MatchResult.unit_plan``."""
    from pairmine.engines import (
        EnginePlan,
        TileShape,
        build_engine,
        default_tile_shape,
        make_problem,
        plan_engine,
        plan_tiles,
        run_tile,
    )
    from pairmine.engines.band import Band, tile_comparisons
    from pairmine.runtime import cpu_count

    baseline = rss_bytes()
    lo, hi = job.plan.search_range
    band = Band.checked(lo, hi)
    against = engine_against(job.plan)
    shape_file = job.block_dir / TILE_PLAN_FILE
    shape = TileShape(**read_json(shape_file)) if shape_file.exists() else default_tile_shape(
        job.resolved[1], job.block_rows, store.dim, store.vectors.dtype.itemsize,
        job.memory_budget, job.plan.tile_rows)
    problem = make_problem(store.vectors, anchors, against, job.block_rows)
    engine_plan = EnginePlan.load(job.block_dir)
    sample_bytes, setup_seconds = 0, 0.0
    if engine_plan is None:  # the run will fit it: the same sample is read here, and timed
        t_setup = time.perf_counter()
        engine_plan = plan_engine(problem, band, *job.resolved, job.memory_budget)
        setup_seconds = time.perf_counter() - t_setup
        sample_bytes = problem.reader.bytes_read
    problem = make_problem(store.vectors, anchors, against, job.block_rows, engine_plan)
    row_bytes = problem.reader.row_bytes
    tiles = plan_tiles(problem, shape)
    done_blocks = job.done_blocks()
    written = job.done_tiles()
    todo: list[Tile] = []
    for t in tiles:
        blocks = range(t.anchor_start // job.block_rows, -(-t.anchor_stop // job.block_rows))
        if all(b in done_blocks for b in blocks) or job.tile_path(t.index).name in written:
            continue
        todo.append(t)
    comparisons = [tile_comparisons(problem, t) for t in todo]
    reads = [t.read_rows(problem) * row_bytes for t in todo]

    measured, seconds, rate = -1, 0.0, 0.0
    if measure and tiles:
        sample = max(tiles, key=lambda t: (tile_comparisons(problem, t), -t.index))
        measured = sample.index
        engine = build_engine(problem, band, *job.resolved, job.memory_budget)
        try:
            run_tile(engine, problem, band, sample)  # warm: pages, pools, kernels
            t0 = time.perf_counter()
            run_tile(engine, problem, band, sample)
            seconds = time.perf_counter() - t0
        finally:
            engine.close()
        rate = tile_comparisons(problem, sample) / max(seconds, 1e-9)
    per_tile = [c / rate if rate else 0.0 for c in comparisons]
    threads = cpu_count()
    memory = tile_memory(problem, shape, engine_plan.info | {"device": job.resolved[1]},
                         threads)
    codes = code_passes(len(store)) * len(store) * 8
    tile_bytes = sum(reads)
    n_blocks = job.n_blocks
    return {
        "blocks": n_blocks, "blocks_done": len(done_blocks),
        "todo": [b for b in range(n_blocks) if b not in done_blocks],
        "block_rows": job.block_rows, "tile_shape": shape.to_json(),
        "tiles": len(tiles), "tiles_todo": len(todo),
        "tile_index": [t.index for t in todo],
        "bytes_per_tile": reads, "comparisons_per_tile": comparisons,
        "seconds_per_tile": [round(x, 6) for x in per_tile],
        "measured_tile": measured, "measured_seconds": round(seconds, 6),
        "comparisons_per_second": rate, "workers": workers,
        # the driver's set-up (the engine plan from its sample), then the tiles on the workers
        "setup_seconds": round(setup_seconds, 3),
        "estimate_seconds": round(setup_seconds + sum(per_tile) / max(1, workers), 3),
        "bytes": {"tiles": tile_bytes, "sample": sample_bytes, "codes": codes,
                  "vectors": tile_bytes + sample_bytes,
                  "total": tile_bytes + sample_bytes + codes},
        "memory": {"worker_peak_bytes": baseline + memory["host"],
                   "tile_bytes": memory["host"], "process_baseline_bytes": baseline,
                   "device_bytes": memory["device"], "threads": threads},
        "engine": {k: v for k, v in engine_plan.info.items()
                   if k in ("kernel", "dims", "margin_rel", "precision")},
    }


def plan_summary(plan: dict[str, Any]) -> list[tuple[str, str]]:
    """``match --plan`` as (label, value) rows for the command's summary table."""
    mib = 1 << 20
    reads = plan["bytes_per_tile"]
    total = plan["bytes"]
    mem = plan["memory"]
    shape = plan["tile_shape"]
    rows = [
        ("blocks", f"{plan['blocks']:,} of {plan['block_rows']:,} anchor rows "
                   f"({plan['blocks_done']:,} already done)"),
        ("tiles (units)", f"{plan['tiles_todo']:,} to compute of {plan['tiles']:,} "
                          f"({shape['anchor_blocks']} block(s) of anchors x "
                          f"{shape['target_rows']:,} target rows)"),
        ("bytes per tile", "none" if not reads else
         f"{min(reads) / mib:,.1f} to {max(reads) / mib:,.1f} MiB"),
        ("bytes read in all", f"{total['total'] / mib:,.1f} MiB (tiles "
                              f"{total['tiles'] / mib:,.1f}, engine sample "
                              f"{total['sample'] / mib:,.1f}, content codes "
                              f"{total['codes'] / mib:,.1f})"),
        ("peak memory per worker", f"{mem['worker_peak_bytes'] / mib:,.0f} MiB (a tile "
                                   f"{mem['tile_bytes'] / mib:,.0f} MiB on {mem['threads']} "
                                   f"thread(s), the process "
                                   f"{mem['process_baseline_bytes'] / mib:,.0f} MiB)"
         + (f", device {mem['device_bytes'] / mib:,.0f} MiB" if mem["device_bytes"] else "")),
        ("comparisons", f"{sum(plan['comparisons_per_tile']):,}"),
        ("measured", "nothing to measure" if plan["measured_tile"] < 0 else
         f"tile {plan['measured_tile']} warm in {plan['measured_seconds']:.3f} s "
         f"({plan['comparisons_per_second']:,.0f} comparisons/s, its reads included)"),
        ("estimate", f"{plan['estimate_seconds']:,.1f} s: the engine plan "
                     f"({plan['setup_seconds']:,.1f} s here), then the tiles on "
                     f"{plan['workers']} worker(s) like this machine"),
    ]
    return rows
