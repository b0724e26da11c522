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

import functools
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
    EnginePlan,
    Problem,
    TileRows,
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


@functools.cache
def _lower_mask(rows: int) -> torch.Tensor:
    """-inf on and below the diagonal of a rows x rows square, 0 above (made once: every
    tile's engine shares it). t <= p only in the first such square of a row tile's first
    column tile; adding -inf there is 6x faster than masked_fill_ on the CPU (scores are
    finite)."""
    import torch

    return torch.zeros(rows, rows).masked_fill_(
        torch.ones(rows, rows, dtype=torch.bool).tril(), float("-inf"))


class TorchCPUEngine:
    """Fits its plan (rotation, d', margin rule) from a sample of the problem when the problem
    carries none, else takes the run-wide one as it is; then computes tiles."""

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
        if problem.engine_plan is not None:
            self._adopt(problem.engine_plan)
        else:
            with torch_threads(self.threads):
                self._plan(dims)
        assert self.margin_rel > 0
        self._local = threading.local()
        self._lower: torch.Tensor | None = None
        self.pool: ThreadPoolExecutor | None = None

    # -- planning (once per run, on a sample) ---------------------------------------------

    def plan(self) -> EnginePlan:
        keys = ("kernel", "margin_rel", "pruning")
        arrays = {} if self.rot is None else {"rotation": self.rot.r}
        return EnginePlan({k: self.info[k] for k in keys if k in self.info}
                          | {"dims": self.dims,
                             "orthogonality_error": None if self.rot is None else self.rot.eps},
                          arrays)

    def _adopt(self, plan: EnginePlan) -> None:
        self.dims = plan.info["dims"]
        self.margin_rel = float(plan.info["margin_rel"])
        if self.dims is not None:
            r = plan.arrays["rotation"]
            self.rot = prune.Rotation(r=r, eps=float(plan.info["orthogonality_error"]),
                                      energy=np.zeros(len(r)))
        for k in ("kernel", "pruning"):
            if k in plan.info:
                self.info[k] = plan.info[k]
        self.info["margin_rel"] = self.margin_rel

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
            self._fit(self.problem.sample_ids(prune.SAMPLE_ROWS))
            self.info["pruning"] = {"dims": dims, "reason": "given"}
        else:
            self.info["pruning"] = {"dims": None, "reason": "given"}
        if self.dims is not None:
            assert self.rot is not None
            self.margin_rel = prune.pruned_margin(self.dims, self.rot, d)
            self.rot = prune.Rotation(self.rot.r[: self.dims], self.rot.eps, self.rot.energy)
            self.info["kernel"] = f"pruned fp32 GEMM, width {self.dims + 1}, row-max gated"
        else:
            self.rot = None
            self.margin_rel = prune.full_margin(d)
            self.info["kernel"] = f"full fp32 GEMM, width {d}, row-max gated, two-sided"
        self.info["margin_rel"] = self.margin_rel

    def _sample(self, ids: np.ndarray) -> np.ndarray:
        sample = np.asarray(self.problem.reader.take(ids), dtype=np.float64)
        if not np.isfinite(sample).all():
            raise InputError("the vectors hold NaN or inf", "re-run embed; check the encoder")
        return sample

    def _fit(self, ids: np.ndarray) -> None:
        self.rot = prune.fit_rotation(self._sample(ids))

    def _choose_dims(self) -> int | None:
        # Survivor rates are measured on rows the rotation was NOT fitted on: fitted rows are
        # too well explained by their own principal directions (in 2048-D, 8192 fitted rows
        # put 6.6% of their energy in 64 directions, unseen rows 3.1%), which made the rates
        # 170x too optimistic there.
        m = self.problem.m
        held = min(2 * prune.PAIR_SAMPLE, m // 2)
        ids = self.problem.sample_ids(min(m, prune.SAMPLE_ROWS + held))
        ids = ids[np.random.default_rng(1).permutation(len(ids))]
        self._fit(np.sort(ids[held:]))
        assert self.rot is not None
        test = self._sample(np.sort(ids[:held]))
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

    # -- the tiles ---------------------------------------------------------------------------

    def _tile_matrix(self, x: np.ndarray, chunk: int = 1 << 14) -> torch.Tensor:
        """Rows as tile rows: ``[x'_1, tail]`` (float64 rotation, chunked) or fp32 rows."""
        import torch

        if self.dims is None:
            rows = np.ascontiguousarray(x, dtype=np.float32)
            # torch wants writable memory: a read-only view of a float32 store is copied
            return torch.from_numpy(rows if rows.flags.writeable else rows.copy())
        assert self.rot is not None
        out = np.empty((len(x), self.dims + 1), dtype=np.float32)
        for s in range(0, len(x), chunk):
            out[s:s + chunk] = prune.head_matrix(np.asarray(x[s:s + chunk], dtype=np.float64),
                                                 self.rot, self.dims)
        return torch.from_numpy(out)

    def _start(self) -> None:

        if self._lower is not None:
            return
        self._lower = _lower_mask(self.tile_rows)
        # One single-threaded worker per core, each on whole sub-tiles: no barrier after every
        # GEMM as with torch's own pool, so a worker descheduled by other load delays only
        # its sub-tile (measured: up to 9x slower runs with the intra-op pool on a busy host).
        if self.threads > 1:
            self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="band-tiles")

    def tile(self, rows: TileRows) -> Iterator[Candidates]:
        import torch

        self._start()
        margin = self.margin_rel * max(rows.top_q * rows.top_t, 1e-30)
        thr_lo = round_down_f32(self.band.lo - margin)
        thr_hi = -round_down_f32(-(self.band.hi + margin))  # rounded up
        self.info.update(margin=max(margin, self.info.get("margin", 0.0)),
                         threshold=min(thr_lo, self.info.get("threshold", thr_lo)),
                         max_norm=max(rows.top_t, self.info.get("max_norm", 0.0)))
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        restore = strict_matmul()
        try:
            b = self._tile_matrix(rows.targets)
            a = b[: len(rows.queries)] if rows.triangle else self._tile_matrix(rows.queries)
            nq, nt, tr, tc = len(a), len(b), self.tile_rows, self.tile_cols
            subs = ((r0, min(r0 + tr, nq), c0, min(c0 + tc, nt))
                    for r0 in range(0, nq, tr)
                    for c0 in range(r0 if rows.triangle else 0, nt, tc))

            def one(t: tuple[int, int, int, int]) -> Candidates | None:
                return self._sub(a, b, *t, rows.triangle, thr_lo, thr_hi)

            results = self._parallel(subs, one) if self.pool is not None \
                else (one(t) for t in subs)
            batcher = CandidateBatcher()
            for res in results:
                if res is not None:
                    out = batcher.add(*res)
                    if out is not None:
                        yield out
            last = batcher.flush()
            if last is not None:
                yield last
        finally:
            restore()
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)

    def _parallel(self, subs: Iterator[tuple[int, int, int, int]],
                  one: Callable[[tuple[int, int, int, int]], Candidates | None]
                  ) -> Iterator[Candidates | None]:
        """Sub-tiles on the worker pool, a few per worker in flight (bounded memory)."""
        assert self.pool is not None
        pending: deque[Future[Candidates | None]] = deque()
        for t in subs:
            pending.append(self.pool.submit(one, t))
            if len(pending) >= 4 * self.threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def _sub(self, a: torch.Tensor, b: torch.Tensor, r0: int, r1: int, c0: int, c1: int,
             triangle: bool, thr_lo: float, thr_hi: float) -> Candidates | None:
        """One sub-tile: GEMM into this thread's buffer, row max, extract the rows that reach
        the threshold. Runs on a worker thread (torch ops release the GIL)."""
        import torch

        local = self._local
        assert self._lower is not None
        if not hasattr(local, "buf"):
            local.buf = torch.empty(self.tile_rows * self.tile_cols, dtype=torch.float32)
            local.rowmax = torch.empty(self.tile_rows, dtype=torch.float32)
        rows = r1 - r0
        tile = local.buf[: rows * (c1 - c0)].view(rows, c1 - c0)
        torch.mm(a[r0:r1], b[c0:c1].t(), out=tile)
        if triangle and c0 == r0:  # the diagonal square; c1 - c0 >= rows (tile_cols >= rows)
            tile[:, :rows].add_(self._lower[:rows, :rows])
        mx = local.rowmax[:rows]
        torch.amax(tile, 1, out=mx)
        flagged = torch.nonzero(mx >= thr_lo).squeeze(1)
        if flagged.numel() == 0:
            return None
        sub = tile.index_select(0, flagged)
        hit = sub >= thr_lo
        if self.dims is None:  # exact fp32 scores: gate both sides
            hit &= sub <= thr_hi
        ij = torch.nonzero(hit)
        return (flagged[ij[:, 0]] + r0).numpy(), (ij[:, 1] + c0).numpy()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
        self._local = threading.local()
        self._lower = None
