"""A match run's statistics: the score histogram and the sweep (summed from the blocks'
statistics), and the positives per image (sparse counts per final shard, merged once into a
disk-backed array)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.match.plan import HIST_WIDTH, MatchPlan

if TYPE_CHECKING:
    import numpy as np


def histogram_record(plan: MatchPlan, stats: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's ``histogram``: the blocks' bin counts summed, over the search range."""
    import numpy as np

    counts = np.sum([s["hist"] for s in stats], axis=0) if stats else []
    return {"edges": plan.hist_edges(), "counts": [int(c) for c in counts],
            "width": HIST_WIDTH, "wide": plan.wide_histogram,
            "note": "unordered pairs (duplicates excluded) per bin [e_i, e_i+1), last bin "
                    "closed; before --max-per-anchor"}


def sweep_record(plan: MatchPlan, stats: list[dict[str, Any]]) -> dict[str, Any] | None:
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


DEGREES_FILE = "degrees.int64"  # under the work folder: positives per image, on disk


def degrees(shards: list[Path], n: int, work: Path) -> np.ndarray:
    """Positives per image (the stored pairs each id belongs to), as an ``(N,)`` int64
    memory map under the work folder ``work``: each shard adds its sparse counts (``np.unique``
    of its pair ends, O(shard)), so no process holds O(N) anonymous memory and no shard costs
    O(N)."""
    import numpy as np
    import pyarrow.parquet as pq

    work.mkdir(parents=True, exist_ok=True)
    degree = np.memmap(work / DEGREES_FILE, dtype=np.int64, mode="w+", shape=(max(n, 1),))
    for path in shards:
        t = pq.read_table(path, columns=["a", "b"])
        ends = np.concatenate([t.column("a").to_numpy(), t.column("b").to_numpy()])
        ids, counts = np.unique(ends, return_counts=True)
        degree[ids] += counts
    return degree[:n]


def count_record(degree: np.ndarray, anchors: np.ndarray | None, before_cap: int,
                 duplicates: int, duplicate_groups: int, chunk: int = 1 << 22
                 ) -> dict[str, int]:
    """The manifest's ``counts``: ``degree`` is ``(N,)`` positives per image over the final
    shards (read in chunks: it may be a memory map), ``anchors`` ``(K,)`` the subset's ids
    (None: every image), ``before_cap`` the band's unordered pairs before
    ``--max-per-anchor``."""
    import numpy as np

    n = len(degree)
    total = with_pairs = 0
    for s in range(0, n, chunk):
        part = np.asarray(degree[s:s + chunk])
        total += int(part.sum())
        with_pairs += int(np.count_nonzero(part))
    if anchors is None:
        anchors_with, k = with_pairs, n
    else:
        anchors_with, k = int(np.count_nonzero(degree[anchors])), len(anchors)
    unordered = total // 2  # each pair counted at both of its ends
    return {"unordered": unordered, "ordered": 2 * unordered,
            "unordered_before_max_per_anchor": before_cap,
            "anchors": k,
            "anchors_with_pairs": anchors_with,
            "images_with_pairs": with_pairs,
            "duplicates": duplicates, "duplicate_groups": duplicate_groups}


def per_anchor(degree: np.ndarray, anchors: np.ndarray | None,
               chunk: int = 1 << 22) -> dict[str, float]:
    """:func:`distribution` of the positives per anchor. For every image as an anchor it is
    computed from the histogram of the (integer) degrees, read in chunks, so nothing of size
    N is held: the same percentiles (numpy's linear rule) without sorting N values."""
    import numpy as np

    if anchors is not None:
        return distribution(np.asarray(degree[anchors]))
    n = len(degree)
    if n == 0:
        return {}
    counts = np.zeros(1, dtype=np.int64)
    total = 0
    for s in range(0, n, chunk):
        part = np.asarray(degree[s:s + chunk])
        c = np.bincount(part)
        if len(c) > len(counts):
            c[: len(counts)] += counts
            counts = c
        else:
            counts[: len(c)] += c
        total += int(part.sum())
    cum = np.cumsum(counts)

    def at(rank: int) -> int:  # the value of the rank-th smallest degree (0-based)
        return int(np.searchsorted(cum, rank, side="right"))

    def pct(q: float) -> float:
        h = (n - 1) * q / 100.0
        lo = int(np.floor(h))
        hi = min(lo + 1, n - 1)
        return float(np.percentile(np.array([at(lo), at(hi)], dtype=np.float64),
                                   (h - lo) * 100.0))

    values = np.flatnonzero(counts)
    return {"min": int(values[0]), "median": round(pct(50), 6),
            "mean": round(total / n, 6), "p90": round(pct(90), 6),
            "p99": round(pct(99), 6), "max": int(values[-1])}


def distribution(values: np.ndarray) -> dict[str, float]:
    """min, median, mean, p90, p99, max of ``values`` (``(K,)``, e.g. positives per anchor);
    empty for no values."""
    import numpy as np

    if len(values) == 0:
        return {}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"min": int(values.min()), "median": round(float(p50), 6),
            "mean": round(float(values.mean()), 6), "p90": round(float(p90), 6),
            "p99": round(float(p99), 6), "max": int(values.max())}
