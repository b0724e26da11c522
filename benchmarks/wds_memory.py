"""What one process holds when it opens a WebDataset source and walks its listing, at two sizes.

Synthetic WebDataset shards (img2dataset's layout: per sample a few hundred bytes of JPEG-like
data as ``KEY.jpg`` and its class as ``KEY.cls``; 10,000 samples a shard by default) are
written with hand-made ustar headers (fast: a million samples in well under a minute), then a
fresh child process per size records, after each step, its RSS, RssAnon (anonymous memory:
what the process allocated, not the page cache of the shards it read) and the peak RssAnon
seen by a sampler thread every 10 ms during the step:

  open     ``WebDatasetSource(spec)``: every shard indexed
  walk     ``refs_listing()`` read group by group (65,536 rows), as the embed stage plans
           and writes its shards; a refs table where a source returns one
  read     ``read(i)`` and ``ext(i)`` of 1,000 samples spread over the source

``--compare DIR`` runs the same children once more with ``PYTHONPATH=DIR`` (a checkout of
another version, e.g. the one before the listing) and puts both in the table. Writes its table
between the ``wds-memory`` markers in docs/benchmarks.md unless ``--no-write``.

    python benchmarks/wds_memory.py [--samples 250000 --samples 1000000]
                                    [--shard-samples 10000] [--compare /path/to/checkout]
                                    [--work /tmp/DIR] [--keep] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _memory import child_json, proc_status  # noqa: E402
from _report import machine, update_section  # noqa: E402

STEPS = ("open", "walk", "read")
GROUP = 65536


def _header(name: bytes, size: int) -> bytes:
    """A ustar header for a regular file (mode 644, mtime 0)."""
    head = bytearray(512)
    head[0:len(name)] = name
    head[100:108] = b"0000644\0"
    head[108:116] = b"0000000\0"
    head[116:124] = b"0000000\0"
    head[124:136] = b"%011o\0" % size
    head[136:148] = b"00000000000\0"
    head[148:156] = b" " * 8  # the checksum counts itself as spaces
    head[156:157] = b"0"
    head[257:265] = b"ustar\x0000"
    head[148:156] = b"%06o\0 " % sum(head)
    return bytes(head)


def write_shards(folder: Path, samples: int, per_shard: int) -> str:
    """``samples`` samples in shards of ``per_shard``; returns the brace pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = os.urandom(4096)
    shards = -(-samples // per_shard)
    for s in range(shards):
        parts: list[bytes] = []
        for i in range(s * per_shard, min(samples, (s + 1) * per_shard)):
            key = b"%09d" % i
            size = 200 + i % 300  # a few hundred bytes, not all alike
            image = b"\xff\xd8\xff\xe0" + payload[i % 3000:i % 3000 + size - 4]
            label = b"%d" % (i % 1000)
            for name, data in ((key + b".jpg", image), (key + b".cls", label)):
                parts.append(_header(name, len(data)))
                parts.append(data)
                parts.append(bytes(-len(data) % 512))
        parts.append(bytes(1024))  # end of archive
        (folder / f"{s:06d}.tar").write_bytes(b"".join(parts))
    return str(folder / f"{{{0:06d}..{shards - 1:06d}}}.tar")


class _Sampler:
    """The peak RssAnon of this process, sampled every 10 ms."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, proc_status()["anon"])

    def reset(self) -> None:
        self.peak = proc_status()["anon"]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def child(spec: str) -> dict[str, Any]:
    """Run the steps in this (fresh) process; memory after each, its peak, and its seconds."""
    import numpy as np
    import pyarrow as pa

    from pairmine.sources.wds import WebDatasetSource

    # loaded before the baseline: pyarrow imports pandas on its first conversion of a list
    # (~35 MiB), a fixed cost every version pays at its first refs table
    pa.array(["warm-up"])

    sampler = _Sampler()
    steps: dict[str, dict[str, float]] = {"start": proc_status()}

    def record(name: str, t0: float) -> None:
        steps[name] = {**proc_status(), "peak_anon": max(sampler.peak, proc_status()["anon"]),
                       "s": time.perf_counter() - t0}
        sampler.reset()

    sampler.reset()
    t0 = time.perf_counter()
    src = WebDatasetSource(spec)
    record("open", t0)
    n = len(src)
    t0 = time.perf_counter()
    refs: Any = src.refs_listing()  # a listing, or a table from a version before listings
    unlabelled = 0
    if hasattr(refs, "group"):
        for number in range(-(-refs.num_rows // GROUP)):
            unlabelled += refs.group(number).column("label").null_count
    else:  # a refs table (a version without listings)
        for batch in refs.to_batches(max_chunksize=GROUP):
            unlabelled += batch.column(batch.schema.get_field_index("label")).null_count
    assert unlabelled == 0 and refs.num_rows == n
    record("walk", t0)
    t0 = time.perf_counter()
    total = 0
    for i in np.linspace(0, n - 1, 1000).astype(np.int64).tolist():
        total += len(src.read(i))
        assert src.ext(i) == "jpg"
    assert total > 0
    record("read", t0)
    sampler.stop()
    return {"samples": n, "shards": len(src.shards), "steps": steps}


def measure(spec: str, pythonpath: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=pythonpath, PYTHONDONTWRITEBYTECODE="1")
    result: dict[str, Any] = child_json(__file__, [spec], env)
    return result


def table(results: list[dict[str, Any]]) -> str:
    head = "| code | samples | shards | " + " | ".join(STEPS) + " | peak RssAnon |"
    lines = [head, "| --- | ---: | ---: | " + " | ".join("---:" for _ in STEPS) + " | ---: |"]
    for r in results:
        cells = []
        for step in STEPS:
            s = r["steps"][step]
            cells.append(f"{s['anon']:,.0f} MiB (peak {s['peak_anon']:,.0f}), {s['s']:.1f} s")
        peak = max(r["steps"][step]["peak_anon"] for step in STEPS)
        base = r["steps"]["start"]["anon"]
        lines.append(f"| {r['code']} | {r['samples']:,} | {r['shards']} | " + " | ".join(cells)
                     + f" | {peak:,.0f} MiB ({peak - base:+,.0f} over the imports) |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, action="append", help="source sizes (repeatable)")
    ap.add_argument("--shard-samples", type=int, default=10_000)
    ap.add_argument("--compare", help="a checkout of another version to measure too")
    ap.add_argument("--work", type=Path, help="where to write the shards (default: a new "
                    "folder under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the shards")
    ap.add_argument("--no-write", action="store_true", help="print, do not update the docs")
    ap.add_argument("--note", default="", help="appended to the machine description, e.g. "
                    "', other jobs were loading the machine'")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child)))
        return
    sizes = args.samples or [250_000, 1_000_000]
    work = args.work or Path(tempfile.mkdtemp(prefix="pairmine-wds-memory-", dir="/tmp"))
    versions = [("this", str(ROOT))]
    if args.compare:
        versions.append((os.path.basename(os.path.abspath(args.compare)),
                         os.path.abspath(args.compare)))
    results = []
    try:
        for samples in sizes:
            folder = work / f"wds-{samples}-{args.shard_samples}"
            t0 = time.perf_counter()
            spec = write_shards(folder, samples, args.shard_samples)
            print(f"wrote {folder} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            for code, path in versions:
                results.append({"code": code, **measure(spec, path)})
                print(json.dumps(results[-1]), file=sys.stderr)
            if not args.keep:
                shutil.rmtree(folder)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    compared = (f" `--compare` ran the same children on `{versions[1][1]}` (row "
                f"`{versions[1][0]}`)." if len(versions) > 1 else "")
    body = (
        "## WebDataset source memory: what a process holds after opening and walking one\n\n"
        f"`python benchmarks/wds_memory.py{' --compare ' + versions[1][1] if compared else ''}`"
        f" ({time.strftime('%Y-%m-%d')}, {machine()}{args.note}). Synthetic "
        f"shards of {args.shard_samples:,} samples (a `.jpg` of 200 to 500 bytes and a `.cls` "
        "each). One fresh process per size and code; each cell: RssAnon after the step "
        "(cumulative) with the step's sampled peak, and its seconds. `open` indexes every "
        "shard, `walk` reads the refs listing a group of 65,536 rows at a time, `read` reads "
        "1,000 samples spread over the source. The last column: the highest RssAnon of the "
        "run, and how much of it came after importing numpy, pyarrow (and the pandas it "
        f"loads) and pairmine.{compared}"
        "\n\n" + table(results) + "\n")
    print(body)
    if not args.no_write:
        update_section(ROOT / "docs" / "benchmarks.md", "wds-memory", body)


if __name__ == "__main__":
    main()
