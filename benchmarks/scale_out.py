"""Scale-out: memory flat in N, Ray against one process, and 100M rows on paper (issue 22).

1. **Stores of N x 128 float16 unit vectors** (N = 1M, 4M, optionally 20M), generated as a
   clip-retrieval layout (``img_emb/img_emb_K.npy`` + ``metadata/metadata_K.parquet``, 1M
   rows a partition, seeded, 1% of the rows planted near an earlier row so that the band
   holds pairs) and turned into a store with ``pairmine import``.
2. **Match under a memory cgroup**: ``pairmine match --min 0.95 --max 0.99 --subset 5000
   --against all`` in one process and with ``--ray local --ray-workers 2``, each inside a
   fresh memory cgroup (``../shared/tools/measure.py --cgroup-limit``): wall time, the peak
   RSS of every process (measure.py) and its peak RssAnon (sampled here from
   ``/proc/PID/status``: RSS less the file pages of the memory-mapped store, i.e. what the
   process really holds), and the two pair stores compared file by file. When a run fails
   under the cap, the next cap of ``--limits`` is tried: the table says which cap passed.
3. **Compute-bound match** (``--subset 1.0``, the full self-band of ``--compute-rows``
   rows, sized so one process takes >= 60 s): one process, Ray with 2 workers, Ray with 1.
4. **On paper**: 100M x 128, full self-band and a 10% subset, on 8 and 64 H100s, from the
   H100 tile time in ../shared/notes and the tile rate measured here.

Writes its section of docs/benchmarks.md (``scale-out``).

    python benchmarks/scale_out.py [--sizes 1M,4M] [--limits 1G,1.5G,2G,3G]
                                   [--compute-rows 300000] [--work DIR] [--no-docs]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# measure.py lives in the shared folder beside the repository ($PAIRMINE_MEASURE elsewhere)
MEASURE = Path(os.environ.get("PAIRMINE_MEASURE",
                              ROOT.parent / "shared" / "tools" / "measure.py"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import update_section  # noqa: E402

DIM = 128
PART_ROWS = 1_000_000  # rows a clip-retrieval partition (LAION's are ~1M)
CHUNK = 250_000  # rows generated at once
NEAR_FRACTION = 0.01
BAND = ("0.95", "0.99")
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
MIB = 1 << 20
# one H100, fused kernel, D=128 (../shared/notes/scale-out.md, performance-anchors.md): a
# 1M x 1M tile (2.56e14 FLOP) in 0.42 s
H100_TILE_S = 0.42
H100_TILE_ROWS = 1_000_000


# ---------------------------------------------------------------------------------------------
# the data


def parse_count(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1_000, "M": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if mult > 1 else text) * mult)


def generate_layout(root: Path, n: int, seed: int = 0) -> Path:
    """A clip-retrieval folder of ``n`` unit rows (float16, D=128), written part by part and
    chunk by chunk (memory: one chunk). Reused when a complete one with the same parameters
    is there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    params = {"n": n, "dim": DIM, "seed": seed, "part_rows": PART_ROWS,
              "near": NEAR_FRACTION, "version": 1}
    done = root / "complete.json"
    if done.exists() and json.loads(done.read_text()) == params:
        return root
    shutil.rmtree(root, ignore_errors=True)
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    parts = -(-n // PART_ROWS)
    for k in range(parts):
        rows = min(PART_ROWS, n - k * PART_ROWS)
        out = np.lib.format.open_memmap(root / "img_emb" / f"img_emb_{k}.npy", mode="w+",
                                        dtype=np.float16, shape=(rows, DIM))
        rng = np.random.default_rng([seed, k])
        for start in range(0, rows, CHUNK):
            stop = min(start + CHUNK, rows)
            x = rng.standard_normal((stop - start, DIM), dtype=np.float32)
            # planted pairs: a row near the row before it, cosine ~0.96-0.99 (in the band)
            near = rng.choice(np.arange(1, stop - start), size=int((stop - start) *
                                                                   NEAR_FRACTION),
                              replace=False)
            sigma = rng.uniform(0.15, 0.28, size=(near.size, 1)).astype(np.float32)
            x[near] = x[near - 1] + sigma * rng.standard_normal((near.size, DIM),
                                                                dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[start:stop] = x.astype(np.float16)
        out.flush()
        del out
        keys = pa.array([f"{k:05d}{i:07d}" for i in range(rows)], pa.string())
        pq.write_table(pa.table({"image_path": keys}),
                       root / "metadata" / f"metadata_{k}.parquet")
    done.write_text(json.dumps(params))
    return root


# ---------------------------------------------------------------------------------------------
# running a command in a cgroup, with RssAnon sampled per process


class AnonSampler(threading.Thread):
    """Peak ``RssAnon`` (from /proc/PID/status) of every process under ``root``, and of every
    ``ray::`` process (Ray's workers are children of the raylet, itself a child of the
    command; sampled every 0.2 s)."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.peaks: dict[int, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            try:
                top = psutil.Process(self.root)
                tree = [top, *top.children(recursive=True)]
            except psutil.NoSuchProcess:
                tree = []
            for p in tree:
                anon = _rss_anon(p.pid)
                if anon is not None and anon > self.peaks.get(p.pid, -1):
                    self.peaks[p.pid] = anon
            self.stop.wait(0.2)


def _rss_anon(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class Measured:
    label: str
    rc: int
    wall_s: float
    limit: str | None
    cgroup_max: int  # bytes
    oom_kills: int
    processes: list[dict[str, Any]] = field(default_factory=list)  # kind, rss, anon
    tried: list[str] = field(default_factory=list)  # caps that failed first

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.oom_kills == 0

    def peak(self, kind: str, what: str = "rss") -> list[int]:
        return [p[what] for p in self.processes if p["kind"] == kind]


def measured(label: str, argv: list[str], runs: Path, limit: str | None) -> Measured:
    """``argv`` under measure.py (in a cgroup of ``limit``), RssAnon sampled beside it."""
    env = {**os.environ, **RAY_ENV, "MEASURE_RUNS": str(runs)}
    cmd = [sys.executable, str(MEASURE), "--label", label]
    if limit is not None:
        cmd += ["--cgroup-limit", limit]
    proc = subprocess.Popen([*cmd, "--", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    sampler = AnonSampler(proc.pid)
    sampler.start()
    summary, _ = proc.communicate()
    sampler.stop.set()
    sampler.join()
    report = json.loads((runs / f"{label}.json").read_text())
    cg = report.get("cgroup", {})
    oom = 0
    for line in str(cg.get("oom_control", "")).splitlines():
        if line.startswith("oom_kill "):
            oom = int(line.split()[1])
    procs = [{"kind": p["kind"], "pid": p["pid"], "rss": p["peak_rss"],
              "anon": sampler.peaks.get(p["pid"], 0),
              # a worker that ran a unit (Ray also keeps idle workers started)
              "busy": any(t.startswith("ray::") and t not in ("ray::IDLE", "ray::probe_node")
                          for t in p["titles"])}
             for p in report["processes"]]
    m = Measured(label=label, rc=int(report["rc"]), wall_s=float(report["wall_s"]),
                 limit=limit, cgroup_max=int(cg.get("max_usage", 0) or 0), oom_kills=oom,
                 processes=procs)
    print(summary.strip(), flush=True)
    if not m.ok:
        err = (runs / f"{label}.err").read_text()[-600:]
        print(f"  {label} failed (rc {m.rc}, oom kills {m.oom_kills}): {err}", flush=True)
    return m


def measured_lowest(label: str, argv: list[str], runs: Path, limits: list[str],
                    out: Path) -> Measured:
    """The run under the first cap of ``limits`` it passes (``out`` is emptied between
    tries: each try starts from nothing)."""
    failed: list[str] = []
    m = None
    for limit in limits:
        shutil.rmtree(out, ignore_errors=True)
        m = measured(f"{label}-{limit}", argv, runs, limit)
        if m.ok:
            break
        failed.append(limit)
    assert m is not None
    m.tried = failed
    return m


def pairmine_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "pairmine", *args]


def same_files(a: Path, b: Path) -> bool:
    """Whether two pair stores hold byte-identical pair and duplicate files."""
    def digests(store: Path) -> dict[str, str]:
        return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(store.rglob("*.parquet")) if ".partial" not in str(p)}
    da, db = digests(a), digests(b)
    return bool(da) and da == db


def pair_count(store: Path) -> int:
    return int(json.loads((store / "manifest.json").read_text())["counts"]["unordered"])


def search_seconds(store: Path) -> float:
    return float(json.loads((store / "manifest.json").read_text())["timings"]["search_s"])


# ---------------------------------------------------------------------------------------------
# the runs


def memory_runs(n: int, work: Path, runs: Path, limits: list[str],
                ray_limits: list[str]) -> dict[str, Any]:
    tag = f"{n // 1_000_000}M"
    src = generate_layout(work / f"src-{tag}", n)
    emb = work / f"emb-{tag}"
    shutil.rmtree(emb, ignore_errors=True)
    imp = measured_lowest(f"import-{tag}", pairmine_argv("import", str(src), str(emb)),
                          runs, limits, emb)
    if not imp.ok:
        raise SystemExit(f"import of {tag} failed under every cap")
    rows: dict[str, Any] = {"n": n, "import": imp,
                            "store_bytes": sum(p.stat().st_size for p in emb.rglob("*")
                                               if p.is_file())}
    band = ["--min", BAND[0], "--max", BAND[1], "--subset", "5000", "--against", "all",
            "--device", "cpu"]
    one, ray = work / f"pairs-{tag}-1p", work / f"pairs-{tag}-ray"
    rows["one"] = measured_lowest(f"match-{tag}-1p",
                                  pairmine_argv("match", str(emb), str(one), *band), runs,
                                  limits, one)
    rows["ray"] = measured_lowest(
        f"match-{tag}-ray2",
        pairmine_argv("match", str(emb), str(ray), *band, "--ray", "local",
                      "--ray-workers", "2"), runs, ray_limits, ray)
    rows["identical"] = rows["one"].ok and rows["ray"].ok and same_files(one, ray)
    rows["pairs"] = pair_count(one) if rows["one"].ok else -1
    rows["search_s"] = search_seconds(one) if rows["one"].ok else float("nan")
    for p in (one, ray):
        shutil.rmtree(p, ignore_errors=True)
    return rows


def compute_runs(n: int, work: Path, runs: Path) -> dict[str, Any]:
    """The full self-band of ``n`` rows: one process, Ray with 2 workers, with 1."""
    tag = f"{n // 1000}k"
    src = generate_layout(work / f"src-{tag}", n, seed=1)
    emb = work / f"emb-{tag}"
    shutil.rmtree(emb, ignore_errors=True)
    subprocess.run(pairmine_argv("import", str(src), str(emb)), check=True,
                   capture_output=True)
    band = ["--min", BAND[0], "--max", BAND[1], "--subset", "1.0", "--device", "cpu"]
    out: dict[str, Any] = {"n": n}
    stores = {}
    for name, extra in (("one", []), ("ray2", ["--ray", "local", "--ray-workers", "2"]),
                        ("ray1", ["--ray", "local", "--ray-workers", "1"])):
        store = work / f"pairs-{tag}-{name}"
        shutil.rmtree(store, ignore_errors=True)
        out[name] = measured(f"compute-{tag}-{name}",
                             pairmine_argv("match", str(emb), str(store), *band, *extra),
                             runs, None)
        stores[name] = store
    out["identical"] = all(out[k].ok for k in stores) and \
        same_files(stores["one"], stores["ray2"]) and same_files(stores["one"], stores["ray1"])
    if out["one"].ok:
        m = json.loads((stores["one"] / "manifest.json").read_text())
        out["pairs"] = m["counts"]["unordered"]
        out["search_s"] = m["timings"]["search_s"]
        out["blocks"] = m["search"].get("blocks")
    for store in stores.values():
        shutil.rmtree(store, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------
# the report


def _mib(b: int | float) -> str:
    return f"{b / MIB:,.0f}"


def _procs(m: Measured, kind: str) -> str:
    """Peak RSS (RssAnon) of each process of ``kind`` (Ray workers: those that ran units,
    largest first; idle ones Ray started are left out)."""
    procs = sorted((p for p in m.processes if p["kind"] == kind
                    and (kind != "ray-worker" or p.get("busy"))), key=lambda p: -p["rss"])
    if not procs:
        return "–"
    return " / ".join(f"{_mib(p['rss'])} ({_mib(p['anon'])})" for p in procs)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:,.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:,.1f} min"
    return f"{seconds / 3600:,.1f} h"


def paper(rate: float) -> list[str]:
    """100M x 128 on 8 and 64 H100s: tiles of 1M x 1M rows, the H100 tile time; and what
    the CPU rate measured here would take."""
    n, block = 100_000_000, H100_TILE_ROWS
    blocks = n // block
    block_bytes = block * DIM * 2
    lines = ["| work | tiles (1M x 1M rows) | bytes read (block i kept, j streamed) | "
             "memory per worker | GPU-hours | 8 GPUs | 64 GPUs | this CPU (2 cores) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    works = (
        ("full self-band (i <= j)", blocks * (blocks + 1) // 2, blocks,
         n * (n - 1) / 2),
        ("10% subset against itself", (blocks // 10) * (blocks // 10 + 1) // 2, blocks // 10,
         (n / 10) * (n / 10 - 1) / 2),
        ("10% subset against all", (blocks // 10) * blocks, blocks // 10, n / 10 * n),
    )
    for name, tiles, rows_i, comparisons in works:
        read = rows_i * block_bytes + tiles * block_bytes
        gpu_s = tiles * H100_TILE_S
        lines.append(
            f"| {name} | {tiles:,} | {read / 1e12:,.2f} TB | 2 blocks = "
            f"{2 * block_bytes / 1e6:,.0f} MB + candidates | {gpu_s / 3600:,.2f} | "
            f"{_duration(gpu_s / 8)} | {_duration(gpu_s / 64)} | "
            f"{_duration(comparisons / rate)} |")
    return lines


def report(mem: list[dict[str, Any]], compute: dict[str, Any] | None, commit: str,
           args: argparse.Namespace) -> str:
    cpu = _cpu_model()
    lines = [
        "## scale-out: memory flat in N, Ray against one process (issue 22)", "",
        f"Machine: {cpu}, {os.cpu_count()} cores seen, "
        f"{platform.platform()}; load average when the section was written "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; the runs shared the machine "
        f"with other jobs, so read wall times as ratios. Date {date.today()}; pairmine at commit "
        f"`{commit}`; command: `python benchmarks/scale_out.py --sizes {args.sizes} "
        f"--limits {args.limits} --compute-rows {args.compute_rows}`."
        + (f" {args.note}" if args.note else ""), "",
        "Stores: N x 128 float16 unit vectors, generated as a clip-retrieval layout (1M rows "
        "a partition, 1% of rows planted near another row) and made a store by `pairmine "
        "import` (65,536-row shards). Each command ran in a fresh memory cgroup (v1) of the "
        "cap shown (the lowest of the caps tried that it passed; a failed cap is listed), "
        "under `../shared/tools/measure.py`. Peak RSS per process in MiB, peak RssAnon in "
        "parentheses (RSS counts the store's memory-mapped pages, which the kernel can drop; "
        "RssAnon is what the process holds).", "",
        "| N | store | step | cap (failed) | wall s | cgroup peak MiB | driver RSS (anon) | "
        "Ray workers RSS (anon) | pairs | same pairs |",
        "| ---: | ---: | --- | --- | ---: | ---: | --- | --- | ---: | --- |",
    ]
    for r in mem:
        steps = (("`import`", r["import"]), ("match, one process", r["one"]),
                 ("match, `--ray local --ray-workers 2`", r["ray"]))
        for name, m in steps:
            failed = f" ({', '.join(m.tried)})" if m.tried else ""
            pairs = "" if name.startswith("`import") else f"{r['pairs']:,}"
            same = "" if not name.startswith("match, `--ray") else \
                ("identical" if r["identical"] else "**differ**")
            status = "" if m.ok else " **failed**"
            lines.append(
                f"| {r['n'] / 1e6:g}M | {r['store_bytes'] / 1e9:,.2f} GB | {name}{status} | "
                f"{m.limit}{failed} | {m.wall_s:,.1f} | {_mib(m.cgroup_max)} | "
                f"{_procs(m, 'driver')} | {_procs(m, 'ray-worker')} | {pairs} | {same} |")
    def anon(m: Measured, kind: str) -> str:
        values = [p["anon"] for p in m.processes if p["kind"] == kind
                  and (kind != "ray-worker" or p.get("busy"))]
        return _mib(max(values)) if values else "–"

    sizes = ", ".join(f"{r['n'] / 1e6:g}M" for r in mem)
    lines += [
        "", f"Peak RssAnon against N ({sizes}): import "
        f"{', '.join(anon(r['import'], 'driver') for r in mem)} MiB; match in one process "
        f"{', '.join(anon(r['one'], 'driver') for r in mem)} MiB; on Ray the driver "
        f"{', '.join(anon(r['ray'], 'driver') for r in mem)} MiB and the largest worker "
        f"{', '.join(anon(r['ray'], 'ray-worker') for r in mem)} MiB. RSS grows with N "
        "only by the pages of the memory-mapped store a process touched, which the kernel "
        "drops under the cap (a one-process run passes a cap smaller than its store). "
        "Ray's own processes (raylet, GCS, dashboard agent: a few hundred MiB) are inside "
        "the cap and its peak, not in the driver/worker columns; a Ray run that needs a "
        "larger cap lost workers to the OOM killer at the smaller one (they were retried)."]
    rate = float("nan")
    if compute is not None:
        one, ray2, ray1 = compute["one"], compute["ray2"], compute["ray1"]
        n = compute["n"]
        comparisons = n * (n - 1) / 2
        rate = comparisons / one.wall_s
        same = "identical" if compute["identical"] else "**differ**"
        lines += [
            "", f"Compute-bound match: the full self-band (`--subset 1.0`) of {n:,} rows, "
            f"band [{BAND[0]}, {BAND[1]}], {compute.get('pairs', '?'):,} pairs, "
            f"{compute.get('blocks', '?')} blocks; no cgroup.", "",
            "| path | wall s | speed vs one process | same pairs |", "| --- | ---: | ---: | --- |",
            f"| one process | {one.wall_s:,.1f} | 1.00x | |",
            f"| `--ray local --ray-workers 2` | {ray2.wall_s:,.1f} | "
            f"{one.wall_s / ray2.wall_s:.2f}x | {same} |",
            f"| `--ray local --ray-workers 1` | {ray1.wall_s:,.1f} | "
            f"{one.wall_s / ray1.wall_s:.2f}x | |",
            "", "Each path ran once, one after the other, while other jobs came "
            "and went on the same 2 cores: read each figure as one sample (a swing of the "
            "load between two runs can be as large as the differences).", "",
            f"2 workers against 1: {ray1.wall_s / ray2.wall_s:.2f}x. Measured rate of "
            f"the one-process run: {rate:,.3g} comparisons/s (wall time, start-up included; "
            f"the search alone: {comparisons / compute.get('search_s', one.wall_s):,.3g}/s).",
        ]
    lines += [
        "", "On paper, 100M x 128 (tiles of 1M x 1M rows; one H100 does a tile in "
        f"{H100_TILE_S} s with the fused kernel, ../shared/notes/performance-anchors.md; "
        "ideal scaling; a 1M-row float16 block is 256 MB, so a worker keeps block i and "
        "streams the j blocks; the last column is the rate measured above on this 2-core "
        "CPU):", ""]
    lines += paper(rate) if rate == rate else ["(no compute run: no CPU rate)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1M,4M")
    ap.add_argument("--limits", default="1G,1.5G,2G,3G",
                    help="memory caps to try, lowest first")
    ap.add_argument("--ray-limits", default=None,
                    help="caps to try for the Ray runs [default: --limits]")
    ap.add_argument("--compute-rows", type=int, default=300_000,
                    help="rows of the compute-bound full self-band (0: skip)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/pm-scale-out"))
    ap.add_argument("--reuse-memory", action="store_true",
                    help="keep the memory runs saved by an earlier invocation (sizes "
                         "already there are not run again)")
    ap.add_argument("--note", default="", help="a sentence added to the report's header "
                    "(e.g. how the reused runs were made)")
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args(argv)
    if not MEASURE.is_file():
        raise SystemExit(f"{MEASURE} not found")
    args.work.mkdir(parents=True, exist_ok=True)
    runs = args.work / "measure-runs"
    runs.mkdir(exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    # the code measured: pairmine/ as committed, or not (this script and docs do not count)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                            "pairmine"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    commit += " (with uncommitted changes to pairmine/)" if dirty else ""
    limits = [x.strip() for x in args.limits.split(",") if x.strip()]
    started = time.perf_counter()
    saved = args.work / "results.json"
    mem: list[dict[str, Any]] = []
    if args.reuse_memory:  # the memory runs of an earlier invocation (e.g. to redo compute)
        mem = [{k: (Measured(**v) if isinstance(v, dict) and "label" in v else v)
                for k, v in r.items()} for r in json.loads(saved.read_text())]
    for size in args.sizes.split(","):
        n = parse_count(size)
        if any(r["n"] == n for r in mem):
            continue
        ray_limits = limits if args.ray_limits is None else \
            [x.strip() for x in args.ray_limits.split(",") if x.strip()]
        mem.append(memory_runs(n, args.work, runs, limits, ray_limits))
        print(f"[{time.perf_counter() - started:,.0f} s] {size} done", flush=True)
        saved.write_text(json.dumps(
            [{k: (v.__dict__ if isinstance(v, Measured) else v) for k, v in r.items()}
             for r in mem], indent=1))
    compute_file = args.work / "compute.json"
    compute: dict[str, Any] | None = None
    if args.compute_rows and args.reuse_memory and compute_file.exists():
        compute = {k: (Measured(**v) if isinstance(v, dict) and "label" in v else v)
                   for k, v in json.loads(compute_file.read_text()).items()}
        if compute.get("n") != args.compute_rows:
            compute = None
    if args.compute_rows and compute is None:
        compute = compute_runs(args.compute_rows, args.work, runs)
        compute_file.write_text(json.dumps(
            {k: (v.__dict__ if isinstance(v, Measured) else v) for k, v in compute.items()},
            indent=1))
    body = report(mem, compute, commit, args)
    print(body)
    if not args.no_docs:
        update_section(ROOT / "docs" / "benchmarks.md", "scale-out", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _cpu_model() -> str:
    """The CPU's model name and its bf16 kind, from /proc/cpuinfo (the figures depend on it)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("model name")), platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines()
                      if line.startswith("flags")), []))
    kind = ("AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags
            else "AVX2" if "avx2" in flags else "no AVX2")
    return f"{model} ({kind})"
