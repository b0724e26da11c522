"""``--max-per-anchor K``: each image keeps its K best positives (score descending, ties to the
smaller partner id); a pair stays if either of its images keeps it."""

from __future__ import annotations

from pathlib import Path

from pairmine.progress import Progress
from pairmine.stores import write_parquet_atomic


def keep_best_per_image(blocks: list[Path], shards: list[Path], k: int,
                        progress: Progress) -> None:
    """Two passes over the block shards with memory O(P + one shard): find each image's K-th
    best (score desc, other id asc), then write each block's kept pairs as the final shard.
    Final shards are written in block order and skipped when present, so resuming is safe."""
    import numpy as np
    import pyarrow.parquet as pq

    progress.start("max-per-anchor", total=2 * len(blocks), unit="shards")
    # each image's best positives so far, as (image, partner, score) rows sorted by image then
    # rank: at most N·K rows, each pair {a, b} seen from both ends
    x = np.zeros(0, np.int64)  # (R,) the image
    other = np.zeros(0, np.int64)  # (R,) its partner
    score = np.zeros(0, np.float32)  # (R,)
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
    # the K-th best of each image that has at least K positives (the others keep everything),
    # by image id, sorted: O(images with K positives), never an array of N
    if len(x):
        starts = np.flatnonzero(np.r_[True, x[1:] != x[:-1]])
        ends = np.r_[starts[1:], len(x)]
        last = ends[(ends - starts) == k] - 1
    else:
        last = np.zeros(0, np.int64)
    capped = x[last]  # (C,) sorted: x is sorted by image
    kth_score = score[last].astype(np.float64)  # (C,)
    kth_other = other[last]  # (C,)
    del x, other, score

    def kept_by(img: np.ndarray, partner: np.ndarray, s: np.ndarray) -> np.ndarray:
        if not len(capped):  # no image has K positives: every pair stays
            return np.ones(img.shape, dtype=bool)
        at = np.minimum(np.searchsorted(capped, img), len(capped) - 1)
        full = capped[at] == img  # img has K positives: compare with its K-th best
        ks = np.where(full, kth_score[at], -np.inf)
        ko = np.where(full, kth_other[at], np.iinfo(np.int64).max)
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
