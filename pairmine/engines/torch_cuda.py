"""The GPU engine: fp16 tiles of the upper triangle, two passes per block, a proven margin.

GPUs multiply fp16 at ~750 TFLOP/s, so no pruning: the whole row is one tile row and the cost
is writing and reading the score tile (DESIGN.md, performance anchors). Per tile (a run of
anchor rows against a run of target rows, ~1M x 1M on a GPU) and per ``tile_rows`` queries:

    pass 1   for each column tile: tile = A @ B.T (fp16 out, fp32 accumulate); row max of the
             tile into a (tiles, rows) buffer. No host sync in this loop.
    sync     rows whose max over any tile reaches the threshold (one nonzero).
    pass 2   only those rows, recomputed against every column in budget-sized chunks, compared
             and extracted. Few rows: a few per cent of pass 1.

Margin (relative to max|x| max|y|): rounding the stored rows to fp16 (none for a float16 store;
``2u + u^2`` plus a subnormal term otherwise, u = 2^-11), fp32 accumulation (tensor cores
align addends with truncation: counted as ``4 (d + 2) 2^-24``), and rounding the result to
fp16 (``2^-11``). All doubled. The threshold is rounded *down* to an fp16 value and the
comparison is made between fp16 values, so it is exact: comparing a half tensor with a Python
float would round the threshold to nearest, possibly up, and lose pairs.

The same code runs on the CPU with ``device="cpu"`` (and fp16 or fp32 tiles), which is how the
tests exercise it on machines without a GPU.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from pairmine.engines.band import (
    MARGIN_FLOOR,
    Band,
    CandidateBatcher,
    Candidates,
    EnginePlan,
    Problem,
    TileRows,
    round_down_f16,
    round_down_f32,
)
from pairmine.engines.hardware import strict_matmul

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

U32 = 2.0**-24
U16 = 2.0**-11
TILE_COLS = 1 << 15
FP16_MAX_DOT = 2.0**14  # beyond this an fp16 score tile could overflow: use fp32 tiles


class DeviceTilesBase:
    """Per tile: the rows uploaded to the device in the tile dtype, the margin and threshold
    from the tile's own row norms. Nothing is fitted: the run-wide plan is the kernel alone."""

    kernel = "base"

    def __init__(self, problem: Problem, band: Band, memory_budget: int, *,
                 device: str = "cuda", dtype: str = "float16", out_rounding: bool = True) -> None:
        if dtype not in ("float16", "float32"):
            raise ValueError(f"tile dtype {dtype!r}")
        self.problem, self.band, self.budget = problem, band, memory_budget
        self.device, self.dtype_name = device, dtype
        self.out_rounding = out_rounding  # the score passes through a tile of dtype
        self.thr = 0.0
        self._restore: Callable[[], None] | None = None
        self.info: dict[str, Any] = {"engine": "torch", "device": device, "kernel": self.kernel,
                                     "precision": f"{dtype} inputs, float32 accumulation"}

    def plan(self) -> EnginePlan:
        return EnginePlan({"kernel": self.kernel, "margin_rule": "per tile, from its row norms"})

    def margin(self, top_q: float, top_t: float, dtype_name: str | None = None) -> float:
        """Absolute prefilter margin for queries of norm <= top_q and targets <= top_t."""
        dtype_name = dtype_name or self.dtype_name
        d = self.problem.dim
        stored = self.problem.dtype
        exact = dtype_name == "float32" or stored == np.float16
        u = U16 if dtype_name == "float16" else U32
        rounding = 0.0 if exact else 2 * u + u * u
        accumulate = 4.0 * (d + 2) * U32
        out = u if (self.out_rounding and dtype_name == "float16") else 0.0
        rel = rounding + accumulate + out * (1 + accumulate)
        # fp16 subnormals lose relative accuracy: absolute error <= 2^-25 per coordinate of an
        # input (|x|_1 <= sqrt(d)|x|) and 2^-25 on an fp16 result
        sub = 0.0
        if dtype_name == "float16":
            sub = 2.0**-25 * (1.0 if self.out_rounding else 0.0)
            if not exact:
                sub += 2.0**-25 * math.sqrt(d) * (top_q + top_t) * (1 + u)
        top = top_q * top_t
        return max(2.0 * rel, MARGIN_FLOOR) * top + 2.0 * sub

    def upload(self, rows: TileRows) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The tile's queries and targets on the device in the tile dtype (the queries a view
        of the targets in a triangle) and the threshold, exact in that dtype."""
        import torch

        dtype_name = self.dtype_name
        if dtype_name == "float16" and rows.top_q * rows.top_t >= FP16_MAX_DOT:
            # fp16 scores (or inputs) could overflow: fp32 tiles for this tile
            log.info("row norms up to %.3g: float32 tiles instead of float16", rows.top_t)
            dtype_name = "float32"
            self.info["precision"] = "float32 (norms too large for float16)"
        dev = torch.device(self.device)
        if dev.type == "cuda" and dev.index is not None:
            torch.cuda.set_device(dev)
        dtype = getattr(torch, dtype_name)

        def put(x: np.ndarray) -> torch.Tensor:
            out = torch.empty(x.shape, dtype=dtype, device=dev)
            step = max(1, self.budget // 8 // (8 * max(x.shape[1], 1)))
            for s in range(0, len(x), step):
                out[s:s + step] = torch.from_numpy(np.ascontiguousarray(x[s:s + step])) \
                    .to(dev).to(dtype)
            return out

        t = put(rows.targets)
        q = t[: len(rows.queries)] if rows.triangle else put(rows.queries)
        margin = self.margin(rows.top_q, rows.top_t, dtype_name)
        lo = self.band.lo - margin
        self.thr = round_down_f16(lo) if dtype_name == "float16" and self.out_rounding \
            else round_down_f32(lo)
        self.info.update(max_norm=max(rows.top_t, self.info.get("max_norm", 0.0)),
                         margin=max(margin, self.info.get("margin", 0.0)),
                         threshold=min(self.thr, self.info.get("threshold", self.thr)))
        if self._restore is None:
            self._restore = strict_matmul()
        return q, t, self.thr

    def close(self) -> None:
        if self._restore is not None:
            self._restore()
            self._restore = None


class TwoPassEngine(DeviceTilesBase):
    kernel = "two-pass fp16 tiles (row max, then flagged rows recomputed)"

    def __init__(self, problem: Problem, band: Band, memory_budget: int, *,
                 device: str = "cuda", dtype: str = "float16", tile_cols: int = TILE_COLS,
                 tile_rows: int | None = None) -> None:
        super().__init__(problem, band, memory_budget, device=device, dtype=dtype)
        esize = 2 if dtype == "float16" else 4
        self.tile_rows = tile_rows or problem.block_rows
        # a score tile takes at most a quarter of the budget; columns >= rows (diagonal tile)
        cols = max(self.tile_rows, min(tile_cols, memory_budget // 4 // (esize * self.tile_rows)))
        self.tile_cols = cols
        self.info["tile"] = [self.tile_rows, self.tile_cols]
        self._lower: torch.Tensor | None = None
        self._buf: torch.Tensor | None = None

    def close(self) -> None:
        super().close()
        self._lower = self._buf = None

    def tile(self, rows: TileRows) -> Iterator[Candidates]:
        import torch

        q, t, thr = self.upload(rows)
        thr_t = torch.tensor(thr, dtype=t.dtype, device=t.device)  # exact: rounded down
        batcher = CandidateBatcher()
        for r0 in range(0, len(q), self.tile_rows):
            r1 = min(r0 + self.tile_rows, len(q))
            for p, j in self._rows(q, t, r0, r1, rows.triangle, thr_t):
                out = batcher.add(p, j)
                if out is not None:
                    yield out
        last = batcher.flush()
        if last is not None:
            yield last

    def _rows(self, q: torch.Tensor, x: torch.Tensor, r0: int, r1: int, triangle: bool,
              thr: torch.Tensor) -> Iterator[Candidates]:
        """Query rows ``[r0, r1)`` against the targets ``x`` (from column ``r0`` on in a
        triangle, where query ``i`` is target ``i``)."""
        import torch

        m = len(x)
        rows, tc = r1 - r0, self.tile_cols
        if self._buf is None or self._buf.dtype != x.dtype or self._buf.device != x.device:
            self._lower = torch.ones(self.tile_rows, self.tile_rows, dtype=torch.bool,
                                     device=x.device).tril()
            self._buf = torch.empty(self.tile_rows * tc, dtype=x.dtype, device=x.device)
        buf = self._buf
        assert self._lower is not None
        lower = self._lower[:rows, :rows]
        a = q[r0:r1]
        c_start = r0 if triangle else 0
        if m <= c_start:
            return
        n_tiles = -(-(m - c_start) // tc)
        rowmax = torch.empty((n_tiles, rows), dtype=x.dtype, device=x.device)
        # pass 1: the row max of every tile; no host sync
        for jt in range(n_tiles):
            c0 = c_start + jt * tc
            c1 = min(c0 + tc, m)
            tile = buf[: rows * (c1 - c0)].view(rows, c1 - c0)
            torch.mm(a, x[c0:c1].t(), out=tile)
            if triangle and jt == 0:
                tile[:, :rows].masked_fill_(lower[:, : c1 - c0], float("-inf"))
            torch.amax(tile, 1, out=rowmax[jt])
        flagged = torch.nonzero((rowmax >= thr).any(0)).squeeze(1)  # one sync
        if flagged.numel() == 0:
            return
        # pass 2: flagged rows against every column, in chunks that fit the budget
        af = a.index_select(0, flagged)
        pf = (flagged + r0).view(-1, 1)
        esize = x.element_size()
        chunk = max(tc, self.budget // 4 // (esize * max(len(flagged), 1)))
        for c0 in range(c_start, m, chunk):
            c1 = min(c0 + chunk, m)
            sub = af @ x[c0:c1].t()
            hit = sub >= thr
            if triangle and c0 <= r1:  # the diagonal: keep t > p only
                cols = torch.arange(c0, c1, device=x.device).view(1, -1)
                hit &= cols > pf
            ij = torch.nonzero(hit)
            p = pf[ij[:, 0], 0].cpu().numpy()
            j = (ij[:, 1] + c0).cpu().numpy()
            yield p, j
