"""The exact band-search engines against a brute-force oracle.

The oracle is the definition: for every pair, the correctly rounded float64 value of the exact
dot product of the stored rows (``math.fsum`` of the exact float64 products), kept when
``lo <= score <= hi``. Every engine must return exactly the oracle's pairs with exactly its
float32 scores: no tolerance (the engines' float64 rescore makes one unnecessary).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pairmine.engines import (
    BandSearch,
    PairBlock,
    band_search,
    default_block_rows,
    engine_info,
    plan_blocks,
    prune,
    resolve_engine,
)
from pairmine.engines.band import (
    Band,
    Problem,
    TileShape,
    exact_band,
    make_problem,
    plan_tiles,
    read_tile,
    round_down_f16,
    round_down_f32,
)
from pairmine.engines.faiss_engine import FaissEngine
from pairmine.engines.torch_cpu import TorchCPUEngine
from pairmine.engines.torch_cuda import TwoPassEngine
from pairmine.errors import ConfigError, InputError
from pairmine.progress import NullProgress

Pairs = dict[tuple[int, int], float]
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# the oracle


def oracle(v: np.ndarray, lo: float, hi: float, anchors: np.ndarray | None = None,
           against: str = "anchors") -> Pairs:
    n = len(v)
    x = v.astype(np.float64)
    ids = np.arange(n) if anchors is None else anchors
    is_anchor = np.zeros(n, dtype=bool)
    is_anchor[ids] = True
    out: Pairs = {}
    for i in range(n):
        for j in range(i + 1, n):
            if against == "anchors" and not (is_anchor[i] and is_anchor[j]):
                continue
            if against == "all" and not (is_anchor[i] or is_anchor[j]):
                continue
            s = math.fsum((x[i] * x[j]).tolist())  # exact products, correctly rounded sum
            if lo <= s <= hi:
                out[(i, j)] = float(np.float32(s))
    return out


def collect(blocks: Any) -> tuple[Pairs, list[PairBlock]]:
    got: Pairs = {}
    seen: list[PairBlock] = []
    for blk in blocks:
        assert blk.a.dtype == np.int64 and blk.b.dtype == np.int64
        assert blk.score.dtype == np.float32
        assert np.all(blk.a < blk.b)
        order = np.lexsort((blk.b, blk.a))
        assert np.array_equal(order, np.arange(len(blk.a))), "block not sorted by (a, b)"
        assert blk.candidates >= len(blk.a)
        for a, b, s in zip(blk.a.tolist(), blk.b.tolist(), blk.score.tolist(), strict=True):
            assert (a, b) not in got, f"pair {(a, b)} yielded twice"
            got[(a, b)] = s
        seen.append(blk)
    assert [b.index for b in seen] == sorted(b.index for b in seen)
    return got, seen


# every engine configuration under test, small tiles so that the tiling is exercised
EngineFactory = Callable[[Problem, Band], Any]
ENGINES: dict[str, EngineFactory] = {
    "torch-full": lambda p, b: TorchCPUEngine(p, b, 1 << 28, dims=None, tile_rows=8,
                                              tile_cols=16),
    "torch-pruned-2": lambda p, b: TorchCPUEngine(p, b, 1 << 28, dims=2, tile_rows=8,
                                                  tile_cols=16) if p.dim > 2 else None,
    # one thread: tiles run inline instead of on the worker pool
    "torch-pruned-8": lambda p, b: TorchCPUEngine(p, b, 1 << 28, dims=8, tile_rows=16,
                                                  tile_cols=16, threads=1) if p.dim > 8
    else None,
    # a budget too small to hold the targets: tile rows converted on the fly
    "torch-pruned-stream": lambda p, b: TorchCPUEngine(p, b, 4096, dims=4, tile_rows=8,
                                                       tile_cols=24) if p.dim > 4 else None,
    "faiss": lambda p, b: FaissEngine(p, b, 1 << 28, query_batch=5),
    "faiss-stream": lambda p, b: FaissEngine(p, b, 8192, query_batch=7),
    "two-pass-fp32": lambda p, b: TwoPassEngine(p, b, 1 << 20, device="cpu", dtype="float32",
                                                tile_rows=8, tile_cols=16),
    "two-pass-fp16": lambda p, b: TwoPassEngine(p, b, 1 << 20, device="cpu", dtype="float16",
                                                tile_rows=16, tile_cols=16),
}


def run_engine(name: str, v: np.ndarray, lo: float, hi: float, anchors: np.ndarray | None,
               against: str, block_rows: int, skip: tuple[int, ...] = (),
               shape: TileShape | None = None) -> Pairs | None:
    problem = make_problem(v, anchors, against, block_rows)
    band = Band.checked(lo, hi)
    engine = ENGINES[name](problem, band)
    if engine is None:
        return None
    got, _ = collect(BandSearch(problem, band, engine, skip, NullProgress(), shape))
    return got


# ---------------------------------------------------------------------------------------------
# data


def unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.asarray(x / np.where(norms == 0, 1, norms))


def make_vectors(kind: str, n: int, d: int, seed: int, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "random":
        x = unit(rng.standard_normal((n, d)))
    elif kind == "clustered":
        centres = unit(rng.standard_normal((max(1, n // 6), d)))
        x = unit(centres[rng.integers(0, len(centres), n)]
                 + 0.15 * rng.standard_normal((n, d)))
    elif kind == "planted":
        x = unit(rng.standard_normal((n, d)))
        k = n // 3
        x[n - k:] = unit(x[:k] + 0.2 * rng.standard_normal((k, d)) / math.sqrt(d))
    elif kind == "duplicated":
        x = unit(rng.standard_normal((max(1, n // 3), d)))
        x = x[rng.integers(0, len(x), n)]
    else:  # "grid": exactly representable coordinates, so scores hit bounds exactly
        x = rng.integers(-4, 5, size=(n, d)) / 16.0
        x[: n // 4] = x[n // 4: 2 * (n // 4)]  # duplicates
    return np.ascontiguousarray(x.astype(dtype))


def band_for(v: np.ndarray, seed: int, kind: str) -> tuple[float, float]:
    """A band that is populated; for "grid" data its bounds are actual pair scores."""
    rng = np.random.default_rng(seed + 1)
    x = v.astype(np.float64)
    s = (x @ x.T)[np.triu_indices(len(v), 1)] if len(v) > 1 else np.zeros(1)
    s = s[(s >= -1) & (s <= 1)]
    if len(s) == 0:
        return 0.0, 1.0
    if kind == "grid":
        a, b = sorted(rng.choice(s, size=2))
        return float(a), float(b)
    q = np.sort(s)
    lo = float(q[int(len(q) * rng.uniform(0.5, 0.95))])
    return lo, float(min(1.0, lo + rng.uniform(0.0, 0.5)))


# ---------------------------------------------------------------------------------------------
# property tests


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["random", "clustered", "planted", "duplicated", "grid"]),
       n=st.integers(0, 45), d=st.sampled_from([1, 3, 7, 16, 17, 33]),
       dtype=st.sampled_from(["float16", "float32"]), seed=st.integers(0, 2**16),
       subset=st.sampled_from(["none", "half", "few"]),
       against=st.sampled_from(["anchors", "all"]), block_rows=st.integers(1, 20),
       anchor_blocks=st.integers(1, 4), target_rows=st.integers(1, 50))
def test_engines_equal_the_oracle(kind: str, n: int, d: int, dtype: str, seed: int,
                                  subset: str, against: str, block_rows: int,
                                  anchor_blocks: int, target_rows: int) -> None:
    """Every engine, every tiling: exactly the oracle's pairs, each once."""
    v = make_vectors(kind, n, d, seed, dtype)
    lo, hi = band_for(v, seed, kind)
    rng = np.random.default_rng(seed + 2)
    anchors = None
    if subset != "none" and n:
        k = max(1, n // 2) if subset == "half" else min(n, 3)
        anchors = np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)
    want = oracle(v, lo, hi, anchors, against)
    shape = TileShape(anchor_blocks, target_rows)
    for name in ENGINES:
        got = run_engine(name, v, lo, hi, anchors, against, block_rows, shape=shape)
        if got is not None:
            assert got == want, f"{name}: {len(got)} pairs vs oracle {len(want)}"
    got, blocks = collect(band_search(v, lo, hi, anchors=anchors, against=against,
                                      engine="auto", device="cpu", block_rows=block_rows))
    assert got == want
    assert len(blocks) == plan_blocks(n, anchors, block_rows)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_scores_exactly_on_both_bounds(dtype: str) -> None:
    # exactly representable rows: the pair scores 0.5 and 0.25 hit lo and hi to the last bit
    v = np.zeros((6, 5), dtype=dtype)
    v[0] = [0.5, 0.5, 0.5, 0.5, 0]
    v[1] = [0.5, 0.5, 0.5, 0.5, 0]  # v0.v1 = 1.0: a duplicate, above hi
    v[2] = [0.5, 0.5, 0, 0, 0.5]  # v0.v2 = 0.5 = hi
    v[3] = [0.5, 0, 0, 0, 0]  # v0.v3 = 0.25 = lo
    v[4] = [0.25, 0, 0, 0, 0]  # v0.v4 = 0.125: below lo
    v[5] = [0, 0, 0, 0, 1.0]  # v2.v5 = 0.5 = hi
    want = oracle(v, 0.25, 0.5)
    assert want[(0, 2)] == 0.5 and want[(0, 3)] == 0.25 and (0, 1) not in want
    for name in ENGINES:
        got = run_engine(name, v, 0.25, 0.5, None, "anchors", 2)
        assert got is None or got == want, name
    # one ulp inside: the bound pairs drop out
    inner = oracle(v, float(np.nextafter(0.25, 1)), float(np.nextafter(0.5, 0)))
    got, _ = collect(band_search(v, float(np.nextafter(0.25, 1)), float(np.nextafter(0.5, 0)),
                                 engine="faiss", device="cpu"))
    assert got == inner and (0, 2) not in got and (0, 3) not in got


@pytest.mark.parametrize("engine", ["torch", "faiss"])
def test_planted_pairs_at_scale(engine: str) -> None:
    """5,000 x 64 rows with planted partners: the pruned path (d' chosen by the sample) and
    FAISS both return exactly the oracle's pairs."""
    rng = np.random.default_rng(7)
    n, d = 5000, 64
    x = unit(rng.standard_normal((n, d)))
    src = rng.choice(n, size=200, replace=False)
    x[src[100:]] = unit(x[src[:100]] + 0.2 * unit(rng.standard_normal((100, d))))
    v = x.astype(np.float16)
    s = v.astype(np.float64) @ v.astype(np.float64).T
    i, j = np.nonzero(np.triu((s >= 0.97) & (s <= 0.99), 1))
    # only pairs within 2^-40 of a bound would need fsum; there are none here
    assert not np.any(np.abs(s[i, j] - 0.97) < 2**-40)
    want = {(int(a), int(b)): float(np.float32(s[a, b])) for a, b in zip(i, j, strict=True)}
    search = band_search(v, 0.97, 0.99, engine=engine, device="cpu", block_rows=1500)
    got, blocks = collect(search)
    assert got == want and len(want) > 50
    assert len(blocks) == 4
    if engine == "torch":
        assert search.info["pruning"]["dims"] is not None  # pruning chosen and recorded
        assert sum(b.candidates for b in blocks) < 4 * len(want)


# ---------------------------------------------------------------------------------------------
# blocks, resume, small inputs


def test_skip_blocks_resume_gives_the_same_blocks() -> None:
    v = make_vectors("clustered", 60, 9, 3, "float16")
    full = {b.index: b for b in band_search(v, 0.5, 1.0, device="cpu", block_rows=7)}
    assert len(full) == plan_blocks(60, None, 7) == 9
    for engine in ("torch", "faiss"):
        part = list(band_search(v, 0.5, 1.0, engine=engine, device="cpu", block_rows=7,
                                skip_blocks={0, 3, 8}))
        assert [b.index for b in part] == [1, 2, 4, 5, 6, 7]
        for b in part:
            ref = full[b.index]
            assert np.array_equal(b.a, ref.a) and np.array_equal(b.b, ref.b)
            assert np.array_equal(b.score, ref.score)  # bit for bit, across engines


@pytest.mark.parametrize("n", [0, 1, 2])
def test_tiny_inputs(n: int) -> None:
    v = np.ones((n, 4), dtype=np.float16) / 2  # every pair scores exactly 1.0
    for engine in ("torch", "faiss"):
        blocks = list(band_search(v, 0.5, 1.0, engine=engine, device="cpu"))
        assert len(blocks) == plan_blocks(n, None)
        pairs = sum(len(b.a) for b in blocks)
        assert pairs == n * (n - 1) // 2
    for name in ENGINES:
        got = run_engine(name, v, 0.5, 1.0, None, "anchors", 1)
        assert got is None or got == oracle(v, 0.5, 1.0)


def test_against_all_counts_anchor_pairs_once() -> None:
    v = make_vectors("grid", 30, 6, 11, "float32")  # exact rows, rows 0-6 repeat 7-13
    anchors = np.array([0, 3, 4, 7, 10, 20, 29], dtype=np.int64)
    want = oracle(v, 0.05, 1.0, anchors, "all")
    assert any(a in anchors and b in anchors for a, b in want)
    assert any((a in anchors) != (b in anchors) for a, b in want)
    for engine in ("torch", "faiss"):
        got, _ = collect(band_search(v, 0.05, 1.0, anchors=anchors, against="all",
                                     engine=engine, device="cpu", block_rows=4))
        assert got == want


def test_memmap_input(tmp_path: Path) -> None:
    v = make_vectors("planted", 40, 12, 5, "float16")
    np.save(tmp_path / "v.npy", v)
    mm = np.load(tmp_path / "v.npy", mmap_mode="r")
    got, _ = collect(band_search(mm, 0.6, 1.0, device="cpu", block_rows=16))
    assert got == oracle(v, 0.6, 1.0)


# ---------------------------------------------------------------------------------------------
# the pieces


def test_exact_band_is_order_independent() -> None:
    # float64 sums of these products depend on order; the rescore must not
    v = np.array([[1.0, 2.0**-30, 1.0, -(2.0**-30)], [1.0, 2.0**-24, -1.0, 1.0]],
                 dtype=np.float32)
    s = math.fsum((v[0].astype(np.float64) * v[1].astype(np.float64)).tolist())
    for lo in (s, float(np.nextafter(s, 1)), float(np.nextafter(s, -1))):
        keep, score = exact_band(v, np.array([0]), np.array([1]), Band(lo, 1.0))
        assert bool(keep[0]) == (s >= lo)
        assert score[0] == np.float32(s)


def test_round_down_never_rounds_up() -> None:
    for x in (0.97, 0.9699999, -0.3, 1.0, 0.1234567):
        assert round_down_f32(x) <= x and float(np.float32(round_down_f32(x))) == \
            round_down_f32(x)
        assert round_down_f16(x) <= x and float(np.float16(round_down_f16(x))) == \
            round_down_f16(x)
    # the trap: 0.97 rounds UP to nearest in fp16 (0.9702); the threshold must not
    assert float(np.float16(0.97)) > 0.97 and round_down_f16(0.97) < 0.97


def test_pruning_bound_holds_in_fp32() -> None:
    """x~.y~ computed in fp32 + margin >= the exact x.y for every pair, for every d'."""
    import torch

    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((400, 48)) * np.geomspace(3, 0.01, 48)).astype(np.float16)
    x64 = x.astype(np.float64)
    exact = x64 @ x64.T
    top = float(np.linalg.norm(x64, axis=1).max()) ** 2
    rot = prune.fit_rotation(x64)
    part = prune.fit_rotation(x64, full_below=16)  # subspace iteration: the top D/4 only
    assert rot.r.shape == (48, 48) and part.r.shape == (12, 48)
    for r, dims_list in ((rot, (1, 4, 16, 40)), (part, (1, 4, 12))):
        assert r.eps < 1e-10
        for dims in dims_list:
            head = torch.from_numpy(prune.head_matrix(x64, r, dims))
            bound = (head @ head.T).double().numpy()
            margin = prune.pruned_margin(dims, r, 48) * top
            assert np.all(bound + margin >= exact), dims
    # and the bound is not vacuous: the rotation put the energy in the first coordinates
    assert rot.energy[11] > 0.9 and part.energy[11] > 0.9


def test_choose_dims_prefers_pruning_on_low_rank_data() -> None:
    rng = np.random.default_rng(1)
    d = 128
    x = unit(rng.standard_normal((4000, 12)) @ rng.standard_normal((12, d))
             + 0.01 * rng.standard_normal((4000, d)))
    rot = prune.fit_rotation(x)
    choice = prune.choose_dims(x, rot, 0.97, 0.99)
    assert choice.dims is not None and choice.dims <= 24
    assert all(0.0 <= r <= 1.0 for r in choice.rates.values())
    rates = [choice.rates[k] for k in sorted(choice.rates)]
    assert rates == sorted(rates, reverse=True)  # a longer head only tightens the bound


def test_info_records_the_choices() -> None:
    rng = np.random.default_rng(2)
    v = unit(rng.standard_normal((6000, 32))).astype(np.float16)
    search = band_search(v, 0.97, 0.99, device="cpu", block_rows=3000)
    info = search.info
    assert info["engine"] == "torch" and info["precision"] == "float32"
    assert info["block_rows"] == 3000 and info["n_blocks"] == 2
    assert "survivor_rate" in info["pruning"]
    list(search)
    assert info["margin"] > 0 and info["threshold"] < 0.97
    assert info["threshold"] == round_down_f32(info["threshold"])
    static = engine_info(resolve_engine("auto", "cpu"))
    assert static["engine"] == "torch" and static["device"] == "cpu"
    assert "kernel" in engine_info("faiss", "cpu")


def test_wide_band_falls_back_to_full_tiles() -> None:
    """With lo = 0.1 the tail bound prunes nothing: the engine must choose full-D tiles."""
    rng = np.random.default_rng(3)
    v = unit(rng.standard_normal((5000, 24)) + 0.5).astype(np.float16)
    search = band_search(v, 0.1, 0.5, device="cpu")
    assert search.info["pruning"]["dims"] is None
    assert search.info["kernel"].startswith("full fp32")


def test_engines_restore_global_torch_state() -> None:
    import torch

    threads = torch.get_num_threads()
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        v = make_vectors("random", 60, 8, 0, "float32")
        problem = make_problem(v, None, "anchors", 16)
        engine = TorchCPUEngine(problem, Band(-1.0, 1.0), 1 << 28, tile_rows=8, tile_cols=16)
        tile = plan_tiles(problem, TileShape(1, 64))[0]
        candidates = engine.tile(read_tile(problem, tile))
        next(candidates)
        # the margins assume true fp32 GEMMs: held while a tile runs
        assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        list(candidates)
        engine.close()
        list(band_search(v, 0.5, 1.0, device="cpu", block_rows=16))
        assert torch.get_float32_matmul_precision() == "medium"
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
        assert torch.get_num_threads() == threads
    finally:
        torch.set_float32_matmul_precision(precision)


def test_default_block_rows_is_data_independent() -> None:
    assert default_block_rows() == 4096
    assert default_block_rows(1 << 40) == 1 << 16 and default_block_rows(16 << 20) == 256
    assert plan_blocks(10000, None) == 3 and plan_blocks(10, np.arange(3), 2) == 2


# ---------------------------------------------------------------------------------------------
# bad input: one clear PairmineError, before any work


@pytest.mark.parametrize("kwargs, error", [
    ({"lo": 0.99, "hi": 0.97}, ConfigError),
    ({"lo": -1.5, "hi": 0.5}, ConfigError),
    ({"lo": 0.5, "hi": float("nan")}, ConfigError),
    ({"anchors": np.array([3, 1])}, ConfigError),
    ({"anchors": np.array([1, 1])}, ConfigError),
    ({"anchors": np.array([0, 99])}, ConfigError),
    ({"anchors": np.array([0.5])}, ConfigError),
    ({"against": "everything"}, ConfigError),
    ({"engine": "annoy"}, ConfigError),
    ({"device": "tpu"}, ConfigError),
    ({"block_rows": 0}, ConfigError),
    ({"memory_budget": 1000}, ConfigError),
])
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception]) -> None:
    v = np.ones((10, 4), dtype=np.float32) / 2
    args: dict[str, Any] = {"lo": 0.5, "hi": 1.0, "device": "cpu", **kwargs}
    lo, hi = args.pop("lo"), args.pop("hi")
    with pytest.raises(error) as exc:
        band_search(v, lo, hi, **args)
    assert exc.value.hint or str(exc.value)


def test_bad_vectors() -> None:
    with pytest.raises(InputError):
        band_search(np.ones((4, 3), dtype=np.int32), 0.5, 1.0, device="cpu")
    with pytest.raises(InputError):
        band_search(np.ones(4, dtype=np.float32), 0.5, 1.0, device="cpu")
    v = np.ones((5, 3), dtype=np.float32)
    v[3, 1] = np.nan
    for engine in ("torch", "faiss"):
        with pytest.raises(InputError, match="row 3"):
            list(band_search(v, 0.5, 1.0, engine=engine, device="cpu"))


def test_cuda_requested_without_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no CUDA"):
        band_search(np.ones((3, 3), dtype=np.float32), 0.5, 1.0, device="cuda")
    assert resolve_engine("auto", "auto") == ("torch", "cpu")


# ---------------------------------------------------------------------------------------------
# the fused Triton kernel, on the CPU under the Triton interpreter (in a subprocess: the
# interpreter is chosen when the kernel is first built)


def test_fused_kernel_under_triton_interpreter() -> None:
    pytest.importorskip("triton")
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        import numpy as np
        from test_engines import collect, make_vectors, oracle
        from pairmine.engines import BandSearch
        from pairmine.engines.band import Band, TileShape, make_problem
        from pairmine.engines.triton_band import FusedEngine
        from pairmine.progress import NullProgress
        # one tile each, and (last two) several tiles: rectangles and rest tiles too
        cases = [("planted", 90, 20, "float16", 0.5, 1.0, None, "anchors", 40, None),
                 ("grid", 70, 16, "float32", 0.0625, 0.25, None, "anchors", 33, 40),
                 ("clustered", 80, 33, "float16", 0.7, 0.95, np.arange(0, 80, 3), "all", 16,
                  24)]
        for kind, n, d, dtype, lo, hi, anchors, against, rows, tile in cases:
            v = make_vectors(kind, n, d, 1, dtype)
            p = make_problem(v, anchors, against, rows)
            band = Band(lo, hi)
            eng = FusedEngine(p, band, 1 << 26, device="cpu", block=(32, 32))
            eng.capacity = 1  # forces the overflow relaunch
            shape = None if tile is None else TileShape(1, tile)
            got, _ = collect(BandSearch(p, band, eng, (), NullProgress(), shape))
            want = oracle(v, lo, hi, anchors, against)
            assert got == want, (kind, len(got), len(want))
            assert len(want) > 4 and eng.info["relaunches"] >= 1, (kind, len(want))
        print("ok")
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# CUDA (run on a GPU machine: pytest -m gpu)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["planted", "grid", "clustered"])
def test_cuda_engines_equal_the_oracle(kind: str) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from pairmine.engines.triton_band import FusedEngine

    for dtype in ("float16", "float32"):
        v = make_vectors(kind, 300, 40, 4, dtype)
        lo, hi = band_for(v, 4, kind)
        anchors = np.arange(0, 300, 2)
        for against in ("anchors", "all"):
            want = oracle(v, lo, hi, anchors, against)
            p = make_problem(v, anchors, against, 64)
            band = Band(lo, hi)
            for eng in (TwoPassEngine(p, band, 1 << 24, device="cuda", tile_cols=256),
                        FusedEngine(p, band, 1 << 24, device="cuda")):
                got, _ = collect(BandSearch(p, band, eng, (), NullProgress()))
                assert got == want, (type(eng).__name__, dtype, against)
            got, _ = collect(band_search(v, lo, hi, anchors=anchors, against=against,
                                         device="cuda", block_rows=64))
            assert got == want
