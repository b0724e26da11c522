"""Pair quality on real data: CIFAR-10 test JPEGs, CIFAR ResNet-20 (64-D backbone features).

Runs the CLI end to end, as a user would, and prints a Markdown summary:

    embed → match [0.97, 0.99] → eval-pairs
          → calibrate (--target-precision P) → match [suggested] → eval-pairs

The ResNet-20 checkpoint was trained *with labels*: this is a reference point for the tools,
not the self-supervised case the paper studies. Not a test (about a minute on 2 CPU cores).

    python benchmarks/quality_cifar10.py [--data ../shared/data] [--work DIR]
        [--target-precision 0.95] [--json results.json] [--show]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def pairmine(*args: str) -> float:
    """Run one CLI command (output shown), return its wall time; stop on failure."""
    cmd = [sys.executable, "-m", "pairmine", *args]
    print("$ pairmine " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}")
    return time.perf_counter() - t0


def unpack(tgz: Path, into: Path) -> Path:
    with tarfile.open(tgz) as tar:
        tar.extractall(into, filter="data")
    return into / "cifar10" / "test"


def band_summary(name: str, ev: dict[str, Any]) -> dict[str, Any]:
    acc = ev["accuracy"]
    nn = {b["k"]: b["accuracy"] for b in ev["baselines"]}
    return {"band": name, "lo": ev["band"][0], "hi": ev["band"][1], "pairs": acc["pairs"],
            "per_image": acc["per_image"], "accuracy": acc["unordered"],
            "ordered": acc["ordered"], "per_anchor": acc["per_anchor"],
            "anchors_with_pairs": acc["anchors_with_pairs"], "chance": acc["chance"],
            "nn": nn}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--work", type=Path, default=None, help="keep the stores here")
    ap.add_argument("--target-precision", type=float, default=0.95)
    ap.add_argument("--floor", type=float, default=0.9)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--show", action="store_true",
                    help="also write an HTML report of the calibrated pairs (with --work)")
    args = ap.parse_args()
    tgz, ckpt = args.data / "cifar10-test-jpeg.tar.gz", args.data / "resnet20-cifar10.th"
    if not tgz.exists() or not ckpt.exists():
        sys.exit(f"needs {tgz} and {ckpt}")
    tmp = Path(tempfile.mkdtemp(prefix="pairmine-quality-"))
    work = args.work or tmp
    work.mkdir(parents=True, exist_ok=True)
    try:
        # beside the stores when they are kept, so that `pairmine show` can read the images
        images = unpack(tgz, work)
        emb, paper, tuned = work / "emb", work / "pairs-paper", work / "pairs-calibrated"
        times = {"embed_s": pairmine("embed", str(images), str(emb), "--encoder",
                                     f"cifar-resnet:{ckpt}", "--overwrite")}
        times["match_paper_s"] = pairmine("match", str(emb), str(paper), "--min", "0.97",
                                          "--max", "0.99", "--overwrite")
        times["eval_paper_s"] = pairmine("eval-pairs", str(paper), "--out",
                                         str(work / "eval-paper.json"))
        times["calibrate_s"] = pairmine("calibrate", str(emb), "--floor", str(args.floor),
                                        "--target-precision", str(args.target_precision),
                                        "--out", str(work / "calibration.json"))
        cal = json.loads((work / "calibration.json").read_text())
        results = [band_summary("paper",
                                json.loads((work / "eval-paper.json").read_text()))]
        if cal["suggestion"] is not None:
            lo, hi = cal["suggestion"]["lo"], cal["suggestion"]["hi"]
            times["match_calibrated_s"] = pairmine("match", str(emb), str(tuned), "--min",
                                                   str(lo), "--max", str(hi), "--overwrite")
            times["eval_calibrated_s"] = pairmine("eval-pairs", str(tuned), "--out",
                                                  str(work / "eval-calibrated.json"))
            results.append(band_summary(
                f"calibrated (precision >= {args.target_precision:g})",
                json.loads((work / "eval-calibrated.json").read_text())))
            if args.show:
                times["show_s"] = pairmine("show", str(tuned), str(work / "report"),
                                           "--overwrite")
        else:
            print(f"calibrate made no suggestion: {cal['note']}")
        report = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
                  "python": platform.python_version(), "results": results,
                  "calibration": {k: cal[k] for k in ("floor", "step", "max_cap",
                                                      "pairs_above_floor", "suggestion",
                                                      "paper_band", "timings")},
                  "times": times}
        print("\n| band | pairs | positives / image | pair accuracy (unordered = "
              "ordered) | per anchor | 1-NN | 5-NN | 10-NN | chance |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in results:
            nn = r["nn"]
            print(f"| {r['band']} [{r['lo']:g}, {r['hi']:g}] | {r['pairs']:,} | "
                  f"{r['per_image']:.3f} | {r['accuracy']:.2%} | {r['per_anchor']:.2%} | "
                  f"{nn.get(1, 0):.2%} | {nn.get(5, 0):.2%} | {nn.get(10, 0):.2%} | "
                  f"{r['chance']:.2%} |")
        print("\ntimes: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
