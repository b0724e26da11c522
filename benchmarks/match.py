"""Benchmark the exact band-search engines against FAISS and the GEMM limit (not a test).

Data: N unit vectors (float16, as embeddings are stored) of dimension D, random on the sphere,
with planted near-duplicates so the band [0.97, 0.99] is populated: a fraction of rows
(--planted, default 1%) gets a partner at cosine ~0.98. The flatness run plants 100x more
pairs (every row in a group of three, pairwise cosine ~0.98) and compares peak RSS.

Runs, in one process on the same data:
  faiss-full   IndexFlatIP.range_search over all N x N, as a user would (the baseline)
  faiss        our FAISS engine (upper triangle only)
  torch        our engine (CPU: exact pruning; CUDA: fused Triton kernel) - "auto" picks it
  two-pass     (CUDA) the two-pass fp16 engine
  gemm         the hardware limit: fp32 (CPU) / fp16 and bf16 (CUDA) GEMM tiles of the same
               triangle, output written, nothing else
Checks that every engine returns the same pair set, and reports seconds, ratio to FAISS,
fraction of the GEMM limit and peak RSS. Writes its section of docs/benchmarks.md.

    python benchmarks/match.py --n 50000 --n 200000            # CPU, D=128
    python benchmarks/match.py --n 200000 --dim 2048 --skip faiss-full,faiss
    python benchmarks/match.py --device cuda --n 1000000
    python benchmarks/match.py --calibrate                      # tile sizes / cost model
    python benchmarks/match.py --tiles --n 50000 --emb EMB      # tiles vs per-block vs FAISS

``--tiles`` compares the match engine's tiles (the unit of work since issue 22) with the
previous per-block path (the engines of commit ``--baseline-rev``, unpacked with ``git archive``
and run in a child process on the same vectors) and FAISS, on synthetic data and on a real
embeddings store (``--emb``, e.g. CIFAR-10 train through the ResNet-20: ``pairmine embed
cifar10/train EMB --encoder cifar-resnet:../shared/data/resnet20-cifar10.th``), checks that
they find the same pairs, and measures the tile rate (comparisons per second) of a few tile
shapes on this CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

LO, HI = 0.97, 0.99


# ---------------------------------------------------------------------------------------------
# data


def make_data(n: int, d: int, planted: float, dense: bool, seed: int = 0) -> np.ndarray:
    """Unit float16 rows; planted partners at cosine ~0.98 (or groups of 3 when dense)."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, d), dtype=np.float32)
    step = 1 << 16
    for s in range(0, n, step):
        e = min(s + step, n)
        x[s:e] = rng.standard_normal((e - s, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)

    def perturb(base: np.ndarray, sigma: float) -> np.ndarray:
        noise = rng.standard_normal(base.shape, dtype=np.float32)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        y = base + sigma * noise
        return np.asarray(y / np.linalg.norm(y, axis=1, keepdims=True), dtype=np.float32)

    if dense:
        # groups of three around a centre c: member = c + s*noise, pairwise cos ~ 1/(1+s^2)
        g = n // 3
        centres = x[:g].copy()
        for k in range(3):
            x[k * g:(k + 1) * g] = perturb(centres, (1 / 0.98 - 1) ** 0.5)
    else:
        k = int(n * planted)
        src = rng.choice(n, size=2 * k, replace=False)
        # partner = x + s*noise with |noise| = 1: cos = 1/sqrt(1+s^2) = 0.98
        x[src[k:]] = perturb(x[src[:k]], (1 / 0.98**2 - 1) ** 0.5)
    return x.astype(np.float16)


# ---------------------------------------------------------------------------------------------
# measurement


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def measure(name: str, fn: Callable[[], Any], device: str) -> dict[str, Any]:
    gc.collect()
    resettable = reset_peak_rss()
    base = rss_mib()
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t, c = time.perf_counter(), time.process_time()
    result = fn()
    sync(device)
    sec, cpu = time.perf_counter() - t, time.process_time() - c
    row: dict[str, Any] = {"run": name, "seconds": sec, "cpu_seconds": cpu,
                           "peak_rss_mib": peak_rss_mib(),
                           "rss_before_mib": base, "peak_resettable": resettable}
    if device == "cuda":
        import torch

        row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if isinstance(result, tuple):
        row["pairs"], row["info"] = result
    print(f"  {name:12s} {sec:9.3f} s  (CPU {cpu:8.3f} s)  peak RSS "
          f"{row['peak_rss_mib']:8.1f} MiB", flush=True)
    return row


# ---------------------------------------------------------------------------------------------
# runs


def pair_set(blocks: Any) -> tuple[np.ndarray, dict[str, Any]]:
    keys = []
    for b in blocks:
        keys.append(b.a * (1 << 32) + b.b)
    info = dict(blocks.info) if hasattr(blocks, "info") else {}
    return (np.sort(np.concatenate(keys)) if keys else np.zeros(0, np.int64)), info


def run_engine(x: np.ndarray, engine: str, device: str) -> tuple[np.ndarray, dict[str, Any]]:
    from pairmine.engines import band_search

    return pair_set(band_search(x, LO, HI, engine=engine, device=device))


def run_engine_obj(x: np.ndarray, cls_name: str) -> tuple[np.ndarray, dict[str, Any]]:
    """A specific CUDA engine class, through the same driver as band_search."""
    from pairmine.engines import DEFAULT_MEMORY_BUDGET, BandSearch, default_block_rows
    from pairmine.engines.band import Band, make_problem
    from pairmine.progress import NullProgress

    band = Band(LO, HI)
    problem = make_problem(x, None, "anchors", default_block_rows())
    if cls_name == "two-pass":
        from pairmine.engines.torch_cuda import TwoPassEngine

        eng: Any = TwoPassEngine(problem, band, DEFAULT_MEMORY_BUDGET, device="cuda")
    else:
        from pairmine.engines.triton_band import FusedEngine

        eng = FusedEngine(problem, band, DEFAULT_MEMORY_BUDGET, device="cuda")
    return pair_set(BandSearch(problem, band, eng, (), NullProgress()))


def run_faiss_full(x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """FAISS as a user would: every row against every row, then i < j, then the band."""
    import faiss

    from pairmine.engines.band import Band, exact_band
    from pairmine.runtime import cpu_count as cores

    faiss.omp_set_num_threads(cores())
    xf = np.ascontiguousarray(x, dtype=np.float32)
    index = faiss.IndexFlatIP(xf.shape[1])
    index.add(xf)
    radius = float(np.nextafter(np.float32(LO - 1e-5), np.float32(-np.inf)))
    keys = []
    q = 4096
    for s in range(0, len(xf), q):
        lims, _, labels = index.range_search(xf[s:s + q], radius)
        counts = np.diff(lims.astype(np.int64))
        i = np.repeat(np.arange(s, min(s + q, len(xf)), dtype=np.int64), counts)
        j = labels.astype(np.int64)
        keep = i < j
        i, j = i[keep], j[keep]
        ok, _ = exact_band(x, i, j, Band(LO, HI))
        keys.append(i[ok] * (1 << 32) + j[ok])
    return np.sort(np.concatenate(keys)), {"radius": radius}


def run_gemm(x: np.ndarray, device: str, dtype: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The triangle's GEMM alone: same tiles, scores written, nothing read back."""
    import torch

    from pairmine.runtime import cpu_count as cores

    if device == "cpu":
        torch.set_num_threads(cores())
        tr, tc = 1024, 2048
    else:
        tr, tc = 8192, 32768
    t = torch.from_numpy(np.ascontiguousarray(x)).to(device).to(getattr(torch, dtype))
    n = len(t)
    buf = torch.empty(tr * tc, dtype=t.dtype, device=device)
    flop = 0
    with torch.inference_mode():
        for r0 in range(0, n, tr):
            r1 = min(r0 + tr, n)
            for c0 in range(r0, n, tc):
                c1 = min(c0 + tc, n)
                torch.mm(t[r0:r1], t[c0:c1].t(), out=buf[: (r1 - r0) * (c1 - c0)]
                         .view(r1 - r0, c1 - c0))
                flop += 2 * (r1 - r0) * (c1 - c0) * t.shape[1]
    return np.zeros(0, np.int64), {"flop": flop}


# ---------------------------------------------------------------------------------------------
# calibration: tile shapes and the cost model of the CPU engine


def calibrate(reps: int) -> None:
    import torch

    from pairmine.runtime import cpu_count as cores

    torch.set_num_threads(cores())
    print("ns per pair, fp32 GEMM + row max (best of", reps, "repeats; spread in brackets)")
    for k in (17, 25, 33, 49, 65, 129):
        for r, c in ((512, 2048), (1024, 2048), (1024, 4096), (2048, 1024), (2048, 2048)):
            a, b = torch.randn(r, k), torch.randn(c, k)
            out, mx = torch.empty(r, c), torch.empty(r)
            times = []
            n = max(1, int(1e8 // (r * c)))
            for _ in range(reps):
                t = time.perf_counter()
                for _ in range(n):
                    torch.mm(a, b.t(), out=out)
                    torch.amax(out, 1, out=mx)
                times.append((time.perf_counter() - t) / n / (r * c) * 1e9)
            print(f"  K={k:4d} tile {r}x{c}: {min(times):.3f} [{min(times):.3f}-"
                  f"{max(times):.3f}]")
    # cost of one isolated candidate: row extraction + exact rescore
    from pairmine.engines import band_search

    rng = np.random.default_rng(0)
    x = rng.standard_normal((20000, 128)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for lo in (0.5, 0.3):
        t = time.perf_counter()
        blocks = band_search(x.astype(np.float16), lo, 1.0, engine="torch", device="cpu")
        cands = sum(b.candidates for b in blocks)
        sec = time.perf_counter() - t
        print(f"  lo={lo}: {cands} candidates, {sec:.2f} s, "
              f"{sec / max(cands, 1) * 1e9:.0f} ns per candidate (upper bound)")


def tune_fused(n: int, d: int) -> None:
    """Time the fused kernel's tile shapes and launch settings on the GPU (same data each)."""
    from pairmine.engines import DEFAULT_MEMORY_BUDGET, BandSearch, default_block_rows
    from pairmine.engines.band import Band, make_problem
    from pairmine.engines.triton_band import FusedEngine
    from pairmine.progress import NullProgress

    x = make_data(n, d, 0.01, dense=False)
    band = Band(LO, HI)
    ref = None
    for bm, bn, warps, stages in ((128, 128, 8, 3), (128, 128, 4, 3), (128, 256, 8, 3),
                                  (256, 128, 8, 3), (64, 256, 4, 3), (128, 64, 4, 4),
                                  (128, 128, 8, 2), (256, 256, 8, 2)):
        problem = make_problem(x, None, "anchors", default_block_rows())
        times = []
        for _ in range(3):
            eng = FusedEngine(problem, band, DEFAULT_MEMORY_BUDGET, device="cuda",
                              block=(bm, bn), num_warps=warps, num_stages=stages)
            sync("cuda")
            t = time.perf_counter()
            try:
                keys, _ = pair_set(BandSearch(problem, band, eng, (), NullProgress()))
            except Exception as exc:  # a shape the compiler or the GPU rejects
                print(f"  {bm}x{bn} warps={warps} stages={stages}: failed ({exc!s:.80})")
                break
            sync("cuda")
            times.append(time.perf_counter() - t)
            ref = keys if ref is None else ref
            assert np.array_equal(keys, ref)
        if times:
            print(f"  {bm}x{bn} warps={warps} stages={stages}: "
                  f"{min(times):.3f} s (of {', '.join(f'{t:.3f}' for t in times)})",
                  flush=True)


# ---------------------------------------------------------------------------------------------
# tiles: the unit of work against the previous per-block path and FAISS


BASELINE_REV = "359cde3"  # the last commit whose engines searched per block, targets resident

OLD_SEARCH = """
import json, sys, time
import numpy as np
from pairmine.engines import band_search
x = np.load(sys.argv[1], mmap_mode="r")
lo, hi = float(sys.argv[3]), float(sys.argv[4])
t, c = time.perf_counter(), time.process_time()
keys = [b.a * (1 << 32) + b.b for b in band_search(x, lo, hi, engine="torch", device="cpu")]
sec, cpu = time.perf_counter() - t, time.process_time() - c
np.save(sys.argv[2], np.sort(np.concatenate(keys)) if keys else np.zeros(0, np.int64))
print(json.dumps({"seconds": sec, "cpu_seconds": cpu}))
"""


def baseline_tree(rev: str) -> Path:
    """The package as it was at ``rev``, unpacked once under the temporary folder."""
    import subprocess
    import tempfile

    tree = Path(tempfile.gettempdir()) / f"pairmine-baseline-{rev}"
    if not (tree / "pairmine").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "pairmine"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def run_per_block(x: np.ndarray, lo: float, hi: float, rev: str
                  ) -> tuple[np.ndarray, dict[str, Any]]:
    """The previous per-block search on ``x``, in a child process running commit ``rev``."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", x)
        env = {**os.environ, "PYTHONPATH": str(baseline_tree(rev))}
        res = subprocess.run([sys.executable, "-c", OLD_SEARCH, str(Path(tmp) / "x.npy"),
                              str(Path(tmp) / "keys.npy"), repr(lo), repr(hi)],
                             env=env, capture_output=True, text=True, check=True)
        timing = json.loads(res.stdout.strip().splitlines()[-1])
        return np.load(Path(tmp) / "keys.npy"), timing


def run_tiled(x: Any, lo: float, hi: float, engine: str = "torch"
              ) -> tuple[np.ndarray, dict[str, Any]]:
    from pairmine.engines import band_search

    search = band_search(x, lo, hi, engine=engine, device="cpu")
    keys = [b.a * (1 << 32) + b.b for b in search]
    return (np.sort(np.concatenate(keys)) if keys else np.zeros(0, np.int64)), dict(search.info)


def tile_rates(x: np.ndarray, shapes: list[tuple[int, int]], lo: float, hi: float,
               reps: int) -> list[dict[str, Any]]:
    """Comparisons per second of one full tile of each (anchors, targets) shape, warm (the
    first run of each shape untimed), best of ``reps``, with the engine plan fitted once."""
    from pairmine.engines import build_engine, make_problem, plan_engine, plan_tiles, run_tile
    from pairmine.engines.band import Band, TileShape, tile_comparisons

    band = Band(lo, hi)
    plan = plan_engine(make_problem(x, None, "anchors", 4096), band, "torch", "cpu")
    problem = make_problem(x, None, "anchors", 4096, plan)
    out = []
    for anchors, targets in shapes:
        shape = TileShape(max(1, anchors // 4096), targets)
        # a full, non-triangle tile: the second target tile of the first group
        tile = next(t for t in plan_tiles(problem, shape) if not t.triangle
                    and t.stop - t.start == targets)
        engine = build_engine(problem, band, "torch", "cpu")
        run_tile(engine, problem, band, tile)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            result = run_tile(engine, problem, band, tile)
            times.append(time.perf_counter() - t0)
        engine.close()
        comps = tile_comparisons(problem, tile)
        row = {"anchors": anchors, "targets": targets, "seconds": min(times),
               "comparisons": comps, "rate": comps / min(times),
               "candidates": int(result.candidates.sum()), "dims": plan.info.get("dims")}
        print(f"  tile {anchors} x {targets}: {min(times):.3f} s, "
              f"{row['rate'] / 1e9:.2f} G comparisons/s", flush=True)
        out.append(row)
    return out


def bench_tiles(args: argparse.Namespace) -> int:
    """--tiles: see the module doc."""
    import faiss  # noqa: F401  (the FAISS runs need it)
    import torch  # imported before any measurement: its RSS is not an engine's

    import pairmine

    torch.set_num_threads(torch.get_num_threads())
    datasets: list[tuple[str, np.ndarray, float, float]] = []
    for n in args.n or [50000]:
        datasets.append((f"synthetic {n} x {args.dim}, 1% planted", make_data(
            n, args.dim, args.planted, dense=False), LO, HI))
    if args.emb:
        store = pairmine.open_embeddings(args.emb)
        x = np.ascontiguousarray(store.vectors[:])
        datasets.append((f"{args.emb.name}: {len(x)} x {x.shape[1]} real embeddings", x, LO, HI))
    rows: list[dict[str, Any]] = []
    ok = True
    for name, x, lo, hi in datasets:
        print(name, flush=True)
        results = {"tiled": measure("tiled", lambda x=x, lo=lo, hi=hi: run_tiled(x, lo, hi),
                                    "cpu"),
                   "per-block": measure("per-block", lambda x=x, lo=lo, hi=hi: run_per_block(
                       x, lo, hi, args.baseline_rev), "cpu"),
                   "faiss (tiles)": measure("faiss", lambda x=x, lo=lo, hi=hi: run_tiled(
                       x, lo, hi, "faiss"), "cpu"),
                   "faiss-full": measure("faiss-full", lambda x=x: run_faiss_full(x), "cpu")}
        child = results["per-block"].pop("info")
        results["per-block"].update(seconds_child=child["seconds"],
                                    cpu_seconds=child["cpu_seconds"])
        ref = results["tiled"]["pairs"]
        for run, r in results.items():
            pairs = r.pop("pairs")
            r.update(data=name, run=run, n_pairs=len(pairs),
                     same_pairs=bool(np.array_equal(pairs, ref)))
            ok &= r["same_pairs"]
        rows += results.values()
    rate_x = make_data(args.rate_rows, args.dim, args.planted, dense=False)
    shapes = [(16384, 32768), (16384, 131072), (16384, 262144), (4096, 131072)]
    shapes = [(a, t) for a, t in shapes if a + 2 * t <= len(rate_x)]
    rates = tile_rates(rate_x, shapes, LO, HI, args.reps)
    if not args.no_docs:
        write_tiles_docs(rows, rates, args)
    print("pair sets identical across runs:", ok)
    return 0 if ok else 1


def write_tiles_docs(rows: list[dict[str, Any]], rates: list[dict[str, Any]],
                     args: argparse.Namespace) -> None:
    from _report import update_section

    cmd = "python benchmarks/match.py " + " ".join(sys.argv[1:])
    lines = ["## Match by tiles vs the previous per-block path vs FAISS "
             "(benchmarks/match.py --tiles)", "",
             f"Machine: {machine('cpu')}. Date: {dt.date.today().isoformat()}. Command: "
             f"`{cmd}`. Load average when it ended: "
             f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (above the core count: other "
             "jobs shared the cores, so wall-clock times are inflated and noisy); CPU seconds "
             "are each run's own.", "",
             f"Band [{LO}, {HI}]. 'tiled': `band_search` as the match stage runs it now (tiles "
             "of a few blocks of anchors x up to 131,072 target rows, each reading only its "
             "rows; the rotation fitted once). 'per-block': the engines of commit "
             f"{args.baseline_rev} (targets prepared and resident once, then block by block), "
             "in a child process on the same vectors. 'faiss (tiles)': our FAISS engine on "
             "the same tiles; 'faiss-full': `IndexFlatIP.range_search` over all N x N.", "",
             "| data | run | seconds | CPU seconds | pairs | same pairs as tiled |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        sec = r.get("seconds_child", r["seconds"])
        lines.append(f"| {r['data']} | {r['run']} | {sec:.2f} | {r['cpu_seconds']:.2f} | "
                     f"{r['n_pairs']} | {r['same_pairs']} |")
    lines += ["", "Per-block seconds are the child's own search (its start-up and imports "
              "excluded).", "", "Tile rate on this CPU (one full tile, warm, best of "
              f"{args.reps}; synthetic {args.rate_rows} x {args.dim} float16, 1% planted; "
              "candidates rescored exactly, rows read and converted inside the time):", "",
              "| anchors x targets | seconds | comparisons | comparisons/s | candidates | d' |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in rates:
        lines.append(f"| {r['anchors']} x {r['targets']} | {r['seconds']:.3f} | "
                     f"{r['comparisons']:,} | {r['rate'] / 1e9:.2f} G | {r['candidates']} | "
                     f"{r['dims']} |")
    doc = ROOT / "docs" / "benchmarks.md"
    text = doc.read_text(encoding="utf-8") if doc.exists() else ""
    begin, end = "<!-- match:begin -->", "<!-- match:end -->"
    body = text.split(begin, 1)[1].split(end, 1)[0] if begin in text and end in text else ""
    sb, se = "<!-- match-tiles:begin -->", "<!-- match-tiles:end -->"
    block = f"{sb}\n" + "\n".join(lines) + f"\n{se}"
    if sb in body and se in body:
        pre, rest = body.split(sb, 1)
        body = pre + block + rest.split(se, 1)[1]
    else:
        body = block + "\n\n" + body.strip()
    update_section(doc, "match", body.strip() + "\n")


# ---------------------------------------------------------------------------------------------
# report


def machine(device: str) -> str:
    if device == "cuda":
        import torch

        return f"{torch.cuda.get_device_name()} + {os.cpu_count()} CPU cores"
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from pairmine.engines.hardware import cpu_capability
    from pairmine.runtime import cpu_count as cores

    return (f"{model} ({cpu_capability()}, {platform.machine()}), {cores()} of "
            f"{os.cpu_count()} cores used")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, action="append", help="rows (repeatable); "
                    "default 50000 and 200000")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--planted", type=float, default=0.01)
    ap.add_argument("--skip", default="", help="comma list of runs to skip "
                    "(faiss-full, faiss, torch, two-pass, gemm, dense)")
    ap.add_argument("--calibrate", action="store_true", help="CPU tile sizes and cost model")
    ap.add_argument("--tune", action="store_true", help="fused GPU kernel settings")
    ap.add_argument("--tiles", action="store_true",
                    help="tiles vs the previous per-block path vs FAISS, and tile rates")
    ap.add_argument("--emb", type=Path, help="--tiles: a real embeddings store to match too")
    ap.add_argument("--baseline-rev", default=BASELINE_REV,
                    help="--tiles: the commit whose per-block engines are the baseline")
    ap.add_argument("--rate-rows", type=int, default=300000,
                    help="--tiles: rows of the synthetic store the tile rates use")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, help="use only this many cores (CPU affinity: "
                    "every engine sizes its thread pool from it)")
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--json", type=Path, help="also write the raw rows here")
    args = ap.parse_args(argv)
    if args.threads and os.environ.get("PAIRMINE_BENCH_PINNED") != str(args.threads):
        # affinity set by one thread binds only threads created after it: pin, then restart
        # so that every pool (numpy's BLAS included) starts inside the mask
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
        os.environ["PAIRMINE_BENCH_PINNED"] = str(args.threads)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    if args.calibrate:
        calibrate(args.reps)
        return 0
    if args.tune:
        tune_fused((args.n or [200000])[0], args.dim)
        return 0
    if args.tiles:
        return bench_tiles(args)
    skip = set(filter(None, args.skip.split(",")))
    try:
        import faiss  # noqa: F401
    except ImportError:
        skip |= {"faiss-full", "faiss"}
        print("faiss is not installed here: FAISS runs skipped")
    import torch  # imported before any measurement: its RSS is not an engine's

    torch.set_num_threads(torch.get_num_threads())
    rows: list[dict[str, Any]] = []
    ok = True
    for n in args.n or [50000, 200000]:
        size_rows, size_ok = bench_size(n, args.dim, args.device, args.planted, skip)
        rows += size_rows
        ok &= size_ok
    print(json.dumps([{k: v for k, v in r.items() if k != "info"} for r in rows], indent=1,
                     default=float))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float))
    if not args.no_docs:
        write_docs(rows, args, args.device)
    print("pair sets identical across engines:", ok)
    return 0 if ok else 1


def plan_runs(x: np.ndarray, dev: str, skip: set[str],
              suffix: str = "") -> list[tuple[str, Callable[[], Any]]]:
    runs: list[tuple[str, Callable[[], Any]]] = []
    if "faiss-full" not in skip and not suffix:
        runs.append(("faiss-full", lambda: run_faiss_full(x)))
    if "faiss" not in skip:
        runs.append(("faiss" + suffix, lambda: run_engine(x, "faiss", "cpu")))
    if "torch" not in skip:
        runs.append(("torch" + suffix, lambda: run_engine(x, "torch", dev)))
    if dev == "cuda" and "two-pass" not in skip:
        runs.append(("two-pass" + suffix, lambda: run_engine_obj(x, "two-pass")))
    if "gemm" not in skip and not suffix:
        for dtype in (("float32",) if dev == "cpu" else ("float16", "bfloat16")):
            runs.append((f"gemm-{dtype}", lambda dtype=dtype: run_gemm(x, dev, dtype)))
    return runs


def bench_size(n: int, dim: int, dev: str, planted: float,
               skip: set[str]) -> tuple[list[dict[str, Any]], bool]:
    """All runs at one N: the planted data, then the dense data (100x the pairs)."""
    out: list[dict[str, Any]] = []
    ok = True
    for dense in (False, True):
        if dense and "dense" in skip:
            continue
        print(f"N={n} D={dim} device={dev}{' dense' if dense else ''}", flush=True)
        x = make_data(n, dim, planted, dense=dense)
        if dev == "cuda" and not dense:  # warm-up: Triton compile, cuBLAS initialisation
            run_engine(x[: min(n, 20000)], "torch", dev)
            run_engine_obj(x[: min(n, 20000)], "two-pass")
        results = {name: measure(name, fn, dev)
                   for name, fn in plan_runs(x, dev, skip, "-dense" if dense else "")}
        del x
        ref = next((r["pairs"] for k, r in results.items() if not k.startswith("gemm")), None)
        base = results.get("faiss-full", {}).get("seconds")
        gemm = results.get("gemm-float32") or results.get("gemm-bfloat16")
        for name, r in results.items():
            r.update(n=n, dim=dim, device=dev, data="dense" if dense else "planted")
            pairs = r.pop("pairs", None)
            if not name.startswith("gemm") and ref is not None and pairs is not None:
                r["same_pairs"] = bool(np.array_equal(pairs, ref))
                r["n_pairs"] = len(pairs)
                ok &= r["same_pairs"]
            if base:
                r["speedup_vs_faiss_full"] = base / r["seconds"]
                r["cpu_speedup_vs_faiss_full"] = results["faiss-full"]["cpu_seconds"] / max(
                    r["cpu_seconds"], 1e-9)
            if gemm:
                r["gemm_fraction"] = gemm["seconds"] / r["seconds"]
        out += results.values()
    return out, ok


def write_docs(rows: list[dict[str, Any]], args: argparse.Namespace, dev: str) -> None:
    from _report import update_section

    cmd = "python benchmarks/match.py " + " ".join(sys.argv[1:])
    lines = [f"## Exact band search [{LO}, {HI}] (benchmarks/match.py)", "",
             f"Machine: {machine(dev)}. Date: {dt.date.today().isoformat()}. "
             f"Command: `{cmd}`. Load average when it ended: "
             f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (other work on the machine "
             "inflates wall-clock times; CPU seconds are the process's own).", "",
             "Unit vectors stored as float16, 1% of rows with a planted partner at cosine "
             "~0.98; 'dense' plants 100x more pairs (every row in a group of three). "
             "Every engine's pair set was checked equal to the others'.", "",
             "| N | D | data | run | seconds | CPU seconds | vs FAISS full | GEMM-limit fraction "
             "| pairs | candidates | peak RSS MiB (growth in run) | same pairs |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    def fmt(v: float | None, unit: str = "") -> str:
        return "-" if v is None else f"{v:.2f}{unit}"

    for r in rows:
        info = r.get("info") or {}
        speed = fmt(r.get("speedup_vs_faiss_full"), "x")
        if "cpu_speedup_vs_faiss_full" in r:
            speed += f" (CPU {r['cpu_speedup_vs_faiss_full']:.2f}x)"
        lines.append(
            f"| {r['n']} | {r['dim']} | {r['data']} | {r['run']} | {r['seconds']:.2f} | "
            f"{r['cpu_seconds']:.2f} | {speed} | "
            f"{fmt(r.get('gemm_fraction'))} | {r.get('n_pairs', '')} | "
            f"{info.get('candidates', '')} | {r['peak_rss_mib']:.0f} "
            f"(+{r['peak_rss_mib'] - r['rss_before_mib']:.0f}) | "
            f"{r.get('same_pairs', '')} |")
    for n in sorted({r["n"] for r in rows}):
        base = next((r for r in rows if r["n"] == n and r["run"] == "torch"), None)
        dense = next((r for r in rows if r["n"] == n and r["run"] == "torch-dense"), None)
        if base and dense:
            grow = [r["peak_rss_mib"] - r["rss_before_mib"] for r in (base, dense)]
            lines.append(f"\nPeak RSS flatness at N={n}: the torch engine's run grew the "
                         f"process by {grow[0]:.0f} MiB with {base.get('n_pairs')} pairs and "
                         f"by {grow[1]:.0f} MiB with {dense.get('n_pairs')} pairs (peak "
                         f"{base['peak_rss_mib']:.0f} / {dense['peak_rss_mib']:.0f} MiB, "
                         "torch and the data included).")
    torch_infos = [(r["n"], r["info"]) for r in rows if r.get("run") == "torch" and r.get("info")]
    if torch_infos:
        lines += ["", "Engine choices (from `band_search(...).info`):", ""]
        for n, info in torch_infos:
            keep = {k: info[k] for k in ("kernel", "precision", "margin", "threshold",
                                         "pruning", "tile", "block_rows") if k in info}
            if "pruning" in keep and isinstance(keep["pruning"], dict):
                keep["pruning"] = {k: v for k, v in keep["pruning"].items()
                                   if k in ("dims", "survivor_rate", "energy_in_dims")}
            lines.append(f"- N={n}: `{json.dumps(keep, default=float)}`")
    lines += ["", "'vs FAISS full' = FAISS `IndexFlatIP.range_search` over all N x N divided by "
              "the run's time; 'GEMM-limit fraction' = time of the triangle's plain GEMM "
              "tiles (fp32 on CPU, bf16 on GPU) divided by the run's time (above 1: the run "
              "does less arithmetic than the plain GEMM, as pruning does)."]
    # the doc's match section holds one sub-section per device and dimension
    doc = ROOT / "docs" / "benchmarks.md"
    text = doc.read_text(encoding="utf-8") if doc.exists() else ""
    begin, end = "<!-- match:begin -->", "<!-- match:end -->"
    body = text.split(begin, 1)[1].split(end, 1)[0] if begin in text and end in text else ""
    sub = f"match-{dev}-d{args.dim}" + (f"-t{args.threads}" if args.threads else "")
    sb, se = f"<!-- {sub}:begin -->", f"<!-- {sub}:end -->"
    block = f"{sb}\n" + "\n".join(lines) + f"\n{se}"
    if sb in body and se in body:
        pre, rest = body.split(sb, 1)
        body = pre + block + rest.split(se, 1)[1]
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    update_section(doc, "match", body.strip() + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
