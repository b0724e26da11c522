"""What one process holds when it opens an embeddings store and reads from it, at two sizes.

Synthetic float16 stores (D=128, unit rows, 64-hex content hashes, 10,000 rows a shard by
default) are written through `pairmine.stores.write_embedding_shard`, then a fresh child
process per store records its RSS, RssAnon (anonymous memory: what the process allocated,
not the page cache of the memory-mapped files) and peak RSS (VmHWM) after each step:

  open          `open_embeddings` (reads the manifest)
  block         `np.asarray(store.vectors[a:a + 16384], float32)`: one block of rows
  iter_codes    every shard's content codes, one shard at a time
  same_content  100,000 random pairs (1% of them a row with itself), confirmed on full hashes
  take          the `key` of 10,000 random rows
  whole         `store.meta`, `np.asarray(store.vectors)` and `content_codes(meta)`: the whole
                store in memory, which is what every process did before the lazy stores

Writes its table between the `store-memory` markers in docs/benchmarks.md.

    python benchmarks/store_memory.py [--rows 1000000 --rows 4000000] [--shard-rows 10000]
                                      [--keep DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _memory import child_json, proc_status  # noqa: E402
from _report import update_section  # noqa: E402

DIM = 128
STEPS = ("open", "block", "iter_codes", "same_content", "take", "whole")


def write_store(out: Path, rows: int, shard_rows: int, seed: int = 0) -> Path:
    """A store of ``rows`` unit float16 rows in shards of ``shard_rows``."""
    import pyarrow as pa

    from pairmine import stores

    rng = np.random.default_rng(seed)
    records = []
    for k, start in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - start)
        x = rng.standard_normal((n, DIM)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        ids = list(range(start, start + n))
        keys = [f"{i:09d}" for i in ids]
        meta = pa.table({
            "id": pa.array(ids, pa.int64()), "key": keys,
            "source": [f"/synthetic/{key}.jpg" for key in keys],
            "member": pa.nulls(n, pa.string()), "label": pa.array([i % 1000 for i in ids]),
            # distinct hashes whose first 8 bytes differ (a multiplicative hash of the id)
            "sha256": [f"{(i * 0x9E3779B97F4A7C15) % (1 << 64):016x}{i:048x}" for i in ids],
        }, schema=stores.META_SCHEMA())
        shard = stores.write_embedding_shard(out, k, x.astype(np.float16), meta, id_start=start)
        records.append(shard.to_json())
    stores.write_parquet_atomic(out / stores.ERRORS_FILE, stores.ERRORS_SCHEMA().empty_table())
    stores.finish_store(out, {"format": stores.EMBEDDINGS_FORMAT, "count": rows, "dim": DIM,
                              "dtype": "float16", "normalized": True, "errors": 0,
                              "items": rows, "shards": records})
    return out


def child(store_path: Path) -> dict[str, Any]:
    """Run the steps in this (fresh) process; RSS after each, and its seconds."""
    from pairmine import stores

    steps: dict[str, dict[str, float]] = {"start": proc_status()}

    def record(name: str, t0: float) -> None:
        steps[name] = {**proc_status(), "s": time.perf_counter() - t0}

    t0 = time.perf_counter()
    store = stores.open_embeddings(store_path)
    record("open", t0)
    n = len(store)
    t0 = time.perf_counter()
    block = np.asarray(store.vectors[n // 2:n // 2 + 16384], dtype=np.float32)
    assert block.shape[0] == min(16384, n - n // 2)
    record("block", t0)
    t0 = time.perf_counter()
    no_hash = sum(int((codes == 0).sum()) for _, codes in store.iter_codes())
    assert no_hash == 0
    record("iter_codes", t0)
    rng = np.random.default_rng(0)
    a = rng.integers(0, n, 100_000)
    b = np.where(rng.random(a.size) < 0.01, a, rng.integers(0, n, a.size))
    t0 = time.perf_counter()
    same = store.same_content(a, b)
    assert int(same.sum()) == int((a == b).sum())
    record("same_content", t0)
    t0 = time.perf_counter()
    store.take(rng.integers(0, n, 10_000), ["key"])
    record("take", t0)
    t0 = time.perf_counter()
    meta = store.meta
    whole = np.asarray(store.vectors)
    codes, _ = stores.content_codes(meta)
    assert whole.shape == (n, DIM) and codes.shape == (n,)
    record("whole", t0)
    return {"rows": n, "shards": len(store.shards), "steps": steps}


def measure(store: Path) -> dict[str, Any]:
    result: dict[str, Any] = child_json(__file__, [str(store)])
    return result


def table(results: list[dict[str, Any]]) -> str:
    head = "| rows | shards | " + " | ".join(STEPS) + " |"
    lines = [head, "| ---: | ---: | " + " | ".join("---:" for _ in STEPS) + " |"]
    for r in results:
        cells = []
        for step in STEPS:
            s = r["steps"][step]
            cells.append(f"{s['rss']:,.0f} / {s['anon']:,.0f} MiB, {s['s']:.2f} s")
        lines.append(f"| {r['rows']:,} | {r['shards']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, action="append", help="store sizes (repeatable)")
    ap.add_argument("--shard-rows", type=int, default=10_000)
    ap.add_argument("--keep", type=Path, help="write the stores here and keep them")
    ap.add_argument("--no-write", action="store_true", help="print, do not update the docs")
    ap.add_argument("--note", default="", help="appended to the machine description, e.g. "
                    "', other jobs were loading the machine'")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child)))
        return
    sizes = args.rows or [1_000_000, 4_000_000]
    results = []
    with tempfile.TemporaryDirectory(prefix="pairmine-store-memory-") as tmp:
        base = args.keep or Path(tmp)
        for rows in sizes:
            store = base / f"emb-{rows}"
            if not (store / "manifest.json").exists():
                t0 = time.perf_counter()
                write_store(store, rows, args.shard_rows)
                print(f"wrote {store} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            results.append(measure(store))
            print(json.dumps(results[-1]), file=sys.stderr)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    body = (
        "## Store memory: what a process holds after opening and reading an embeddings store\n\n"
        f"`python benchmarks/store_memory.py` ({time.strftime('%Y-%m-%d')}, {cpu}, "
        f"{os.cpu_count()} CPUs{args.note}). Synthetic float16 stores, D={DIM}, "
        f"{args.shard_rows:,} rows a shard, written "
        "by `write_embedding_shard`. Each cell: RSS / RssAnon after the step (cumulative, one "
        "fresh process per store), and the step's seconds. RssAnon is what the process "
        "allocated; the rest of RSS is file-backed (the shared libraries, and the pages of "
        "the memory-mapped shards that were read, which the kernel drops under pressure). "
        "`whole` reads the whole store (`store.meta`, "
        "`np.asarray(store.vectors)`, `content_codes`), as every process did before stores "
        "opened lazily.\n\n" + table(results) + "\n")
    print(body)
    if not args.no_write:
        update_section(ROOT / "docs" / "benchmarks.md", "store-memory", body)


if __name__ == "__main__":
    main()
