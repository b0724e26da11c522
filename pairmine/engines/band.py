"""The band-search problem every engine solves, and the one exact rescore they all share.

Targets are the rows a search compares, in a fixed *target order*: the anchors first (in id
order), then, with ``against="all"``, every other row. Query position ``p`` is target ``p``
(``p < n_anchors``), and a candidate is a target pair ``(p, t)`` with ``t > p``. With the
anchors first, "t > p" is exactly the rule "each unordered pair once": a pair of two anchors is
found from the earlier one, a pair with a non-anchor from its only anchor. So every engine
computes the upper triangle of one ``n_anchors x m`` rectangle and nothing else.

Exactness lives here, not in the engines: an engine only proposes candidates (a superset of
the band, by a proven margin), and :func:`exact_band` decides. The score of a pair is the
correctly rounded float64 value of the exact dot product of the two stored rows (float16 and
float32 products are exact in float64; ``math.fsum`` rounds the sum correctly), so it does not
depend on summation order, engine or device, and neither does the band test on it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from pairmine.errors import ConfigError, InputError

STORED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
U64 = 2.0**-53  # unit roundoff of float64
# every engine's prefilter margin is at least this, relative to the norms: generosity that
# protects exactness against any slip in the error analysis, at a negligible candidate cost
MARGIN_FLOOR = 2.0**-16


@dataclass(frozen=True)
class Band:
    """The inclusive band ``[lo, hi]``, ``-1 <= lo <= hi <= 1``."""

    lo: float
    hi: float

    @classmethod
    def checked(cls, lo: float, hi: float) -> Band:
        for name, v in (("lo", lo), ("hi", hi)):
            if isinstance(v, bool) or not isinstance(v, int | float | np.floating) \
                    or not math.isfinite(float(v)):
                raise ConfigError(f"band bound {name}={v!r} is not a finite number",
                                  "give the band as two floats, e.g. 0.97 and 0.99")
        lo, hi = float(lo), float(hi)
        if not -1.0 <= lo <= hi <= 1.0:
            raise ConfigError(f"band [{lo}, {hi}] is not inside [-1, 1] with lo <= hi",
                              "scores are cosines; e.g. lo=0.97, hi=0.99")
        return cls(lo, hi)


@dataclass(frozen=True)
class Problem:
    """One band search: the stored rows, the target order and the block layout.

    ``target_ids[t]`` is the stored row of target ``t``; its first ``n_anchors`` entries are the
    anchors. Block ``k`` holds query positions ``[k * block_rows, (k + 1) * block_rows)``.
    """

    vectors: np.ndarray  # (n, d) float16/float32, may be a memmap
    target_ids: np.ndarray  # (m,) int64
    n_anchors: int
    block_rows: int
    identity: bool  # target_ids == arange(n): rows are read by slicing

    @property
    def m(self) -> int:
        return len(self.target_ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def n_blocks(self) -> int:
        return -(-self.n_anchors // self.block_rows)

    def block_range(self, k: int) -> tuple[int, int]:
        start = k * self.block_rows
        return start, min(start + self.block_rows, self.n_anchors)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Stored rows of targets ``[start, stop)`` (their own dtype; a copy or a view)."""
        if self.identity:
            return np.asarray(self.vectors[start:stop])
        return np.asarray(self.vectors[self.target_ids[start:stop]])

    def comparisons(self, k: int) -> int:
        """Target pairs ``(p, t > p)`` that block ``k`` covers (its share of the triangle)."""
        s, e = self.block_range(k)
        return (e - s) * (self.m - 1) - (s + e - 1) * (e - s) // 2

    def chunks(self, rows: int) -> Iterator[tuple[int, int]]:
        for start in range(0, self.m, rows):
            yield start, min(start + rows, self.m)


def make_problem(vectors: Any, anchors: Any, against: str, block_rows: int) -> Problem:
    """Validate the inputs (ConfigError/InputError) and fix the target order."""
    if not hasattr(vectors, "shape") or not hasattr(vectors, "dtype") \
            or len(vectors.shape) != 2:
        raise InputError("vectors must be a 2-D array (n, d)",
                         "pass the embeddings matrix, e.g. open_embeddings(path).vectors")
    if np.dtype(vectors.dtype) not in STORED_DTYPES:
        raise InputError(f"vectors are {vectors.dtype}, expected float16 or float32",
                         "cast the matrix, or re-run embed")
    n, d = (int(x) for x in vectors.shape)
    if d < 1:
        raise InputError("vectors have no columns", "re-run embed")
    if against not in ("anchors", "all"):
        raise ConfigError(f"against={against!r} is not 'anchors' or 'all'",
                          "anchors: anchors x anchors; all: anchors x every row")
    if isinstance(block_rows, bool) or not isinstance(block_rows, int | np.integer) \
            or block_rows < 1:
        raise ConfigError(f"block_rows={block_rows!r} is not an integer >= 1")
    if anchors is None:
        target_ids = np.arange(n, dtype=np.int64)
        return Problem(vectors, target_ids, n, int(block_rows), identity=True)
    ids = check_anchors(anchors, n)
    if against == "all":
        rest = np.ones(n, dtype=bool)
        rest[ids] = False
        target_ids = np.concatenate([ids, np.flatnonzero(rest).astype(np.int64)])
    else:
        target_ids = ids
    identity = len(target_ids) == n and len(ids) == n
    return Problem(vectors, target_ids, len(ids), int(block_rows), identity)


def check_anchors(anchors: Any, n: int) -> np.ndarray:
    ids = np.asarray(anchors)
    if ids.ndim != 1 or not (ids.dtype.kind in "iu" or len(ids) == 0):
        raise ConfigError("anchors must be a 1-D array of integer row ids",
                          "pass sorted unique int64 ids, or None for every row")
    ids = ids.astype(np.int64)
    if len(ids) and (ids[0] < 0 or ids[-1] >= n):
        raise ConfigError(f"anchor ids must lie in [0, {n}); got {ids.min()}..{ids.max()}",
                          "ids are row numbers of the embeddings matrix")
    if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        raise ConfigError("anchor ids must be sorted and unique", "pass np.unique(ids)")
    return ids


def round_down_f32(x: float) -> float:
    """The largest float32 value <= x: a threshold that a float32 comparison cannot round up."""
    f = np.float32(x)
    if float(f) > x:
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


def round_down_f16(x: float) -> float:
    f = np.float16(x)
    if float(f) > x:
        f = np.nextafter(f, np.float16(-np.inf))
    return float(f)


# ---------------------------------------------------------------------------------------------
# the exact rescore


def exact_band(vectors: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray, band: Band,
               chunk: int = 1 << 14) -> tuple[np.ndarray, np.ndarray]:
    """Decide the band for pairs of stored rows: ``(keep mask, float32 scores of all)``.

    The float64 dot ``s`` of each pair has error at most ``e = (d+1) u64 sum|x_i y_i|``
    whatever the summation order. Only where ``[s - 2e, s + 2e]`` contains ``lo``, ``hi`` or a
    float32 rounding boundary could that order matter; those few pairs are recomputed with
    ``math.fsum``, the correctly rounded sum of the (exact) products. So the result is the same
    on every machine, for every engine.
    """
    k = len(rows_a)
    keep = np.zeros(k, dtype=bool)
    score = np.zeros(k, dtype=np.float32)
    d = vectors.shape[1]
    chunk = max(1, min(chunk, (1 << 22) // max(d, 1)))  # <= 32 MiB per float64 matrix
    for s0 in range(0, k, chunk):
        s1 = min(s0 + chunk, k)
        ia, ib = rows_a[s0:s1], rows_b[s0:s1]
        x = np.asarray(vectors[ia], dtype=np.float64)  # exact: float16/32 -> float64
        y = np.asarray(vectors[ib], dtype=np.float64)
        s = np.einsum("ij,ij->i", x, y)
        err = 2.0 * ((d + 1) * U64 * np.einsum("ij,ij->i", np.abs(x), np.abs(y)) + 2.0**-1070)
        # the band test can only flip within err of a bound; the float32 score only matters
        # for pairs that may be kept (near zero float32 steps are tiny: leave those out)
        maybe = (s + err >= band.lo) & (s - err <= band.hi)
        near = ((s - err <= band.lo) & (band.lo <= s + err)) \
            | ((s - err <= band.hi) & (band.hi <= s + err)) \
            | (maybe & ((s - err).astype(np.float32) != (s + err).astype(np.float32)))
        for i in np.flatnonzero(near):
            s[i] = math.fsum((x[i] * y[i]).tolist())
        keep[s0:s1] = (s >= band.lo) & (s <= band.hi)
        score[s0:s1] = s.astype(np.float32)
    return keep, score


# ---------------------------------------------------------------------------------------------
# what an engine is


Candidates = tuple[np.ndarray, np.ndarray]  # (p, t) int64 target positions, t > p


class Engine(Protocol):
    """A candidate generator over a :class:`Problem`.

    ``info`` is a JSON-able description (precision, margin, kernel ...) and grows once
    ``prepare`` has run. ``candidates(start, stop)`` yields batches of target pairs ``(p, t)``
    with ``start <= p < stop`` and ``t > p`` that include every pair whose exact score is
    ``>= lo`` and ``<= hi`` (and usually few others).
    """

    info: dict[str, Any]

    def prepare(self) -> None: ...

    def candidates(self, start: int, stop: int) -> Iterator[Candidates]: ...

    def close(self) -> None: ...


class CandidateBatcher:
    """Collects small candidate arrays and hands them on in batches of ``size`` or more."""

    def __init__(self, size: int = 1 << 16) -> None:
        self.size = size
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.count = 0

    def add(self, p: np.ndarray, t: np.ndarray) -> Candidates | None:
        if len(p):
            self.parts.append((p, t))
            self.count += len(p)
        return self.flush() if self.count >= self.size else None

    def flush(self) -> Candidates | None:
        if not self.parts:
            return None
        p = np.concatenate([x for x, _ in self.parts]).astype(np.int64, copy=False)
        t = np.concatenate([y for _, y in self.parts]).astype(np.int64, copy=False)
        self.parts, self.count = [], 0
        return p, t


def row_norms(problem: Problem, chunk_bytes: int) -> np.ndarray:
    """float64 norms of every target row, in target order; rejects NaN/inf rows."""
    rows = max(1, chunk_bytes // (8 * problem.dim))
    out = np.empty(problem.m, dtype=np.float64)
    for s, e in problem.chunks(rows):
        x = problem.rows(s, e).astype(np.float64)
        n2 = np.einsum("ij,ij->i", x, x)
        if not np.isfinite(n2).all():
            bad = s + int(np.flatnonzero(~np.isfinite(n2))[0])
            raise InputError(f"row {int(problem.target_ids[bad])} holds NaN or inf",
                             "re-run embed; check the encoder")
        out[s:e] = np.sqrt(n2)
    return out
