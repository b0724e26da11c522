"""Reading WebDataset images again in random order, as export and ``show`` do (a pair's
positive, a shuffled export): by the place embed records (``member_offset``/``member_size``)
against the lookup by member name that stores without places fall back to.

Synthetic shards (``wds_memory.write_shards``: img2dataset's layout, a few hundred bytes an
image) are written once; the source is opened as embed opens it, and ``--reads`` samples drawn
at random (seeded) are read again with a fresh ``tar_ref_reader`` per mode:

  place         read at the recorded place (one header check, one read; no index)
  name          by member name, the index budget larger than the source (every tar indexed
                once, on first use)
  name-budget   by member name, the index budget cut to ``--budget-fraction`` of the source's
                images: what a source of 1/fraction times the default budget (8M images)
                meets, e.g. 0.1 stands for ~80M images

Each mode reports reads a second and the tars it indexed. Writes its table between the
``wds-reads`` markers in docs/benchmarks.md unless ``--no-write``. ``--mode M`` runs one mode
and prints its JSON line (to time whole processes side by side).

    python benchmarks/wds_reads.py [--samples 1000000] [--shard-samples 10000]
                                   [--reads 20000] [--budget-fraction 0.1] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import machine, update_section  # noqa: E402
from wds_memory import write_shards  # noqa: E402

MODES = ("place", "name", "name-budget")


def draws(spec: str, reads: int, seed: int) -> list[tuple[str, str, tuple[int, int]]]:
    """``reads`` random samples of the source: (tar, member, place), as embed records them."""
    from pairmine.sources import open_source

    src: Any = open_source(spec)
    rows = random.Random(seed).sample(range(len(src)), min(reads, len(src)))
    refs = src.refs_listing().take(rows).to_pylist()
    places = src.places(rows).to_pylist()
    return [(r["source"], r["member"], (p["member_offset"], p["member_size"]))
            for r, p in zip(refs, places, strict=True)]


def run_mode(mode: str, picked: list[tuple[str, str, tuple[int, int]]], samples: int,
             fraction: float) -> dict[str, Any]:
    from pairmine.sources import wds

    indexed = [0]
    members = wds._members

    def counted(path: str) -> Any:
        indexed[0] += 1
        return members(path)

    wds._members = counted
    wds.MAX_INDEXED_MEMBERS = max(1, int(samples * fraction)) if mode == "name-budget" \
        else max(wds.MAX_INDEXED_MEMBERS, samples)
    wds.MAX_INDEXED_TARS = max(wds.MAX_INDEXED_TARS, samples)
    read = wds.tar_ref_reader()
    total = 0
    start = time.perf_counter()
    for source, member, place in picked:
        data, _ = read(source, member, place=place) if mode == "place" else read(source, member)
        total += len(data)
    seconds = time.perf_counter() - start
    return {"mode": mode, "reads": len(picked), "seconds": seconds,
            "reads_per_s": len(picked) / seconds, "tars_indexed": indexed[0], "bytes": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--shard-samples", type=int, default=10_000)
    ap.add_argument("--reads", type=int, default=20_000)
    ap.add_argument("--budget-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", choices=MODES, help="run this mode only, print its JSON line")
    ap.add_argument("--work", type=Path, help="where the shards are (written when absent); "
                    "default: a new temporary folder, removed at the end")
    ap.add_argument("--no-write", action="store_true", help="print, do not update the docs")
    ap.add_argument("--note", default="", help="appended to the machine description")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="wds-reads-"))
    try:
        folder = work / f"shards-{args.samples}-{args.shard_samples}"
        spec = str(folder / f"{{{0:06d}..{-(-args.samples // args.shard_samples) - 1:06d}}}.tar")
        if not folder.is_dir():
            spec = write_shards(folder, args.samples, args.shard_samples)
        picked = draws(spec, args.reads, args.seed)
        results = [run_mode(mode, picked, args.samples, args.budget_fraction)
                   for mode in ([args.mode] if args.mode else MODES)]
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    for r in results:
        print(json.dumps(r))
    if args.mode or args.no_write:
        return
    label = {"place": "at the recorded place",
             "name": "by name, every tar's index kept",
             "name-budget": f"by name, index budget {args.budget_fraction:g} of the images "
                            f"(a source {1 / args.budget_fraction:g}× the default 8M budget)"}
    base = results[0]["reads_per_s"]
    rows = "\n".join(f"| {label[r['mode']]} | {r['reads_per_s']:,.0f} | {r['tars_indexed']:,} "
                     f"| {base / r['reads_per_s']:.1f}× |" for r in results)
    shards = -(-args.samples // args.shard_samples)
    body = f"""## WebDataset images read again in random order (export, show)

`python benchmarks/wds_reads.py --samples {args.samples} --shard-samples {args.shard_samples} \
--reads {args.reads} --budget-fraction {args.budget_fraction:g}`, {time.strftime('%Y-%m-%d')}, \
{machine()}{', ' + args.note if args.note else ''}.

{args.reads:,} samples drawn at random from {args.samples:,} synthetic images in {shards:,} \
tars of {args.shard_samples:,} (img2dataset's layout), read again one by one in one thread, \
as an export fetches a pair's positive. Each mode starts with an empty reader.

| read | reads/s | tars indexed | time vs. place |
| --- | ---: | ---: | ---: |
{rows}

Embed records every image's place in the store (`member_offset`, `member_size`), so export
and `show` read at it, after checking the tar header before it, and index no tar. Stores
embedded earlier are read by name: with every tar's index kept, that costs indexing each tar
once; beyond the index budget, random reads index a tar again on most reads.
"""
    update_section(ROOT / "docs" / "benchmarks.md", "wds-reads", body)


if __name__ == "__main__":
    main()
