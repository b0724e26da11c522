"""Scale-out on Ray: units/s with 1 and 2 workers, Ray's overhead against the single-process
path on the same work, the driver's peak RSS at two sizes, and 100M images on paper.

Workloads (one local Ray cluster, started once; its start time is reported apart):
  embed   the 10k CIFAR-10 test JPEGs (../shared/data) through the CIFAR ResNet-20
          checkpoint (cifar-resnet:PATH), cpu fp32, shards of 1,000 images (10 units)
  match   50k synthetic unit vectors, D=128 float16 (planted near-duplicates so the band is
          not empty; synthetic: embedding CIFAR-10 train here would take longer than the
          whole benchmark), default blocks of 4,096 anchor rows (13 units)
The driver's peak RSS is measured in a subprocess that runs `match --ray ADDRESS` against
the cluster, at two store sizes. Writes its table between markers in docs/benchmarks.md.

    python benchmarks/scale_out.py [--embed-images 10000] [--match-rows 50000]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import update_section  # noqa: E402

RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
# one H100, fused kernel, D=128 (shared/notes/scale-out.md): a 1M x 1M tile
H100_TILE_S = 0.42
H100_EMBED_IMG_S = 3_000  # ResNet-50 224 px with the CPU decode path (performance-anchors.md)
NOTE = ("Reading these figures: a match unit on Ray builds its engine again (the pruning "
        "rotation fitted on a sample, one pass over every row for the norms) and pays a task "
        "round trip, which is why `match --plan` times one block with its set-up; few, large "
        "blocks amortise it. Embed actors load the encoder once, so their overhead is the "
        "actors' start and a DataLoader per shard. The driver holds the store's metadata "
        "(keys, paths, hashes: O(N)) and memory-maps the matrix. A store of several shards is "
        "read into memory by `open_embeddings` (driver and workers alike): a lazy multi-shard "
        "view is needed before 100M rows.")


def cifar_test(tmp: Path, n: int) -> Path:
    with tarfile.open(SHARED / "cifar10-test-jpeg.tar.gz") as tar:
        tar.extractall(tmp, filter="data")
    root = tmp / "cifar10" / "test"
    for f in sorted(root.rglob("*.jpg"))[n:]:
        f.unlink()
    return root


def synthetic_store(out: Path, n: int, d: int = 128, seed: int = 0) -> Path:
    """An embeddings store of ``n`` unit rows in one shard (memory-mapped by readers)."""
    import pyarrow as pa

    from pairmine import stores

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    near = rng.choice(n, size=n // 10, replace=False)  # a tenth are near-copies of a neighbour
    x[near] = x[(near + 1) % n] + 0.12 * rng.standard_normal((len(near), d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    stores.save_npy_atomic(out / stores.EMB_DIR / "emb-00000.npy", x.astype(np.float16))
    keys = [f"{i:08d}" for i in range(n)]
    meta = pa.table({"id": pa.array(range(n), type=pa.int64()), "key": keys,
                     "source": [f"/synthetic/{k}.jpg" for k in keys],
                     "member": pa.nulls(n, pa.string()), "label": pa.nulls(n, pa.int64()),
                     "sha256": [f"{i:064x}" for i in range(n)]}, schema=stores.META_SCHEMA())
    stores.write_parquet_atomic(out / stores.META_DIR / "meta-00000.parquet", meta)
    stores.write_parquet_atomic(out / stores.ERRORS_FILE, stores.ERRORS_SCHEMA().empty_table())
    stores.finish_store(out, {"format": stores.EMBEDDINGS_FORMAT, "count": n, "dim": d,
                              "dtype": "float16", "normalized": True, "errors": 0, "items": n,
                              "shards": [{"emb": "emb/emb-00000.npy",
                                          "meta": "meta/meta-00000.parquet", "rows": n,
                                          "id_start": 0}],
                              "source": {"kind": "synthetic"}, "encoder": {}, "config": {}})
    return out


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def driver_peak_rss_mib(address: str, emb: Path, out: Path, subset: float) -> float:
    """Peak RSS of a driver process running match on Ray (its own process: a clean peak)."""
    code = ("import json, resource, sys, pairmine\n"
            "pairmine.match(sys.argv[1], sys.argv[2], min_score=0.9, max_score=0.99, "
            "subset=float(sys.argv[4]), device='cpu', ray=sys.argv[3])\n"
            "print('RSS=' + str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))")
    run = subprocess.run([sys.executable, "-c", code, str(emb), str(out), address, str(subset)],
                         capture_output=True, text=True, env={**os.environ, **RAY_ENV},
                         check=True)
    return float(run.stdout.strip().splitlines()[-1].removeprefix("RSS="))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embed-images", type=int, default=10_000)
    ap.add_argument("--match-rows", type=int, default=50_000)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args(argv)
    os.environ.update(RAY_ENV)
    import ray

    import pairmine

    tmp = Path(tempfile.mkdtemp(prefix="pm-scale-"))
    rows: list[dict[str, Any]] = []
    try:
        images = cifar_test(tmp / "cifar", args.embed_images)
        emb_kw: dict[str, Any] = {
            "encoder": f"cifar-resnet:{SHARED / 'resnet20-cifar10.th'}", "device": "cpu",
            "precision": "fp32", "batch_size": 500, "shard_size": 1000, "workers": 1}
        start_s, _ = timed(lambda: ray.init(num_cpus=os.cpu_count(), include_dashboard=False,
                                            _temp_dir=str(tmp / "ray"), log_to_driver=False,
                                            object_store_memory=200 << 20))
        address = str(ray.get_runtime_context().gcs_address)

        single, _ = timed(lambda: pairmine.embed(images, tmp / "emb-1p", **emb_kw))
        units = -(-args.embed_images // 1000)
        rows.append({"stage": "embed", "work": f"{args.embed_images:,} CIFAR-10 JPEGs, "
                     "ResNet-20", "units": units, "path": "single process",
                     "seconds": single})
        for workers, cpus in ((1, 2.0), (2, 1.0)):
            s, r = timed(partial(pairmine.embed, images, tmp / f"emb-ray{workers}", **emb_kw,
                                 ray="local", ray_workers=workers, cpus_per_worker=cpus))
            rows.append({"stage": "embed", "units": units, "path": f"ray, {workers} worker(s)",
                         "seconds": s, "vs_single": s / single - 1,
                         "retried": len(r.cluster["retried_units"])})

        emb = synthetic_store(tmp / "syn", args.match_rows)
        m_kw: dict[str, Any] = {"min_score": 0.9, "max_score": 0.99, "device": "cpu"}
        single, r1 = timed(lambda: pairmine.match(emb, tmp / "pairs-1p", **m_kw))
        blocks = r1.manifest["search"]["blocks"]
        rows.append({"stage": "match", "work": f"{args.match_rows:,} x 128 synthetic, "
                     "full self-band", "units": blocks, "path": "single process",
                     "seconds": single})
        for workers in (1, 2):
            s, r = timed(partial(pairmine.match, emb, tmp / f"pairs-ray{workers}", **m_kw,
                                 ray="local", ray_workers=workers))
            rows.append({"stage": "match", "units": blocks, "path": f"ray, {workers} worker(s)",
                         "seconds": s, "vs_single": s / single - 1,
                         "retried": len(r.cluster["retried_units"])})
        plan = pairmine.match(emb, tmp / "plan", **m_kw, dry_run=True).unit_plan
        assert plan is not None

        rss = []
        for n in (args.match_rows, 4 * args.match_rows):
            store = synthetic_store(tmp / f"rss-{n}", n)
            rss.append((n, driver_peak_rss_mib(address, store, tmp / f"rss-pairs-{n}", 0.1)))
            shutil.rmtree(store)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    body = report(rows, start_s, rss, plan)
    print(body)
    if not args.no_docs:
        update_section(ROOT / "docs" / "benchmarks.md", "scale-out", body)
    return 0


def makespan(costs: list[float], gpus: int) -> float:
    """Wall time of units with ``costs`` on ``gpus`` workers, largest first to the least
    loaded (the driver submits in block order; largest-first is the bound it approaches)."""
    import heapq

    loads = [0.0] * gpus
    for c in sorted(costs, reverse=True):
        heapq.heapreplace(loads, loads[0] + c)
    return max(loads)


def _duration(seconds: float) -> str:
    return f"{seconds:,.1f} s" if seconds < 120 else f"{seconds / 60:,.1f} min" \
        if seconds < 7200 else f"{seconds / 3600:,.1f} h"


def paper(plan: dict[str, Any]) -> list[str]:
    """100M images, D=128, on 8 and 64 GPUs: the match from the notes' H100 tile rate with
    this stage's unit (a block of 1M anchor rows against every later block: n_blocks - i
    tiles), the embed from the H100 embed rate; reading excluded (see the note)."""
    n, block = 100_000_000, 1_000_000
    lines = ["| work | units | GPU-hours | 8 GPUs | 64 GPUs |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, rows in (("match, full self-band", n), ("match, 10% subset", n // 10)):
        blocks = rows // block
        costs = [(blocks - i) * H100_TILE_S for i in range(blocks)]  # block i: its tiles
        lines.append(f"| {name} ({rows:,} rows, `--block-rows 1000000`) | {blocks:,} blocks "
                     f"({blocks * (blocks + 1) // 2:,} tiles) | {sum(costs) / 3600:,.2f} | "
                     f"{_duration(makespan(costs, 8))} | {_duration(makespan(costs, 64))} |")
    shards = -(-n // 65536)
    costs = [65536 / H100_EMBED_IMG_S] * shards
    lines.append(f"| embed, ResNet-50 224 px ({n:,} images, 65,536-image shards) | "
                 f"{shards:,} shards | {sum(costs) / 3600:,.1f} | "
                 f"{_duration(makespan(costs, 8))} | {_duration(makespan(costs, 64))} |")
    lines.append("")
    lines.append("With a block as the unit the largest block (block 0: one tile per block) "
                 "bounds the wall time on many GPUs; smaller `--block-rows` spread it.")
    return lines


def report(rows: list[dict[str, Any]], start_s: float, rss: list[tuple[int, float]],
           plan: dict[str, Any]) -> str:
    cores = os.cpu_count()
    lines = [
        "## scale-out on Ray (local cluster)", "",
        f"Machine: {platform.machine()} ({cores} cores, shared with other jobs), "
        f"{platform.platform()}; Ray local cluster; date {date.today()}; command: "
        "`python benchmarks/scale_out.py`", "",
        f"Local cluster start (`ray.init`, once, not in the rows): {start_s:.1f} s.", "",
        "| stage | work | units | path | seconds | units/s | vs single process | retried |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        vs = "" if "vs_single" not in r else f"{100 * r['vs_single']:+.0f}%"
        lines.append(f"| {r['stage']} | {r.get('work', '')} | {r['units']} | {r['path']} | "
                     f"{r['seconds']:.1f} | {r['units'] / r['seconds']:.2f} | {vs} | "
                     f"{r.get('retried', '')} |")
    lines += ["", "Driver peak RSS of `match --ray ADDRESS --subset 0.1` (its own process; the "
              "store is one memory-mapped shard):", "",
              "| rows | driver peak RSS |", "| ---: | ---: |"]
    lines += [f"| {n:,} | {mib:,.0f} MiB |" for n, mib in rss]
    lines += ["", f"`match --plan` on the 50k store: {plan['blocks']} blocks, "
              f"{plan['comparisons_per_second']:,.0f} comparisons/s measured on block "
              f"{plan['measured_block']}, estimate {plan['estimate_seconds']:.1f} s on one "
              "worker.", "",
              "On paper, 100M images at D=128 (H100 rates from shared/notes: a 1M x 1M tile "
              f"in {H100_TILE_S} s with the fused kernel; {H100_EMBED_IMG_S:,} images/s "
              "embedding ResNet-50 with the CPU decode path; ideal scaling, reading "
              "excluded: a 1M-row fp16 block is 256 MB, at 1-2 GB/s per node reading costs "
              "about as much as the tile, so keep block i resident and stream j):", ""]
    lines += paper(plan)
    lines += ["", NOTE]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
