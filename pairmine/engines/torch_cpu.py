"""The CPU engine: exact pruning with fp32 GEMM tiles of the upper triangle, row-max gated.

Per row tile (``tile_rows`` queries) and column tile (``tile_cols`` targets, starting at the
row tile's first query so only the first column tile touches the diagonal):

    tile = A @ B.T              one fp32 GEMM into a preallocated, cache-sized buffer
    rowmax = amax(tile, 1)      one read of the tile
    rows with rowmax >= thr     usually none; only those rows are read again to extract
                                their candidate columns

With pruning, A and B are the rotated head plus tail norm (``d' + 1`` wide, prune.py) and the
tile holds upper bounds; without (``dims=None``: pruning does not pay for this data), they are
the stored rows in fp32 and the tile holds fp32 scores, gated on both sides of the band.
Every candidate is rescored exactly by the caller. The tile precision is always fp32 on the
CPU (hardware.cpu_tile_dtype says why).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from pairmine.engines import prune
from pairmine.engines.band import (
    Band,
    CandidateBatcher,
    Candidates,
    Problem,
    round_down_f32,
)
from pairmine.engines.hardware import (
    cpu_capability,
    cpu_tile_dtype,
    strict_matmul,
    torch_threads,
)
from pairmine.errors import ConfigError, InputError
from pairmine.runtime import cpu_count

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# measured on a 2-core AVX2 EPYC (benchmarks/match.py --calibrate): for widths 17..65 a
# 1024 x 2048 fp32 tile (8 MiB) ran the GEMM + row max fastest, 0.37-0.55 ns per pair
TILE_ROWS = 1024
TILE_COLS = 2048
MIN_ROWS_TO_PRUNE = 4096  # below this the set-up (sample, rotation) costs more than it saves


class TorchCPUEngine:
    def __init__(self, problem: Problem, band: Band, memory_budget: int, *,
                 dims: int | str | None = "auto", tile_rows: int = TILE_ROWS,
                 tile_cols: int = TILE_COLS, threads: int | None = None) -> None:
        self.problem, self.band, self.budget = problem, band, memory_budget
        self.tile_rows, self.tile_cols = tile_rows, max(tile_cols, tile_rows)
        self.threads = threads or cpu_count()
        dtype, why = cpu_tile_dtype()
        self.info: dict[str, Any] = {
            "engine": "torch", "device": "cpu", "precision": dtype, "precision_reason": why,
            "cpu_capability": cpu_capability(), "threads": self.threads,
            "tile": [self.tile_rows, self.tile_cols],
        }
        self.rot: prune.Rotation | None = None
        self.dims: int | None = None
        self.margin_rel: float
        with torch_threads(self.threads):
            self._plan(dims)
        assert self.margin_rel > 0
        self.mat: torch.Tensor | None = None  # targets as tile rows (head or fp32), if resident
        self.thr_lo = self.thr_hi = 0.0
        self._threads_before: int | None = None
        self._restore: Callable[[], None] | None = None
        self._lower: torch.Tensor | None = None
        self._local = threading.local()
        self.pool: ThreadPoolExecutor | None = None
        self._prepared = False

    # -- planning ------------------------------------------------------------------------

    def _plan(self, dims: int | str | None) -> None:
        m, d = self.problem.m, self.problem.dim
        if dims == "auto":
            self.dims = self._choose_dims() if m >= MIN_ROWS_TO_PRUNE and d > 16 else None
            if m < MIN_ROWS_TO_PRUNE or d <= 16:
                self.info["pruning"] = {"dims": None, "reason": "problem too small to prune"}
        elif dims is not None:
            if not isinstance(dims, int) or not 1 <= dims < d:
                raise ConfigError(f"pruning dims {dims!r} must be an integer in [1, {d})")
            self.dims = dims
            self._fit(prune.sample_positions(m, prune.SAMPLE_ROWS))
            self.info["pruning"] = {"dims": dims, "reason": "given"}
        else:
            self.info["pruning"] = {"dims": None, "reason": "given"}
        if self.dims is not None:
            assert self.rot is not None
            self.margin_rel = prune.pruned_margin(self.dims, self.rot, d)
            self.info["kernel"] = f"pruned fp32 GEMM, width {self.dims + 1}, row-max gated"
        else:
            self.margin_rel = prune.full_margin(d)
            self.info["kernel"] = f"full fp32 GEMM, width {d}, row-max gated, two-sided"
        self.info["margin_rel"] = self.margin_rel

    def _fit(self, positions: np.ndarray) -> None:
        sample = prune.sample_rows(self.problem, positions)
        if not np.isfinite(sample).all():
            raise InputError("the vectors hold NaN or inf", "re-run embed; check the encoder")
        self.rot = prune.fit_rotation(sample)

    def _choose_dims(self) -> int | None:
        # Survivor rates are measured on rows the rotation was NOT fitted on: fitted rows are
        # too well explained by their own principal directions (in 2048-D, 8192 fitted rows
        # put 6.6% of their energy in 64 directions, unseen rows 3.1%), which made the rates
        # 170x too optimistic there.
        m = self.problem.m
        held = min(2 * prune.PAIR_SAMPLE, m // 2)
        positions = prune.sample_positions(m, min(m, prune.SAMPLE_ROWS + held))
        positions = positions[np.random.default_rng(1).permutation(len(positions))]
        self._fit(np.sort(positions[held:]))
        assert self.rot is not None
        test = prune.sample_rows(self.problem, positions[:held])
        norms = np.sqrt(np.einsum("ij,ij->i", test, test))
        top = float(norms.max()) ** 2 if len(norms) else 1.0
        # gate thresholds as the search will use them (margin taken at its largest candidate)
        slack = prune.pruned_margin(prune.LADDER[-1], self.rot, self.problem.dim) * top
        choice = prune.choose_dims(test, self.rot, self.band.lo - slack, self.band.hi + slack)
        self.info["pruning"] = {
            "dims": choice.dims, "rotation": "pca (uncentred second moment)",
            "sample_rows": m if m <= held else min(m - held, prune.SAMPLE_ROWS),
            "held_out_rows": held, "sample_pairs": choice.sample_pairs,
            "survivor_rate": {str(k): v for k, v in choice.rates.items()},
            "full_rate": choice.full_rate,
            "modelled_ns_per_pair": {k: round(v, 4) for k, v in choice.costs.items()},
            "energy_in_dims": None if choice.dims is None
            else float(self.rot.energy[choice.dims - 1]),
            "orthogonality_error": self.rot.eps,
        }
        return choice.dims

    # -- the search ----------------------------------------------------------------------

    def _tile_rows_of(self, start: int, stop: int) -> np.ndarray:
        """Targets ``[start, stop)`` as tile rows: ``[x'_1, tail]`` or the fp32 row."""
        x = self.problem.rows(start, stop)
        if self.dims is None:
            return np.ascontiguousarray(x, dtype=np.float32)
        assert self.rot is not None
        return prune.head_matrix(x.astype(np.float64), self.rot, self.dims)

    def prepare(self) -> None:
        import torch

        if self._prepared:
            return
        p = self.problem
        width = p.dim if self.dims is None else self.dims + 1
        resident = p.m * width * 4 <= self.budget // 2
        chunk = max(1, self.budget // 8 // (8 * p.dim))
        mat = np.empty((p.m, width), dtype=np.float32) if resident else None
        top_q = top_t = 0.0
        for s, e in p.chunks(chunk):
            x = p.rows(s, e).astype(np.float64)
            n = np.sqrt(np.einsum("ij,ij->i", x, x))
            if not np.isfinite(n).all():
                bad = s + int(np.flatnonzero(~np.isfinite(n))[0])
                raise InputError(f"row {int(p.target_ids[bad])} holds NaN or inf",
                                 "re-run embed; check the encoder")
            if len(n):
                top_t = max(top_t, float(n.max()))
                if s < p.n_anchors:
                    top_q = max(top_q, float(n[: p.n_anchors - s].max()))
            if mat is not None:
                if self.dims is None:
                    mat[s:e] = x
                else:
                    assert self.rot is not None
                    mat[s:e] = prune.head_matrix(x, self.rot, self.dims)
        self.mat = torch.from_numpy(mat) if mat is not None else None
        margin = self.margin_rel * max(top_q * top_t, 1e-30)
        self.thr_lo = round_down_f32(self.band.lo - margin)
        self.thr_hi = -round_down_f32(-(self.band.hi + margin))  # rounded up
        self.info.update(max_norm=top_t, margin=margin, threshold=self.thr_lo,
                         targets_resident=resident)
        # t <= p only in the first rows x rows square of a row tile's first column tile;
        # adding -inf there is 6x faster than masked_fill_ on the CPU (scores are finite)
        tr = self.tile_rows
        self._lower = torch.zeros(tr, tr).masked_fill_(
            torch.ones(tr, tr, dtype=torch.bool).tril(), float("-inf"))
        # One single-threaded worker per core, each on whole tiles: no barrier after every
        # GEMM as with torch's own pool, so a worker descheduled by other load delays only
        # its tile (measured: up to 9x slower runs with the intra-op pool on a busy host).
        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(1)
        if self.threads > 1:
            self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="band-tiles")
        self._restore = strict_matmul()
        self._prepared = True

    def _block(self, start: int, stop: int) -> torch.Tensor:
        import torch

        if self.mat is not None:
            return self.mat[start:stop]
        return torch.from_numpy(self._tile_rows_of(start, stop))

    def candidates(self, start: int, stop: int) -> Iterator[Candidates]:
        self.prepare()
        m, tr, tc = self.problem.m, self.tile_rows, self.tile_cols
        tiles = ((r0, min(r0 + tr, stop), c0, min(c0 + tc, m))
                 for r0 in range(start, stop, tr) for c0 in range(r0, m, tc))
        results = self._parallel(tiles) if self.pool is not None \
            else (self._tile(*t) for t in tiles)
        batcher = CandidateBatcher()
        for res in results:
            if res is not None:
                out = batcher.add(*res)
                if out is not None:
                    yield out
        last = batcher.flush()
        if last is not None:
            yield last

    def _parallel(self, tiles: Iterator[tuple[int, int, int, int]]
                  ) -> Iterator[Candidates | None]:
        """Tiles on the worker pool, at most a few per worker in flight (bounded memory)."""
        assert self.pool is not None
        pending: deque[Future[Candidates | None]] = deque()
        for t in tiles:
            pending.append(self.pool.submit(self._tile, *t))
            if len(pending) >= 4 * self.threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def _tile(self, r0: int, r1: int, c0: int, c1: int) -> Candidates | None:
        """One tile: GEMM into this thread's buffer, row max, extract the rows that reach
        the threshold. Runs on a worker thread (torch ops release the GIL)."""
        import torch

        local = self._local
        assert self._lower is not None
        if not hasattr(local, "buf"):
            local.buf = torch.empty(self.tile_rows * self.tile_cols, dtype=torch.float32)
            local.rowmax = torch.empty(self.tile_rows, dtype=torch.float32)
        rows = r1 - r0
        tile = local.buf[: rows * (c1 - c0)].view(rows, c1 - c0)
        torch.mm(self._block(r0, r1), self._block(c0, c1).t(), out=tile)
        if c0 == r0:  # the diagonal square; c1 - c0 >= rows as tile_cols >= tile_rows, m >= r1
            tile[:, :rows].add_(self._lower[:rows, :rows])
        mx = local.rowmax[:rows]
        torch.amax(tile, 1, out=mx)
        flagged = torch.nonzero(mx >= self.thr_lo).squeeze(1)
        if flagged.numel() == 0:
            return None
        sub = tile.index_select(0, flagged)
        hit = sub >= self.thr_lo
        if self.dims is None:  # exact fp32 scores: gate both sides
            hit &= sub <= self.thr_hi
        ij = torch.nonzero(hit)
        return (flagged[ij[:, 0]] + r0).numpy(), (ij[:, 1] + c0).numpy()

    def close(self) -> None:
        import torch

        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
        self._local = threading.local()
        if self._threads_before is not None and self._threads_before != torch.get_num_threads():
            torch.set_num_threads(self._threads_before)
        self._threads_before = None
        if self._restore is not None:
            self._restore()
            self._restore = None
        self.mat = None
        self._prepared = False
