"""The trainer and embed under CPU contention: img/s alone and beside one busy process.

Issue 20 measured `pairmine train` at 310 img/s alone and 45 img/s with one busy process on one
of two cores (7x slower where losing a core should cost ~2x). The cause: torch's OpenMP team was
sized to every core of the machine, and a team waits at the end of every operator for its
slowest thread, so a thread that shares its core with another process stalls each of the
thousands of operators of a step; idle threads spinning (OpenMP's active wait) took more of the
contested core. The fix (pairmine.runtime): threads = the CPUs this process may use (affinity,
cgroup quota) minus the decode workers, and passive waits.

This script runs the same commands with two code trees (`git archive` of two revisions, so a
half-edited working tree cannot disturb it): BEFORE (default: the commit before the fix) and
AFTER (default: HEAD), each alone and beside `python -c "while True: pass"` pinned to CPU 0, the
runs interleaved (alone, busy, alone, busy, ...) so a drift of the machine's load hits every
cell alike; the median of the repeats is reported. Workloads (the embedded CIFAR-10 sample,
2,000 32-px PNGs, offline):
  train  `pairmine train SAMPLE OUT --arch resnet18 --image-size 32 --batch-size 128
         --moco-k 1024 --precision fp32 --max-steps N` (issue 20's command; BEFORE has no
         --max-steps: one epoch of the first 128*N images); img/s of the training steps
         from log.jsonl
  embed  `pairmine embed SAMPLE OUT --encoder cifar-resnet:... --device cpu --precision fp32`;
         images / seconds of the embed call (runs.jsonl)
Writes the table into docs/benchmarks.md (section "contention").

    python benchmarks/contention.py [--before REV] [--after REV] [--reps 3] [--steps 15]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import update_section  # noqa: E402

SAMPLE = ROOT / "pairmine" / "assets" / "cifar10-sample"
ENCODER = f"cifar-resnet:{ROOT / 'pairmine' / 'assets' / 'resnet20-cifar10.th'}"
# the last commit before the contention fix (threads sized to the usable CPUs)
BEFORE = "359cde3"
BUSY = "import os\nos.sched_setaffinity(0, {0})\nwhile True:\n    pass\n"


def code_tree(rev: str, into: Path) -> Path:
    """The package at ``rev``, extracted (no .git, no working-tree edits)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "pairmine"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def short_hash(rev: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True,
                          capture_output=True, text=True).stdout.strip()


def subset(n: int, into: Path) -> Path:
    """The first ``n`` images of the sample as a folder source (train's BEFORE code has no
    --max-steps: a smaller source gives it the same number of steps)."""
    files = sorted(p for p in SAMPLE.rglob("*") if p.is_file() and p.suffix in (".png", ".jpg"))
    for f in files[:n]:
        target = into / f.relative_to(SAMPLE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
    return into


def run_train(code: Path, data: Path, out: Path, steps: int, max_steps: bool) -> float:
    cmd = [sys.executable, "-m", "pairmine", "train", str(data), str(out), "--arch", "resnet18",
           "--image-size", "32", "--batch-size", "128", "--moco-k", "1024", "--epochs", "1",
           "--precision", "fp32", "--device", "cpu"]
    if max_steps:
        cmd += ["--max-steps", str(steps)]
    _run(cmd, code)
    record = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    return float(record["images_per_s"])


def run_embed(code: Path, data: Path, out: Path) -> float:
    _run([sys.executable, "-m", "pairmine", "embed", str(data), str(out), "--encoder", ENCODER,
          "--device", "cpu", "--precision", "fp32"], code)
    line = json.loads((out / "runs.jsonl").read_text().splitlines()[-1])
    return float(line["images_computed"]) / float(line["seconds"])


NICE = 0  # --nice: the priority of the measured command and of its competitor


def _renice() -> None:
    if NICE:
        os.nice(NICE)


def _run(cmd: list[str], code: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(code)}
    env.pop("OMP_WAIT_POLICY", None)  # each tree's own choice
    # run in the tree: `python -m` puts the working directory first on sys.path
    proc = subprocess.run(cmd, env=env, cwd=code, capture_output=True, text=True,
                          check=False, preexec_fn=_renice)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")


def measure(job: Callable[[], float], busy: bool) -> float:
    competitor = (subprocess.Popen([sys.executable, "-c", BUSY], preexec_fn=_renice)
                  if busy else None)
    try:
        return job()
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=BEFORE)
    ap.add_argument("--after", default="HEAD")  # recorded as its short commit hash
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--stage", action="append", choices=("train", "embed"))
    ap.add_argument("--nice", type=int, default=0,
                    help="run the measured commands and the competitor at this niceness "
                         "(negative needs root): on a machine other users load, -20 gives "
                         "them most of the CPU, so 'alone' is close to a quiet machine")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--from-log", type=Path, default=None,
                    help="write the section from the printed output of an earlier run "
                         "(its first line: the start time and load; then one line per run)")
    args = ap.parse_args()
    if args.from_log is None:
        args.before, args.after = short_hash(args.before), short_hash(args.after)
    global NICE
    NICE = args.nice
    stages = args.stage or ["train", "embed"]
    flags = set(Path("/proc/cpuinfo").read_text().split())
    if args.from_log is not None:
        started, load_start, results, load_end = read_log(args.from_log)
        stages = [st for st in stages if any(key[0] == st for key in results)]
        write_section(args, stages, flags, started, load_start, load_end, results)
        return
    load_start = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"start {started} load {load_start[0]:.1f}", flush=True)
    results: dict[tuple[str, str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="pairmine-contention-") as tmp:
        work = Path(tmp)
        trees = {"before": code_tree(args.before, work / "before"),
                 "after": code_tree(args.after, work / "after")}
        data = subset(args.steps * 128, work / "images")
        n = 0
        for rep in range(args.reps):
            for stage in stages:
                for name, code in trees.items():
                    for busy in (False, True):
                        n += 1
                        out = work / f"out-{n}"
                        job = (partial(run_train, code, data, out, args.steps,
                                       name == "after") if stage == "train"
                               else partial(run_embed, code, SAMPLE, out))
                        value = measure(job, busy)
                        shutil.rmtree(out, ignore_errors=True)
                        cond = "busy" if busy else "alone"
                        results.setdefault((stage, name, cond), []).append(value)
                        print(f"rep {rep + 1} {stage:5s} {name:6s} {cond:5s} "
                              f"{value:7.1f} img/s  load {os.getloadavg()[0]:.1f}", flush=True)
    write_section(args, stages, flags, started, load_start, os.getloadavg(), results)


def read_log(path: Path) -> tuple[str, tuple[float, ...], dict[tuple[str, str, str], list[float]],
                                  tuple[float, ...]]:
    """(start time, start load, runs, last load) from the lines this script printed."""
    started, load_start, load_end = "?", (0.0,), (0.0,)
    results: dict[tuple[str, str, str], list[float]] = {}
    for line in path.read_text().splitlines():
        words = line.split()
        if words[:1] == ["start"]:
            started, load_start = " ".join(words[1:-2]), (float(words[-1]),)
        elif words[:1] == ["rep"] and len(words) == 9:
            results.setdefault((words[2], words[3], words[4]), []).append(float(words[5]))
            load_end = (float(words[8]),)
    return started, load_start, results, load_end


def write_section(args: argparse.Namespace, stages: list[str], flags: set[str], started: str,
                  load_start: tuple[float, ...], load_end: tuple[float, ...],
                  results: dict[tuple[str, str, str], list[float]]) -> None:
    rows = ["| stage | code | alone img/s | beside one busy process | ratio | runs alone; "
            "busy |", "| --- | --- | ---: | ---: | ---: | --- |"]
    busy_of: dict[tuple[str, str], float] = {}
    for stage in stages:
        for name in ("before", "after"):
            alone_runs = results[(stage, name, "alone")]
            busy_runs = results[(stage, name, "busy")]
            alone, busy = statistics.median(alone_runs), statistics.median(busy_runs)
            busy_of[(stage, name)] = busy
            runs = (", ".join(f"{v:.0f}" for v in alone_runs) + "; "
                    + ", ".join(f"{v:.0f}" for v in busy_runs))
            rows.append(f"| {stage} | {name} | {alone:.1f} | {busy:.1f} | {busy / alone:.2f}x "
                        f"| {runs} |")
    table = "\n".join(rows)
    gains = "; ".join(f"{stage} {busy_of[(stage, 'after')] / busy_of[(stage, 'before')]:.1f}x"
                      for stage in stages)
    niced = (f" (the measured commands and the competitor ran at niceness {args.nice}, which "
             "leaves the other sessions' processes a small share of the CPU)" if args.nice
             else "")
    print(table)
    bf16 = "AVX-512 BF16" if "avx512_bf16" in flags else "AVX2" if "avx2" in flags else "?"
    nice = f" --nice {args.nice}" if args.nice else ""
    body = f"""## The trainer and embed under contention

`python benchmarks/contention.py --reps {args.reps} --steps {args.steps}{nice}` ({started};
{os.cpu_count()}-core {cpu_model()}, {bf16}; before = `{args.before}`, the code before the
fix, after = `{args.after}`). Each cell is the median of {args.reps} runs, alone and beside
one `python -c "while True: pass"` pinned to CPU 0, interleaved. train: `pairmine train
--arch resnet18 --image-size 32 --batch-size 128 --precision fp32`, {args.steps} steps,
img/s of the training steps; embed: the CIFAR ResNet-20 on the 2,000-image sample, fp32,
images / seconds of the call.

{table}

Beside one busy process, after / before: {gains}. The spread of the before rows is the
failure itself: two torch threads plus a decode worker are three busy tasks on two CPUs, so
any other process (ours, or another session's) stalls the team, alone or not.

Load average (1 min) {load_start[0]:.1f} at the start and {load_end[0]:.1f} at the end: other
sessions were using this machine during the runs, so "alone" means without *our* competitor,
not a quiet machine{niced}; the interleaving makes the ratio the figure to read.

Cause and fix: torch's OpenMP team was sized to every core of the machine. A team waits for its
slowest thread at the end of every operator, so a thread sharing its core with another process
stalls each of the thousands of operators of a step, and idle threads spinning (active wait)
took more of the contested core. `pairmine.runtime.cpu_count()` now counts the CPUs the process
may use (affinity mask, cgroup v1/v2 CPU quota), the trainer and embed run torch on that many
minus their decode workers (`train --threads` overrides), and the CLI asks OpenMP for passive
waits (`OMP_WAIT_POLICY=PASSIVE` unless set).
"""
    update_section(args.doc, "contention", body)


if __name__ == "__main__":
    main()
