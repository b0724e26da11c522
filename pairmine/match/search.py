"""The resumable band search: blocks of anchors through the engine, each written as its
statistics then its pair shard (last, so its presence marks the block done).

:func:`run_blocks` is the one unit of the match stage, run in this process
(:func:`search_here`) or in a Ray task (``pairmine.scale.match``), so both write the same bytes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pairmine.match.plan import (
    ENGINE_FILE,
    BlockJob,
    MatchPlan,
    SearchInputs,
    engine_anchors,
    plan_units,
)
from pairmine.progress import Progress
from pairmine.stores import PAIRS_SCHEMA, read_json, write_json_atomic, write_parquet_atomic

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

log = logging.getLogger(__name__)

RUNNING_INFO = ("candidates", "pairs")  # engine info that counts this run only, not the store

BlockDone = Callable[[int, dict[str, Any]], None]


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
    engine_file = job.block_dir / ENGINE_FILE
    search = band_search(inputs.store.vectors, lo, hi,
                         anchors=engine_anchors(inputs.anchors, len(inputs.store)),
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
            s, table = block_result(block, inputs.codes, plan, edges)
            s["seconds"] = round(time.perf_counter() - t, 4)
            if not engine_file.exists():
                # the engine's plan (pruning, margins) as the first computed block saw it: a
                # resumed run that computes nothing still records it
                write_json_atomic(engine_file, {k: v for k, v in search.info.items()
                                                if k not in RUNNING_INFO})
            write_json_atomic(job.stats_path(block.index), s)
            write_parquet_atomic(job.shard_path(block.index), table)  # last: marks it done
            if on_block is not None:
                on_block(block.index, s)
            t = time.perf_counter()
    finally:
        search.close()


def search_here(job: BlockJob, inputs: SearchInputs,
                progress: Progress) -> tuple[list[dict[str, Any]], int]:
    """Run the engine in this process over the blocks not yet done; return every block's
    statistics and how many blocks an earlier run had finished."""
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


def block_result(block: Any, codes: np.ndarray, plan: MatchPlan,
                 edges: list[float]) -> tuple[dict[str, Any], pa.Table]:
    """Filter one engine block: drop duplicates, histogram and sweep over the searched range,
    keep the band. Engines yield a block sorted by (a, b) whatever their threading, so a
    shard's bytes depend only on the block."""
    import numpy as np
    import pyarrow as pa

    a = np.asarray(block.a, dtype=np.int64)  # (P,) candidate pairs in the search range
    b = np.asarray(block.b, dtype=np.int64)  # (P,)
    score = np.asarray(block.score, dtype=np.float32)  # (P,)
    keep = codes[a] != codes[b]
    a, b, score = a[keep], b[keep], score[keep]  # still sorted by (a, b), as engines yield
    s64 = score.astype(np.float64)  # every comparison on the exact float32 value
    in_band = (s64 >= plan.min_score) & (s64 <= plan.max_score)

    e = np.asarray(edges, dtype=np.float64)  # (B + 1,) bin edges
    inside = (s64 >= e[0]) & (s64 <= e[-1])  # the last bin is closed
    hist = np.bincount(np.minimum(np.searchsorted(e, s64[inside], side="right") - 1,
                                  len(e) - 2), minlength=len(e) - 1)  # (B,)
    stats: dict[str, Any] = {"index": int(block.index), "candidates": int(block.candidates),
                             "found": len(a), "duplicates_dropped": int((~keep).sum()),
                             "band": int(in_band.sum()), "hist": hist.tolist()}
    if plan.sweep is not None:
        grid = np.asarray(plan.sweep.grid, dtype=np.float64)  # (G,)
        srt = np.sort(s64)
        stats["sweep_ge"] = (len(srt) - np.searchsorted(srt, grid, side="left")).tolist()
        stats["sweep_gt"] = (len(srt) - np.searchsorted(srt, grid, side="right")).tolist()
    table = pa.table({"a": a[in_band], "b": b[in_band], "score": score[in_band]},
                     schema=PAIRS_SCHEMA())
    return stats, table
