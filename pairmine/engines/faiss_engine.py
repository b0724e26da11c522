"""FAISS flat range search as a band engine (the baseline; CPU only).

FAISS's inner-product ``range_search`` keeps ``score > radius`` (strict), computes scores in
float32, returns self-matches and both orders, and its memory grows with its results. So:
radius = one float32 step below ``lo - safety`` (safety covers FAISS's float32 error), query
in sub-batches sized so that even a worst-case result list fits the memory budget, keep only
``t > p`` in a triangle tile (which drops self-matches and the second order), and leave ``hi``
to the exact rescore. Only the triangle is searched: queries ``[q0, q1)`` of a triangle tile
scan its targets ``[q0, m)`` only.

This calls ``faiss.range_search_inner_product`` directly, the kernel ``IndexFlatIP.range_search``
runs, so a slice of the target matrix can be searched without copying it into an index.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from pairmine.engines.band import (
    MARGIN_FLOOR,
    Band,
    CandidateBatcher,
    Candidates,
    EnginePlan,
    Problem,
    TileRows,
)
from pairmine.runtime import cpu_count

log = logging.getLogger(__name__)

U32 = 2.0**-24


class FaissEngine:
    def __init__(self, problem: Problem, band: Band, memory_budget: int,
                 device_requested: str = "cpu", query_batch: int | None = None,
                 threads: int | None = None) -> None:
        self.problem, self.band, self.budget = problem, band, memory_budget
        d = problem.dim
        self.query_batch = query_batch
        self.threads = threads or cpu_count()
        # float32 dot of d terms: error <= (d + 2) u32 |x||y| in any summation order
        self.safety_rel = max(2.0 * (d + 2) * U32, MARGIN_FLOOR)
        self.info: dict[str, Any] = {
            "engine": "faiss", "device": "cpu", "kernel": "faiss.range_search_inner_product",
            "precision": "float32", "safety_rel": self.safety_rel, "threads": self.threads,
        }
        if device_requested == "cuda":
            self.info["note"] = ("FAISS has no GPU range_search: the faiss engine ran on the "
                                 "CPU although device=cuda was asked for")

    def plan(self) -> EnginePlan:
        return EnginePlan({"kernel": self.info["kernel"], "safety_rel": self.safety_rel})

    def _batch(self, m: int) -> int:
        # a result entry is 12 bytes (int64 label + float32 score); a query can return at most
        # m of them. FAISS's range search runs ~6x slower per query below ~1000 queries per
        # call (measured: 894 vs 1024 queries, 1.32 vs 0.18 ms per query at N=50k), so a
        # sub-batch has 1024..4096 queries and only degenerate data (a large share of all
        # pairs above lo) can make its results outgrow the budget
        if self.query_batch:
            return self.query_batch
        fit = self.budget // 4 // (12 * max(m, 1))
        return int(max(1024, min(4096, fit)))

    def tile(self, rows: TileRows) -> Iterator[Candidates]:
        import faiss

        faiss.omp_set_num_threads(self.threads)
        safety = self.safety_rel * max(rows.top_q * rows.top_t, 1e-30)
        r = np.float32(self.band.lo - safety)
        if float(r) > self.band.lo - safety:
            r = np.nextafter(r, np.float32(-np.inf))
        # strict "> radius": one more step down keeps scores equal to lo - safety
        radius = float(np.nextafter(r, np.float32(-np.inf)))
        self.info.update(max_norm=max(rows.top_t, self.info.get("max_norm", 0.0)),
                         safety=max(safety, self.info.get("safety", 0.0)),
                         radius=min(radius, self.info.get("radius", radius)))
        d = self.problem.dim
        targets = np.ascontiguousarray(rows.targets, dtype=np.float32)
        queries = targets[: len(rows.queries)] if rows.triangle \
            else np.ascontiguousarray(rows.queries, dtype=np.float32)
        nq, nt = len(queries), len(targets)
        batch = self._batch(nt)
        self.info["query_batch"] = batch
        batcher = CandidateBatcher()
        for q0 in range(0, nq, batch):
            q1 = min(q0 + batch, nq)
            lo_t = q0 if rows.triangle else 0  # t > p >= q0: the targets before q0 cannot pair
            xq = np.ascontiguousarray(queries[q0:q1])
            xb = targets[lo_t:]
            if len(xb) == 0:
                continue
            res = faiss.RangeSearchResult(q1 - q0)
            faiss.range_search_inner_product(
                faiss.swig_ptr(xq), faiss.swig_ptr(xb), d, q1 - q0, len(xb), radius, res)
            lims = faiss.rev_swig_ptr(res.lims, q1 - q0 + 1).astype(np.int64)
            nres = int(lims[-1])
            labels = faiss.rev_swig_ptr(res.labels, nres).copy() if nres else \
                np.zeros(0, np.int64)
            p = np.repeat(np.arange(q0, q1, dtype=np.int64), np.diff(lims))
            t = labels.astype(np.int64) + lo_t
            keep = t > p if rows.triangle else np.ones(len(p), dtype=bool)
            out = batcher.add(p[keep], t[keep])
            if out is not None:
                yield out
        last = batcher.flush()
        if last is not None:
            yield last

    def close(self) -> None:
        pass
