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
from dataclasses import dataclass, field
from pathlib import Path
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


class RowReader:
    """Reads rows of the stored matrix by range or by sorted ids, counting the bytes it reads:
    the one way the engines read vectors, so that ``--plan`` can be checked against a run.
    ``vectors`` is the store's lazy view (or any (n, d) array; a memmap is fine)."""

    def __init__(self, vectors: Any) -> None:
        self.vectors = vectors
        self.row_bytes = int(vectors.shape[1]) * np.dtype(vectors.dtype).itemsize
        self.bytes_read = 0

    def rows(self, start: int, stop: int) -> np.ndarray:
        self.bytes_read += max(0, stop - start) * self.row_bytes
        return np.asarray(self.vectors[start:stop])

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` (sorted ascending: each shard is read once, in order)."""
        self.bytes_read += len(ids) * self.row_bytes
        if len(ids) == 0:
            return np.zeros((0, self.vectors.shape[1]), dtype=self.vectors.dtype)
        return np.asarray(self.vectors[np.asarray(ids, dtype=np.int64)])


@dataclass(frozen=True)
class EnginePlan:
    """What every tile of one run needs that depends on the whole store (an engine's fitted
    rotation, chosen d', margin rule), computed ONCE from a sample and handed to every tile:
    ``info`` is JSON (the manifest's engine record), ``arrays`` the fitted matrices."""

    info: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        """Write the plan to ``folder`` (``engine.json`` last: its presence marks it whole)."""
        from pairmine.stores import save_npy_atomic, write_json_atomic

        folder.mkdir(parents=True, exist_ok=True)
        for name, arr in sorted(self.arrays.items()):
            save_npy_atomic(folder / f"engine-{name}.npy", arr)
        write_json_atomic(folder / ENGINE_PLAN_FILE,
                          {**self.info, "arrays": sorted(self.arrays)})

    @classmethod
    def load(cls, folder: Path) -> EnginePlan | None:
        from pairmine.stores import read_json

        path = folder / ENGINE_PLAN_FILE
        if not path.exists():
            return None
        info = read_json(path)
        names = info.pop("arrays", [])
        arrays = {n: np.load(folder / f"engine-{n}.npy", allow_pickle=False) for n in names}
        return cls(info, arrays)


ENGINE_PLAN_FILE = "engine.json"


@dataclass(frozen=True)
class Problem:
    """One band search: the stored rows, the target order, the block layout and the run-wide
    engine plan (None: the engine fits one from a sample when it is built).

    Targets are the anchors (positions ``0..K-1``, in id order) and, with ``against="all"``,
    every other row after them. Nothing of size N is held: anchor positions map to ids through
    ``anchors`` (None: every row, position = id) and the other rows are read by row range of
    the store, with the anchors masked out by a search in the sorted anchor ids. Block ``k``
    holds anchor positions ``[k * block_rows, (k + 1) * block_rows)``.
    """

    vectors: Any  # (n, d) float16/float32: the store's lazy view, an array or a memmap
    anchors: np.ndarray | None  # (K,) sorted int64 ids, None for every row
    against: str  # "anchors" or "all"
    block_rows: int
    reader: RowReader
    engine_plan: EnginePlan | None = None

    @property
    def n(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def dtype(self) -> np.dtype[Any]:
        dtype: np.dtype[Any] = np.dtype(self.vectors.dtype)
        return dtype

    @property
    def n_anchors(self) -> int:
        return self.n if self.anchors is None else len(self.anchors)

    @property
    def has_rest(self) -> bool:
        """Targets beyond the anchors: ``against="all"`` with a proper subset."""
        return self.against == "all" and self.n_anchors < self.n

    @property
    def m(self) -> int:
        """Targets: the anchors, or every row with ``against="all"``."""
        return self.n if self.has_rest else self.n_anchors

    @property
    def n_blocks(self) -> int:
        return -(-self.n_anchors // self.block_rows)

    def block_range(self, k: int) -> tuple[int, int]:
        start = k * self.block_rows
        return start, min(start + self.block_rows, self.n_anchors)

    def comparisons(self, k: int) -> int:
        """Target pairs ``(p, t > p)`` that block ``k`` covers (its share of the triangle)."""
        s, e = self.block_range(k)
        return (e - s) * (self.m - 1) - (s + e - 1) * (e - s) // 2

    def anchor_ids(self, start: int, stop: int) -> np.ndarray:
        """Ids of anchor positions ``[start, stop)``."""
        if self.anchors is None:
            return np.arange(start, stop, dtype=np.int64)
        return self.anchors[start:stop]

    def read_anchors(self, start: int, stop: int) -> np.ndarray:
        if self.anchors is None:
            return self.reader.rows(start, stop)
        return self.reader.take(self.anchors[start:stop])

    def rest_mask(self, start: int, stop: int) -> np.ndarray:
        """Which store rows of ``[start, stop)`` are not anchors (O(stop - start))."""
        keep = np.ones(stop - start, dtype=bool)
        if self.anchors is not None:
            lo, hi = np.searchsorted(self.anchors, [start, stop])
            keep[self.anchors[lo:hi] - start] = False
        return keep

    def sample_ids(self, size: int, seed: int = 0) -> np.ndarray:
        """A seeded sample of target ids, sorted (each shard read once, in order)."""
        population = self.m
        if population <= size:
            pos = np.arange(population, dtype=np.int64)
        else:
            pos = np.sort(np.random.default_rng(seed).choice(population, size=size,
                                                             replace=False)).astype(np.int64)
        if self.has_rest or self.anchors is None:
            return pos  # every row is a target: positions in id order are the ids
        return self.anchors[pos]


def make_problem(vectors: Any, anchors: Any, against: str, block_rows: int,
                 engine_plan: EnginePlan | None = None) -> Problem:
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
    ids = None if anchors is None else check_anchors(anchors, n)
    if ids is not None and len(ids) == n:
        ids = None  # every row: positions are ids
    return Problem(vectors, ids, against, int(block_rows), RowReader(vectors), engine_plan)


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


def exact_band(vectors: Any, rows_a: np.ndarray, rows_b: np.ndarray, band: Band,
               chunk: int = 1 << 14) -> tuple[np.ndarray, np.ndarray]:
    """Decide the band for pairs of stored rows (ids into ``vectors``): ``(keep mask, float32
    scores of all)``; see :func:`exact_rows`."""
    k = len(rows_a)
    keep = np.zeros(k, dtype=bool)
    score = np.zeros(k, dtype=np.float32)
    chunk = max(1, min(chunk, (1 << 22) // max(int(vectors.shape[1]), 1)))
    for s0 in range(0, k, chunk):
        s1 = min(s0 + chunk, k)
        keep[s0:s1], score[s0:s1] = exact_rows(np.asarray(vectors[rows_a[s0:s1]]),
                                               np.asarray(vectors[rows_b[s0:s1]]), band)
    return keep, score


def exact_rows(xa: np.ndarray, xb: np.ndarray, band: Band,
               chunk: int = 1 << 14) -> tuple[np.ndarray, np.ndarray]:
    """Decide the band for the pairs ``(xa[i], xb[i])`` of stored rows: ``(keep mask, float32
    scores of all)``.

    The float64 dot ``s`` of each pair has error at most ``e = (d+1) u64 sum|x_i y_i|``
    whatever the summation order. Only where ``[s - 2e, s + 2e]`` contains ``lo``, ``hi`` or a
    float32 rounding boundary could that order matter; those few pairs are recomputed with
    ``math.fsum``, the correctly rounded sum of the (exact) products. So the result is the same
    on every machine, for every engine, for every tiling.
    """
    k = len(xa)
    keep = np.zeros(k, dtype=bool)
    score = np.zeros(k, dtype=np.float32)
    d = xa.shape[1] if xa.ndim == 2 else 0
    chunk = max(1, min(chunk, (1 << 22) // max(d, 1)))  # <= 32 MiB per float64 matrix
    for s0 in range(0, k, chunk):
        s1 = min(s0 + chunk, k)
        x = np.asarray(xa[s0:s1], dtype=np.float64)  # exact: float16/32 -> float64
        y = np.asarray(xb[s0:s1], dtype=np.float64)
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
# tiles


@dataclass(frozen=True, slots=True)
class Tile:
    """A unit of work: anchor positions ``[anchor_start, anchor_stop)`` (whole output blocks)
    against targets ``[start, stop)``: anchor positions (``kind="anchors"``, ``start >=
    anchor_start``) or store rows with the anchors masked out (``kind="rest"``). A tile whose
    targets begin at its own first anchor is a *triangle*: its queries are its first targets
    and only ``t > p`` counts."""

    index: int
    group: int  # tiles of one group share their anchors (and so their output blocks)
    anchor_start: int
    anchor_stop: int
    kind: str  # "anchors" | "rest"
    start: int
    stop: int

    @property
    def triangle(self) -> bool:
        return self.kind == "anchors" and self.start == self.anchor_start

    @property
    def number(self) -> int:
        """The tile's name in attempt records and messages (the executor reads it)."""
        return self.index

    def read_rows(self, problem: Problem) -> int:
        """Stored rows this tile reads (its queries unless they are its first targets, and
        its targets; a rest tile reads its whole row range)."""
        queries = 0 if self.triangle else self.anchor_stop - self.anchor_start
        return queries + self.stop - self.start


@dataclass(frozen=True)
class TileShape:
    """Tile sizes: anchors per tile as whole blocks, target rows per tile."""

    anchor_blocks: int
    target_rows: int

    def to_json(self) -> dict[str, int]:
        return {"anchor_blocks": self.anchor_blocks, "target_rows": self.target_rows}


def plan_tiles(problem: Problem, shape: TileShape) -> list[Tile]:
    """Every tile of the search, grouped by anchor rows and in target order within a group
    (neighbouring units share their anchors). Each unordered pair lies in exactly one tile:
    a pair of two anchors in the anchor tile of the earlier one's group (``t > p``), a pair
    with a non-anchor in the rest tile holding that row."""
    k, rows = problem.n_anchors, problem.block_rows
    group_rows = max(1, shape.anchor_blocks) * rows
    tiles: list[Tile] = []
    for g, r0 in enumerate(range(0, k, group_rows)):
        r1 = min(r0 + group_rows, k)
        width = max(shape.target_rows, r1 - r0)  # the triangle lies in the first tile
        for c0 in range(r0, k, width):
            tiles.append(Tile(len(tiles), g, r0, r1, "anchors", c0, min(c0 + width, k)))
        if problem.has_rest:
            for s in range(0, problem.n, shape.target_rows):
                tiles.append(Tile(len(tiles), g, r0, r1, "rest", s,
                                  min(s + shape.target_rows, problem.n)))
    return tiles


def tile_comparisons(problem: Problem, tile: Tile) -> int:
    """Pairs a tile compares (rest tiles: counting the masked anchors, an upper bound)."""
    q = tile.anchor_stop - tile.anchor_start
    c = tile.stop - tile.start
    if tile.triangle:
        return q * c - q * (q + 1) // 2
    return q * c


@dataclass
class TileRows:
    """A tile's rows as an engine gets them."""

    queries: np.ndarray  # (R, D) stored dtype
    targets: np.ndarray  # (C, D); with ``triangle`` the queries are ``targets[:R]``
    triangle: bool  # only pairs (i, j) with j > i
    top_q: float  # max float64 norm of the queries
    top_t: float  # ... of the targets
    query_ids: np.ndarray  # (R,) int64 store ids
    target_ids: np.ndarray  # (C,) int64


def max_norm(x: np.ndarray, ids: np.ndarray, chunk: int = 1 << 14) -> float:
    """Largest float64 row norm of ``x``; a NaN or infinite row is an InputError naming it."""
    top = 0.0
    for s in range(0, len(x), chunk):
        y = np.asarray(x[s:s + chunk], dtype=np.float64)
        n2 = np.einsum("ij,ij->i", y, y)
        if not np.isfinite(n2).all():
            bad = s + int(np.flatnonzero(~np.isfinite(n2))[0])
            raise InputError(f"row {int(ids[bad])} holds NaN or inf",
                             "re-run embed; check the encoder")
        if len(n2):
            top = max(top, math.sqrt(float(n2.max())))
    return top


def read_tile(problem: Problem, tile: Tile) -> TileRows:
    """Read exactly the rows of one tile through the problem's reader."""
    q_ids = problem.anchor_ids(tile.anchor_start, tile.anchor_stop)
    if tile.kind == "anchors":
        t_ids = problem.anchor_ids(tile.start, tile.stop)
        targets = problem.read_anchors(tile.start, tile.stop)
        queries = targets[: len(q_ids)] if tile.triangle \
            else problem.read_anchors(tile.anchor_start, tile.anchor_stop)
    else:
        keep = problem.rest_mask(tile.start, tile.stop)
        rows = problem.reader.rows(tile.start, tile.stop)
        targets = rows[keep] if not keep.all() else rows
        t_ids = np.arange(tile.start, tile.stop, dtype=np.int64)[keep]
        queries = problem.read_anchors(tile.anchor_start, tile.anchor_stop)
    top_t = max_norm(targets, t_ids)
    top_q = max_norm(queries, q_ids) if not tile.triangle else \
        max_norm(queries, q_ids[: len(queries)])
    return TileRows(queries, targets, tile.triangle, top_q, top_t, q_ids, t_ids)


# ---------------------------------------------------------------------------------------------
# what an engine is


Candidates = tuple[np.ndarray, np.ndarray]  # (i, j) int64 local query / target rows


class Engine(Protocol):
    """A candidate generator for the tiles of one :class:`Problem`.

    Built from the problem (with its run-wide ``engine_plan``: nothing is fitted again; without
    one the engine fits it from a sample of the problem's rows). ``plan()`` is that run-wide
    record, to be handed to the other tiles' engines. ``info`` is a JSON-able description
    (precision, margin, kernel ...). ``tile(rows)`` yields batches of local pairs ``(i, j)``
    (query row ``i``, target row ``j``; ``j > i`` in a triangle) that include every pair whose
    exact score is ``>= lo`` and ``<= hi`` (and usually few others).
    """

    info: dict[str, Any]

    def plan(self) -> EnginePlan: ...

    def tile(self, rows: TileRows) -> Iterator[Candidates]: ...

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
