"""The fused GPU kernel: scores stay in registers, tiles gated by their max, hits appended.

One Triton program per ``BM x BN`` piece of a tile (its upper triangle only, when the tile's
queries are its first targets): it accumulates the fp16
dot products in fp32 registers, and only if the tile holds a score ``>= thr`` (rare) does it
append its candidate ``(p, t)`` pairs to a bounded buffer, each hit taking a slot from one
atomic counter. Nothing else is written: the score tile never reaches memory, which is what
the two-pass engine pays for. If the counter ends above the buffer's capacity, the
tile is run again with a buffer large enough (the counter says exactly how large).

Margin as in torch_cuda (fp16 inputs, fp32 accumulation) without the fp16 output rounding;
the threshold is rounded down to an fp32 value, which is what a Triton float argument is.
Runs on the CPU under ``TRITON_INTERPRET=1`` (the tests do that, in a subprocess).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from pairmine.engines.band import Band, Candidates, Problem, TileRows
from pairmine.engines.torch_cuda import DeviceTilesBase

log = logging.getLogger(__name__)

BM, BN = 128, 128
INITIAL_CAPACITY = 1 << 16


@functools.cache
def band_kernel() -> Any:
    """The jitted kernel (built on first use, so TRITON_INTERPRET is read then)."""
    import triton  # type: ignore[import-untyped]
    import triton.language as tl  # type: ignore[import-untyped]

    # Triton reads the parameters' annotations itself: only the constexpr ones carry one
    @triton.jit  # type: ignore[untyped-decorator]
    def _band_tiles(q_ptr, q_stride, t_ptr, t_stride, nq, nt, d, thr,  # type: ignore[no-untyped-def]
                    count_ptr, out_p_ptr, out_t_ptr, capacity, TRIANGLE: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        # axis 0 walks the (many) column tiles: grid y/z are limited to 65535
        col0 = tl.program_id(0) * BN
        row0 = tl.program_id(1) * BM
        # in a triangle (query i is target i) a tile wholly below the diagonal has nothing
        if TRIANGLE:  # noqa: SIM108 (a constexpr branch: Triton compiles one side only)
            active = col0 + BN - 1 > row0
        else:
            active = True
        if active:
            rows = row0 + tl.arange(0, BM)
            cols = col0 + tl.arange(0, BN)
            rmask = rows < nq
            cmask = cols < nt
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            for k0 in range(0, d, BK):
                ks = k0 + tl.arange(0, BK)
                kmask = ks < d
                a = tl.load(q_ptr + rows.to(tl.int64)[:, None] * q_stride + ks[None, :],
                            mask=rmask[:, None] & kmask[None, :], other=0.0)
                b = tl.load(t_ptr + cols.to(tl.int64)[None, :] * t_stride + ks[:, None],
                            mask=cmask[None, :] & kmask[:, None], other=0.0)
                acc = tl.dot(a, b, acc)
            hit = (acc >= thr) & rmask[:, None] & cmask[None, :]
            if TRIANGLE:
                hit = hit & (cols[None, :] > rows[:, None])
            if tl.max(hit.to(tl.int32)) > 0:
                slot = tl.atomic_add(count_ptr + tl.zeros((BM, BN), dtype=tl.int32), 1,
                                     mask=hit)
                ok = hit & (slot < capacity)
                tl.store(out_p_ptr + slot, rows[:, None] + tl.zeros((BM, BN), dtype=tl.int32),
                         mask=ok)
                tl.store(out_t_ptr + slot, cols[None, :] + tl.zeros((BM, BN), dtype=tl.int32),
                         mask=ok)

    return _band_tiles


class FusedEngine(DeviceTilesBase):
    kernel = "triton fused (tile in registers, max-gated, atomic append)"

    def __init__(self, problem: Problem, band: Band, memory_budget: int, *,
                 device: str = "cuda", block: tuple[int, int] = (BM, BN), num_warps: int = 8,
                 num_stages: int = 3) -> None:
        super().__init__(problem, band, memory_budget, device=device, dtype="float16",
                         out_rounding=False)
        self.capacity = INITIAL_CAPACITY
        self.num_warps, self.num_stages = num_warps, num_stages
        self.bm, self.bn = block
        self.info["tile"] = [self.bm, self.bn]
        self.info["relaunches"] = 0
        self._out: tuple[Any, Any, Any] | None = None

    def close(self) -> None:
        super().close()
        self._out = None

    def tile(self, rows: TileRows) -> Iterator[Candidates]:
        import torch

        nq, nt, d = len(rows.queries), len(rows.targets), int(rows.targets.shape[1])
        if nq == 0 or nt == 0 or (rows.triangle and nt < 2):
            return
        if nt >= 2**31 - self.bn or nq >= 2**31 - self.bm:
            raise ValueError("a tile of 2^31 rows or more: int32 positions overflow")
        q, t, thr = self.upload(rows)
        kernel = band_kernel()
        bk = 16
        while bk < min(d, 64):
            bk *= 2
        grid = (-(-nt // self.bn), -(-nq // self.bm))
        while True:
            if self._out is None or len(self._out[0]) < self.capacity:
                self._out = (torch.empty(self.capacity, dtype=torch.int32, device=t.device),
                             torch.empty(self.capacity, dtype=torch.int32, device=t.device),
                             torch.zeros(1, dtype=torch.int32, device=t.device))
            out_p, out_t, count = self._out
            count.zero_()
            extra = {} if t.device.type == "cpu" else {"num_warps": self.num_warps,
                                                        "num_stages": self.num_stages}
            kernel[grid](q, q.stride(0), t, t.stride(0), nq, nt, d, thr, count, out_p, out_t,
                         self.capacity, TRIANGLE=rows.triangle, BM=self.bm, BN=self.bn, BK=bk,
                         **extra)
            n = int(count.item())  # the one sync of the tile
            if n <= self.capacity:
                break
            self.capacity = 1 << (n - 1).bit_length()
            self.info["relaunches"] += 1
            log.debug("candidate buffer overflow (%d hits): relaunching with %d slots", n,
                      self.capacity)
        if n:
            p = out_p[:n].to(torch.int64).cpu().numpy()
            j = out_t[:n].to(torch.int64).cpu().numpy()
            yield np.asarray(p), np.asarray(j)
