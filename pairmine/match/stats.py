"""A match run's statistics: the score histogram and the sweep (summed from the blocks'
statistics), and the positives per image (counted over the final shards)."""

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


def degrees(shards: list[Path], n: int) -> np.ndarray:
    """Positives per image: the number of stored pairs each id belongs to."""
    import numpy as np
    import pyarrow.parquet as pq

    degree = np.zeros(n, dtype=np.int64)
    for path in shards:
        t = pq.read_table(path, columns=["a", "b"])
        degree += np.bincount(t.column("a").to_numpy(), minlength=n)
        degree += np.bincount(t.column("b").to_numpy(), minlength=n)
    return degree


def count_record(degree: np.ndarray, anchors: np.ndarray, before_cap: int, duplicates: int,
                 duplicate_groups: int) -> dict[str, int]:
    """The manifest's ``counts``: ``degree`` is ``(N,)`` positives per image over the final
    shards, ``anchors`` ``(K,)`` the subset's ids, ``before_cap`` the band's unordered pairs
    before ``--max-per-anchor``."""
    unordered = int(degree.sum()) // 2  # each pair counted at both of its ends
    return {"unordered": unordered, "ordered": 2 * unordered,
            "unordered_before_max_per_anchor": before_cap,
            "anchors": len(anchors),
            "anchors_with_pairs": int((degree[anchors] > 0).sum()),
            "images_with_pairs": int((degree > 0).sum()),
            "duplicates": duplicates, "duplicate_groups": duplicate_groups}


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
