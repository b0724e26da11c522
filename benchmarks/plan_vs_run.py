"""`match --plan` next to the run it predicts: bytes read, seconds of tiles, peak memory.

A synthetic store of N x 128 float16 unit rows (seeded; 1% of rows planted near another row)
is imported from a `.npy` (`pairmine import`), then for each case `match(..., dry_run=True)`
gives the plan and a fresh child process runs the same match; the child reports the bytes
its tiles and the engine's sample read (`MatchResult.bytes_read`), the seconds of its tiles
(the manifest's `search_s`) and its peak RSS (`ru_maxrss`). Writes its table between the
`plan-vs-run` markers in docs/benchmarks.md.

    python benchmarks/plan_vs_run.py [--rows 400000] [--work DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import update_section  # noqa: E402

CASES: dict[str, dict[str, Any]] = {
    "subset 5000 against all": {"subset": 5000, "against": "all"},
    "10% subset against itself": {"subset": 0.1, "against": "subset"},
    "whole store against itself": {"subset": None, "against": "subset"},
}
BAND = {"min_score": 0.95, "max_score": 0.99, "device": "cpu", "seed": 0}

CHILD = """
import json, sys
import pairmine
emb, out, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
r = pairmine.match(emb, out, **options)
print(json.dumps({"bytes_read": r.bytes_read, "pairs": r.pairs,
                  "search_s": r.manifest["timings"]["search_s"], "tiles": r.tiles}))
"""


def make_store(work: Path, rows: int) -> Path:
    import pairmine

    emb = work / f"emb-{rows}"
    if (emb / "manifest.json").exists():
        return emb
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, 128)).astype(np.float32)
    near = rng.choice(rows, size=rows // 100, replace=False)
    x[near] = x[(near + 1) % rows] + 0.12 * rng.standard_normal((len(near), 128))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    npy = work / f"vectors-{rows}.npy"
    np.save(npy, x.astype(np.float16))
    keys = work / f"keys-{rows}.txt"
    keys.write_text("".join(f"row-{i:09d}\n" for i in range(rows)), encoding="utf-8")
    pairmine.import_embeddings(npy, emb, layout="npy", keys=str(keys), normalize=True)
    npy.unlink()
    return emb


def run_child(emb: Path, out: Path, options: dict[str, Any]) -> dict[str, Any]:
    """The match in a fresh process: its result and its own peak RSS (``wait4``'s usage)."""
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as stdout:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(emb), str(out),
                                 json.dumps(options)], stdout=stdout, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise SystemExit(f"match failed ({proc.returncode}): {options}")
        stdout.seek(0)
        found: dict[str, Any] = json.loads(stdout.read().strip().splitlines()[-1])
    found["wall_s"] = time.perf_counter() - t
    found["peak_rss"] = usage.ru_maxrss * 1024  # KiB on Linux
    return found


def main() -> None:
    import pairmine

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="plan-vs-run-"))
    work.mkdir(parents=True, exist_ok=True)
    emb = make_store(work, args.rows)
    mib = 1 << 20
    lines = ["| case | tiles | bytes read: plan / run | seconds, engine plan + tiles: plan / run "
             "| peak memory: plan per worker / run's RSS | pairs |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, case in CASES.items():
        options = {**BAND, **case}
        out = work / f"pairs-{name.replace(' ', '-').replace('%', 'pc')}"
        plan = pairmine.match(emb, out, dry_run=True, **options).unit_plan
        assert plan is not None
        run = run_child(emb, out, {**options, "overwrite": True})
        predicted = plan["bytes"]["tiles"] + plan["bytes"]["sample"]
        print(name, json.dumps({"plan_bytes": predicted, "plan_s": plan["estimate_seconds"],
                                "plan_peak": plan["memory"]["worker_peak_bytes"], **run}))
        lines.append(
            f"| {name} | {plan['tiles']:,} | {predicted / mib:,.1f} / "
            f"{run['bytes_read'] / mib:,.1f} MiB | {plan['estimate_seconds']:,.2f} / "
            f"{run['search_s']:,.2f} s | {plan['memory']['worker_peak_bytes'] / mib:,.0f} / "
            f"{run['peak_rss'] / mib:,.0f} MiB | {run['pairs']:,} |")
    head = (f"`python benchmarks/plan_vs_run.py --rows {args.rows}` ({time.strftime('%Y-%m-%d')},"
            f" {_cpu()}, load average at the end "
            f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}). A {args.rows:,} x 128 float16 "
            "store (synthetic, seeded), band [0.95, 0.99], CPU engine. 'plan' is `match --plan`"
            " (bytes of the tiles and of the engine's sample; the estimate from one warm tile);"
            " 'run' is the same match in a fresh process (its `bytes_read`, the manifest's "
            "`search_s`: the engine plan and every tile, cold; its peak RSS, which counts the "
            "store's mapped pages). The plan's seconds are the engine plan's set-up, timed, "
            "plus each tile at the rate of one warm tile: a run's first tiles are colder "
            "(pages, thread pools), which weighs on runs of a few tiles. The content-code "
            "passes of the duplicate check read 8 bytes a row more, which the plan lists "
            "apart.")
    body = "\n".join(["## `match --plan` next to the run", "", head, "", *lines])
    print(body)
    if not args.no_write:
        update_section(ROOT / "docs" / "benchmarks.md", "plan-vs-run", body)


def _cpu() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return "unknown CPU"
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines()
                  if ln.startswith("model name")), "unknown CPU")
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                      if ln.startswith("flags")), []))
    kind = ("AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags
            else "AVX2")
    return f"{model} ({kind}), {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
