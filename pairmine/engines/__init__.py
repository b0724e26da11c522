"""Exact band search: every pair ``(i, j)``, ``i != j``, whose score lies in ``[lo, hi]``.

The score of a pair is the dot product of the two stored rows, computed exactly (float64 from
the stored float16/float32 values, correctly rounded near any bound: band.exact_band) and
stored as float32. Engines only *propose* candidates, a provable superset of the band found
in low precision with a margin; the exact rescore decides. So every engine returns the same
pairs with the same scores, and block ``k``'s output depends only on (vectors, lo, hi,
anchors, against, block_rows): a resumed run skips the blocks it has and gets the rest equal.

Engines (a registry keyed by name and device):

=================  ===========================================================================
torch, cpu         exact pruning (PCA rotation + tail-norm bound, one fp32 GEMM of width d'+1),
                   row-max gated tiles; full-D fp32 tiles when pruning does not pay
torch, cuda        fused Triton kernel where Triton runs, else two-pass fp16 tiles
faiss, cpu         FAISS flat range_search (IndexFlatIP's kernel) on the triangle; the baseline
=================  ===========================================================================

Memory is bounded by tiles and blocks, independent of N^2 and of the number of pairs (a
block's own pairs excepted: they are its output).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pairmine.engines.band import (
    Band,
    Engine,
    EnginePlan,
    Problem,
    Tile,
    TileShape,
    exact_rows,
    make_problem,
    plan_tiles,
    read_tile,
)
from pairmine.errors import ConfigError
from pairmine.progress import NullProgress, Progress
from pairmine.registry import Registry

log = logging.getLogger(__name__)

DEFAULT_MEMORY_BUDGET = 2 << 30

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "ENGINES",
    "BandSearch",
    "EngineKind",
    "EnginePlan",
    "Kernel",
    "PairBlock",
    "Problem",
    "Tile",
    "TileResult",
    "TileShape",
    "band_search",
    "build_engine",
    "default_block_rows",
    "default_tile_shape",
    "engine_info",
    "engine_names",
    "make_problem",
    "plan_blocks",
    "plan_engine",
    "plan_tiles",
    "resolve_engine",
    "run_tile",
]


@dataclass
class PairBlock:
    """The pairs of one anchor block: ``a < b`` row ids, sorted by ``(a, b)``."""

    index: int  # anchor-block number, 0..n_blocks-1
    a: np.ndarray  # int64 row ids (rows of `vectors`), a < b
    b: np.ndarray  # int64
    score: np.ndarray  # float32: the exact score (float64 dot of the stored rows, rounded)
    candidates: int  # pairs that passed the prefilter and were rescored (for stats)


# ---------------------------------------------------------------------------------------------
# blocks


def default_block_rows(memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Anchors per block when none is given: 4096 for the default 2 GiB budget.

    A block is the unit of output and of resume. It depends on the budget only (not on the
    data or the engine), so ``plan_blocks`` and ``band_search`` agree without seeing the data.
    """
    rows = 1 << max(0, int(memory_budget // (1 << 19)).bit_length() - 1)
    return int(min(max(rows, 256), 1 << 16))


def plan_blocks(n_rows: int, anchors: np.ndarray | None, block_rows: int | None = None,
                memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """How many anchor blocks ``band_search`` will produce for the same arguments."""
    n_anchors = n_rows if anchors is None else len(anchors)
    rows = default_block_rows(memory_budget) if block_rows is None else block_rows
    if isinstance(rows, bool) or not isinstance(rows, int | np.integer) or rows < 1:
        raise ConfigError(f"block_rows={block_rows!r} is not an integer >= 1")
    return -(-int(n_anchors) // int(rows))


# ---------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class Kernel:
    """An engine's implementation for one kind of device (``cpu`` or ``cuda``)."""

    device: str
    # (problem, band, memory budget, device it runs on, device the caller asked for)
    build: Callable[[Problem, Band, int, str, str], Engine]
    describe: Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class EngineKind:
    """A registered engine: its kernels per device. ``auto`` lists the devices on which
    ``--engine auto`` picks it (the first such engine in priority order wins); ``runs_on``
    says where it runs when asked for a device it has no kernel for."""

    name: str
    help: str
    kernels: tuple[Kernel, ...]
    auto: tuple[str, ...] = ()
    runs_on: dict[str, str] = field(default_factory=dict)

    def kernel(self, device: str) -> Kernel | None:
        return next((k for k in self.kernels if k.device == device), None)


def _torch_cpu(problem: Problem, band: Band, budget: int, device: str,
               requested: str) -> Engine:
    from pairmine.engines.torch_cpu import TorchCPUEngine

    return TorchCPUEngine(problem, band, budget)


def _torch_cuda(problem: Problem, band: Band, budget: int, device: str,
                requested: str) -> Engine:
    from pairmine.engines.hardware import triton_available

    if triton_available():
        from pairmine.engines.triton_band import FusedEngine

        return FusedEngine(problem, band, budget, device=device)
    from pairmine.engines.torch_cuda import TwoPassEngine

    return TwoPassEngine(problem, band, budget, device=device)


def _faiss(problem: Problem, band: Band, budget: int, device: str,
           requested: str) -> Engine:
    from pairmine.engines.faiss_engine import FaissEngine

    return FaissEngine(problem, band, budget, device_requested=requested)


def _describe_torch_cpu() -> dict[str, Any]:
    from pairmine.engines.hardware import cpu_capability, cpu_tile_dtype

    dtype, why = cpu_tile_dtype()
    return {"precision": dtype, "precision_reason": why, "cpu_capability": cpu_capability(),
            "kernel": "pruned fp32 GEMM (d' chosen per data) or full fp32, row-max gated"}


def _describe_torch_cuda() -> dict[str, Any]:
    from pairmine.engines.hardware import triton_available

    kernel = "triton fused" if triton_available() else "two-pass fp16 tiles"
    return {"precision": "float16 inputs, float32 accumulation", "kernel": kernel}


def _describe_faiss() -> dict[str, Any]:
    return {"precision": "float32", "kernel": "faiss.range_search_inner_product"}


def _engine_registry() -> Registry[EngineKind]:
    registry: Registry[EngineKind] = Registry(
        "engines", name_of=lambda k: k.name, help_of=lambda k: k.help, error=ConfigError,
        what="engine")
    # what "auto" means per device: measured (docs/matching.md), the pruned torch engine wins
    registry.register(EngineKind(
        "torch", "exact pruning on the CPU; fused Triton or fp16 tiles on CUDA",
        (Kernel("cpu", _torch_cpu, _describe_torch_cpu),
         Kernel("cuda", _torch_cuda, _describe_torch_cuda)), auto=("cpu", "cuda")))
    # FAISS has no GPU range_search: asked for CUDA, it runs on the CPU
    registry.register(EngineKind(
        "faiss", "FAISS flat range_search on the CPU (the baseline)",
        (Kernel("cpu", _faiss, _describe_faiss),), runs_on={"cuda": "cpu"}))
    return registry


ENGINES = _engine_registry()
AUTO = "auto"


def engine_names() -> list[str]:
    """The choices of ``--engine``: ``auto`` then every registered engine."""
    return [AUTO, *ENGINES.names()]


def _cuda_available() -> bool:
    from pairmine.engines.hardware import cuda_available

    return cuda_available()


def resolve_engine(engine: str, device: str) -> tuple[str, str]:
    """What ``auto`` picks here, as ``(engine, device)``; the device the engine really uses
    (``cuda:N`` kept as given)."""
    from pairmine.runtime import device_kind

    if engine != AUTO and engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}",
                          f"choose one of {', '.join(engine_names())}")
    kind = device_kind(device)
    if kind == "auto":
        device = kind = "cuda" if _cuda_available() else "cpu"
    elif kind == "cuda" and not _cuda_available():
        raise ConfigError(f"device {device} was asked for but no CUDA device is available",
                          "use device cpu or auto")
    if engine == AUTO:
        chosen = next((k for k in ENGINES.ordered() if kind in k.auto), None)
        if chosen is None:
            raise ConfigError(f"no registered engine runs on {kind}", "choose --engine")
    else:
        chosen = ENGINES.get(engine)
    if chosen.kernel(kind) is None:
        kind = chosen.runs_on.get(kind, "")
        if chosen.kernel(kind) is None:
            raise ConfigError(f"engine {chosen.name} does not run on {device}",
                              "choose another --engine or --device")
        device = kind
    return chosen.name, device


def _kernel(name: str, device: str) -> Kernel:
    from pairmine.runtime import device_kind

    kernel = ENGINES.get(name).kernel(device_kind(device))
    assert kernel is not None  # resolve_engine picked a kernel that exists
    return kernel


def engine_info(engine: tuple[str, str] | str = "auto", device: str | None = None,
                **search: Any) -> dict[str, Any]:
    """What an engine records in a manifest.

    ``engine_info(resolve_engine(e, d))`` describes the engine without data (precision,
    kernel). With the search's arguments (``vectors=, lo=, hi=``, and optionally ``anchors``,
    ``against``, ``block_rows``, ``memory_budget``) it plans the search and adds what depends on
    the data: pruning dims and survivor rates, margin rule, block size. The most complete
    record is ``band_search(...).info`` after iterating (margin and thresholds included).
    """
    if isinstance(engine, tuple):
        name, dev = engine
    else:
        name, dev = resolve_engine(engine, device or "auto")
    if "vectors" in search:
        return band_search(engine=name, device=dev, **search).info
    return {"engine": name, "device": dev, **_kernel(name, dev).describe(),
            "rescore": "float64 exact (correctly rounded near bounds), stored as float32"}


# ---------------------------------------------------------------------------------------------
# tiles: sizes, the run-wide plan, one tile


# Tile sizes per device kind. CPU: anchors in a few blocks against ~128k target rows (the
# tile's rows are read and converted once, then every anchor sub-tile sweeps them: the read
# and the conversion are ~5% of the GEMM at 16k anchors; measured in benchmarks/match.py).
# CUDA: ~1M x 1M (0.4 s of a fused H100 kernel at D=128), so a 100M-row run is thousands of
# tiles. Both are capped so that a tile's rows take at most half the memory budget.
TILE_ROWS = {"cpu": (16384, 131072), "cuda": (1 << 20, 1 << 20)}


def default_tile_shape(device: str, block_rows: int, dim: int, itemsize: int,
                       memory_budget: int = DEFAULT_MEMORY_BUDGET,
                       target_rows: int | None = None) -> TileShape:
    """Anchor blocks and target rows per tile on ``device``, within the memory budget
    (``target_rows`` given: that many, and anchors at most as many)."""
    from pairmine.runtime import device_kind

    anchors, targets = TILE_ROWS["cuda" if device_kind(device) == "cuda" else "cpu"]
    if target_rows is not None:
        targets = target_rows
    else:
        # a target row costs its stored bytes plus a float32 copy (tile rows or device upload)
        per_row = max(1, dim * (itemsize + 4))
        fit = max(block_rows, memory_budget // 2 // per_row)
        targets = max(1024, min(targets, fit))
    anchors = min(anchors, targets)
    return TileShape(anchor_blocks=max(1, anchors // block_rows), target_rows=targets)


def build_engine(problem: Problem, band: Band, engine: str, device: str,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 requested: str | None = None) -> Engine:
    """The engine ``engine`` on ``device`` for the tiles of ``problem`` (fitted from a sample
    when the problem carries no run-wide plan)."""
    built = _kernel(engine, device).build(problem, band, memory_budget, device,
                                          requested or device)
    built.info.setdefault("device_requested", requested or device)
    return built


RUN_LOCAL_INFO = ("threads", "margin", "threshold", "max_norm", "safety", "radius",
                  "query_batch", "relaunches", "device_requested")


def plan_engine(problem: Problem, band: Band, engine: str, device: str,
                memory_budget: int = DEFAULT_MEMORY_BUDGET,
                requested: str | None = None) -> EnginePlan:
    """The run-wide engine plan: fitted ONCE, from a seeded sample of the problem's rows
    (read by sorted ids), then handed to every tile. Its ``info`` is the manifest's engine
    record (what each tile computes for itself, such as its threshold, is left out)."""
    built = build_engine(problem, band, engine, device, memory_budget, requested)
    try:
        plan = built.plan()
        info = {k: v for k, v in built.info.items() if k not in RUN_LOCAL_INFO}
        return EnginePlan({**info, **plan.info}, plan.arrays)
    finally:
        built.close()


@dataclass
class TileResult:
    """The exact in-band pairs of one tile, with the output block of each (the block of its
    anchor), ``a < b``, unsorted."""

    tile: Tile
    block: np.ndarray  # (P,) int64
    a: np.ndarray  # (P,) int64
    b: np.ndarray  # (P,) int64
    score: np.ndarray  # (P,) float32
    candidates: np.ndarray  # (blocks of the tile's group,) int64: prefilter survivors
    comparisons: int
    bytes_read: int


def run_tile(engine: Engine, problem: Problem, band: Band, tile: Tile,
             chunk: int = 1 << 14) -> TileResult:
    """Read one tile's rows, let the engine propose candidates, rescore them exactly from the
    rows in memory (no second read) and keep the band."""
    from pairmine.engines.band import tile_comparisons

    before = problem.reader.bytes_read
    rows = read_tile(problem, tile)
    rb = problem.block_rows
    first = tile.anchor_start // rb
    n_blocks = -(-(tile.anchor_stop - tile.anchor_start) // rb)
    cand = np.zeros(n_blocks, dtype=np.int64)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for i, j in engine.tile(rows):
        cand += np.bincount((tile.anchor_start + i) // rb - first, minlength=n_blocks)
        for s0 in range(0, len(i), chunk):
            ii, jj = i[s0:s0 + chunk], j[s0:s0 + chunk]
            keep, score = exact_rows(rows.queries[ii], rows.targets[jj], band)
            parts.append((ii[keep], jj[keep], score[keep]))
    if parts:
        i = np.concatenate([x for x, _, _ in parts])
        j = np.concatenate([y for _, y, _ in parts])
        score = np.concatenate([s for _, _, s in parts]).astype(np.float32, copy=False)
    else:
        i = j = np.zeros(0, dtype=np.int64)
        score = np.zeros(0, dtype=np.float32)
    qa, tb = rows.query_ids[i], rows.target_ids[j]
    block = (tile.anchor_start + i) // rb
    return TileResult(tile, block.astype(np.int64), np.minimum(qa, tb), np.maximum(qa, tb),
                      score, cand, tile_comparisons(problem, tile),
                      problem.reader.bytes_read - before)


# ---------------------------------------------------------------------------------------------
# the search


@dataclass
class BandSearch(Iterator[PairBlock]):
    """The iterator ``band_search`` returns: PairBlocks in index order, plus ``info``. It runs
    the same tiles as the match stage, in this process."""

    problem: Problem
    band: Band
    engine: Engine
    skip: Container[int]
    progress: Progress
    shape: TileShape | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _gen: Iterator[PairBlock] | None = None

    def __post_init__(self) -> None:
        if self.shape is None:
            dev = str(self.engine.info.get("device", "cpu"))
            self.shape = default_tile_shape(dev, self.problem.block_rows, self.problem.dim,
                                            self.problem.dtype.itemsize)
        self.info = self.engine.info
        self.info.update(block_rows=self.problem.block_rows, n_blocks=self.problem.n_blocks,
                         anchors=self.problem.n_anchors, targets=self.problem.m,
                         tile_shape=self.shape.to_json(),
                         rescore="float64 exact (correctly rounded near bounds), stored as "
                                 "float32")

    def __iter__(self) -> BandSearch:
        return self

    def __next__(self) -> PairBlock:
        if self._gen is None:
            self._gen = self._run()
        return next(self._gen)

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()  # type: ignore[attr-defined]
        self.engine.close()

    def _run(self) -> Iterator[PairBlock]:
        prob, band = self.problem, self.band
        assert self.shape is not None
        tiles = plan_tiles(prob, self.shape)
        groups: dict[int, list[Tile]] = {}
        for t in tiles:
            groups.setdefault(t.group, []).append(t)
        per = self.shape.anchor_blocks
        todo = [k for k in range(prob.n_blocks) if k not in self.skip]
        try:
            self.progress.start("band search", total=sum(prob.comparisons(k) for k in todo),
                                unit="comparisons")
            total_pairs = total_candidates = 0
            for g, group in sorted(groups.items()):
                blocks = [k for k in range(g * per, min((g + 1) * per, prob.n_blocks))
                          if k not in self.skip]
                if not blocks:
                    continue
                results = [run_tile(self.engine, prob, band, t) for t in group]
                for k in blocks:
                    block = _assemble(k, results, g * per)
                    total_pairs += len(block.a)
                    total_candidates += block.candidates
                    self.info.update(candidates=total_candidates, pairs=total_pairs)
                    yield block
                    self.progress.advance(prob.comparisons(k), pairs=total_pairs)
            self.progress.finish()
        finally:
            self.engine.close()


def _assemble(index: int, results: list[TileResult], first: int) -> PairBlock:
    sel = [r.block == index for r in results]
    a = np.concatenate([r.a[m] for r, m in zip(results, sel, strict=True)]) if results \
        else np.zeros(0, np.int64)
    b = np.concatenate([r.b[m] for r, m in zip(results, sel, strict=True)]) if results \
        else np.zeros(0, np.int64)
    score = np.concatenate([r.score[m] for r, m in zip(results, sel, strict=True)]) \
        if results else np.zeros(0, np.float32)
    candidates = sum(int(r.candidates[index - first]) for r in results)
    order = np.lexsort((b, a))
    return PairBlock(index, a[order].astype(np.int64), b[order].astype(np.int64),
                     score[order].astype(np.float32), candidates)


def band_search(
    vectors: Any,
    lo: float,
    hi: float,
    *,
    anchors: np.ndarray | None = None,
    against: str = "anchors",
    engine: str = "auto",
    device: str = "auto",
    block_rows: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    skip_blocks: Container[int] = (),
    progress: Progress | None = None,
    tile_shape: TileShape | None = None,
) -> BandSearch:
    """Every pair of different rows whose exact score lies in ``[lo, hi]``, block by block.

    ``vectors`` (n, d) float16/float32 (a memmap or a store's lazy view is fine).
    ``anchors``: sorted unique row ids used as queries (None: every row);
    ``against="anchors"`` pairs anchors with anchors, ``"all"`` anchors with every row (a pair
    of two anchors once). Blocks of ``block_rows`` anchors (None:
    ``default_block_rows(memory_budget)``) come in index order, those in ``skip_blocks``
    neither computed nor yielded. The work runs in tiles (``tile_shape``, default: the
    device's); the blocks do not depend on it. Bad arguments raise ConfigError/InputError
    here, before any work; ``.info`` describes the engine for a manifest.
    """
    band = Band.checked(lo, hi)
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) \
            or memory_budget < (16 << 20):
        raise ConfigError(f"memory_budget={memory_budget!r} must be an integer >= 16 MiB")
    name, dev = resolve_engine(engine, device)
    rows = default_block_rows(memory_budget) if block_rows is None else block_rows
    problem = make_problem(vectors, anchors, against, rows)
    built = build_engine(problem, band, name, dev, memory_budget, device)
    shape = tile_shape or default_tile_shape(dev, problem.block_rows, problem.dim,
                                             problem.dtype.itemsize, memory_budget)
    return BandSearch(problem, band, built, skip_blocks, progress or NullProgress(), shape)
