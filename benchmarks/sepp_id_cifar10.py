"""SePP-ID on CIFAR-10, end to end, next to the paper's Table 4 (and the Table 6 control).

    python benchmarks/sepp_id_cifar10.py WORK                # the paper's protocol (GPU, days)
    python benchmarks/sepp_id_cifar10.py WORK --smoke        # minutes on a CPU: a smoke run

Steps (each skipped when its output is complete, so an interrupted run resumes):
1. data: unpack ../shared/data/cifar10-{train,test}-jpeg.tar.gz, write train/test lists
2. vanilla: `pairmine train` MoCo-v2 (ResNet-18, CIFAR stem) on the train images
3. embed: `pairmine embed` the train images with the vanilla checkpoint (`pairmine:`, its 128-D
   head: the paper's Semantic Sampler)
4. match: `pairmine match` band [0.97, 0.99] on a 10% subset (the paper's K)
5. export: `pairmine export --combined` (the merged dataset)
6. seppid: `pairmine train` on the export (Eq. 2, λ = 1), from scratch, same settings
   (when the band gives fewer than --min-yield positives per anchor, also: a label-free
   `pairmine calibrate --no-labels --target-yield` band, matched, exported and trained as
   `seppid-calibrated`: the issue's "if the band yields too few pairs")
7. random-dup: `pairmine train` on the train images plus as many randomly chosen duplicated
   images as SePP-ID added semantic items (the paper's Table 6 control)
8. eval: `pairmine eval` kNN (k 200, t 0.07) and linear probe of each run on the test images
Every stage runs as the `pairmine` CLI in a subprocess: the benchmark imports no stage.
Results: WORK/results.json, a table printed next to the paper's figures, and the same table
with machine and settings in docs/benchmarks.md (section sepp-id-cifar10; --no-write skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# Table 4 (ResNet-18, linear top-1 %, CIFAR-10), by pre-training epochs
PAPER_TABLE4 = {"vanilla": {200: 65.27, 400: 69.50, 800: 73.88},
                "seppid": {200: 72.05, 400: 73.87, 800: 77.46}}
# Table 6 (ResNet-50, ImageNet, 800 epochs): adding random duplicates barely helps
PAPER_TABLE6 = {"vanilla": 72.2, "random-dup": 72.4, "seppid": 76.3}
RUNS = ("vanilla", "seppid", "random-dup")
ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", type=Path, help="working directory (resumable)")
    p.add_argument("--smoke", action="store_true",
                   help="CPU smoke preset: 50 train / 20 test images per class, 2 epochs, "
                        "batch 64, 20 linear epochs")
    p.add_argument("--data", type=Path, default=SHARED, help="folder of the CIFAR tarballs")
    p.add_argument("--per-class", type=int, default=None, help="train images per class")
    p.add_argument("--test-per-class", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--arch", default="resnet18-cifar")
    p.add_argument("--lr", type=float, default=None,
                   help="default 0.03 × batch/256 (MoCo's linear scaling; 0.03 at 256)")
    p.add_argument("--subset", default="0.1", help="the paper's K (fraction or count)")
    p.add_argument("--min", dest="lo", type=float, default=0.97)
    p.add_argument("--max", dest="hi", type=float, default=0.99)
    p.add_argument("--lambda", dest="lam", type=float, default=1.0)
    p.add_argument("--linear-epochs", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--augment", choices=("cpu", "device"), default="cpu")
    p.add_argument("--runs", default=",".join(RUNS), help="which trainings to run")
    p.add_argument("--min-yield", type=float, default=0.1,
                   help="positives per anchor below which the band counts as too few and a "
                        "calibrated band is run as well")
    p.add_argument("--calibrated-yield", type=float, default=1.0,
                   help="positives per anchor (subset x subset, as matched) the calibrated "
                        "band should give; it is chosen without labels")
    p.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    a = p.parse_args(argv)
    smoke = a.smoke
    per_class = a.per_class or (50 if smoke else 5000)
    test_per_class = a.test_per_class or (20 if smoke else 1000)
    epochs = a.epochs or (2 if smoke else 200)
    batch = a.batch_size or (64 if smoke else 256)
    lr = a.lr or 0.03 * batch / 256
    linear_epochs = a.linear_epochs or (20 if smoke else 100)
    runs = [r for r in a.runs.split(",") if r]
    work: Path = a.work
    work.mkdir(parents=True, exist_ok=True)
    previous = work / "results.json"  # timings of steps done by an earlier call
    timings: dict[str, float] = (json.loads(previous.read_text()).get("timings_s", {})
                                 if previous.exists() else {})

    train_csv, test_csv = prepare_data(work, a.data, per_class, test_per_class)
    train_opts = ["--arch", a.arch, "--epochs", str(epochs), "--batch-size", str(batch),
                  "--lr", f"{lr:g}", "--device", a.device, "--augment", a.augment]
    if a.workers is not None:
        train_opts += ["--workers", str(a.workers)]

    step(timings, "vanilla", work / "vanilla" / "train.json", [
        "train", str(train_csv), str(work / "vanilla"), *train_opts, "--resume"])
    step(timings, "embed", work / "emb" / "manifest.json", [
        "embed", str(train_csv), str(work / "emb"),
        "--encoder", f"pairmine:{work / 'vanilla' / 'checkpoint-last.pt'}",
        "--device", a.device])
    step(timings, "match", work / "pairs" / "manifest.json", [
        "match", str(work / "emb"), str(work / "pairs"), "--min", str(a.lo), "--max", str(a.hi),
        "--subset", a.subset, "--seed", "0", "--device", a.device])
    step(timings, "export", work / "spps" / "manifest.json", [
        "export", str(work / "pairs"), str(work / "spps"), "--format", "webdataset",
        "--combined"])
    quality = pair_quality(work, "pairs")
    n_train = per_class * 10
    if "seppid" in runs:
        step(timings, "seppid", work / "seppid" / "train.json", [
            "train", str(work / "spps"), str(work / "seppid"), *train_opts, "--lambda",
            str(a.lam), "--resume"])
    calibrated = None
    if "seppid" in runs and 2 * quality["pairs"] < a.min_yield * (quality["anchors"] or 0):
        # too few pairs for SePP-ID to matter: pick a band from the sampler's own score
        # distribution (no labels: the protocol stays self-supervised), then run it too.
        # calibrate counts an anchor's positives among all images; matched subset x subset
        # it keeps about K/N of them, so ask calibrate for N/K times the wanted yield
        scale = quality["images"] / max(1, quality["anchors"] or 0)
        print(f"== the band gives {quality['pairs']} pairs on {quality['anchors']} anchors "
              f"(< {a.min_yield:g} positives per anchor): also running a calibrated band")
        step(timings, "calibrate", work / "calibration.json", [
            "calibrate", str(work / "emb"), "--no-labels", "--target-yield",
            f"{a.calibrated_yield * scale:g}", "--subset", a.subset, "--seed", "0",
            "--floor", "0.8", "--max-cap", str(a.hi), "--device", a.device, "--out",
            str(work / "calibration.json")])
        pick = json.loads((work / "calibration.json").read_text())["suggestion"]
        if pick is None:
            print("== calibrate found no band with that yield: skipping seppid-calibrated")
        elif (pick["lo"], pick["hi"]) == (a.lo, a.hi):
            print("== the calibrated band is the paper's band: nothing more to run")
            calibrated = {"band": [a.lo, a.hi], "same_as_paper": True}
        else:
            band = [str(pick["lo"]), str(pick["hi"])]
            step(timings, "match calibrated", work / "pairs-calibrated" / "manifest.json", [
                "match", str(work / "emb"), str(work / "pairs-calibrated"), "--min", band[0],
                "--max", band[1], "--subset", a.subset, "--seed", "0", "--device", a.device])
            step(timings, "export calibrated", work / "spps-calibrated" / "manifest.json", [
                "export", str(work / "pairs-calibrated"), str(work / "spps-calibrated"),
                "--format", "webdataset", "--combined"])
            calibrated = {"band": [pick["lo"], pick["hi"]],
                          **pair_quality(work, "pairs-calibrated")}
            runs.append("seppid-calibrated")
            step(timings, "seppid-calibrated", work / "seppid-calibrated" / "train.json", [
                "train", str(work / "spps-calibrated"), str(work / "seppid-calibrated"),
                *train_opts, "--lambda", str(a.lam), "--resume"])
    if "random-dup" in runs:
        # as many extra items as SePP-ID added: each pair gives two (both directions)
        extra = min(2 * quality["pairs"], n_train)
        step(timings, "random-dup", work / "random-dup" / "train.json", [
            "train", str(train_csv), str(work / "random-dup"), *train_opts,
            "--random-duplicates", str(extra), "--resume"])
    results: dict[str, Any] = {}
    for run in ("vanilla", *[r for r in runs if r != "vanilla"]):
        out = work / f"eval-{run}.json"
        step(timings, f"eval {run}", out, [
            "eval", str(work / run), "--train", str(train_csv), "--test", str(test_csv),
            "--linear-epochs", str(linear_epochs), "--device", a.device, "--out", str(out)])
        results[run] = json.loads(out.read_text())
    report = {
        "settings": {"smoke": smoke, "per_class": per_class, "test_per_class": test_per_class,
                     "epochs": epochs, "batch_size": batch, "lr": lr, "arch": a.arch,
                     "subset": a.subset, "band": [a.lo, a.hi], "lambda": a.lam,
                     "linear_epochs": linear_epochs, "device": a.device},
        "pairs": quality, "calibrated": calibrated, "timings_s": timings,
        "runs": {r: {"knn_top1": res["knn"]["top1"], "linear_top1": res["linear"]["top1"],
                     "train_items": _train_items(work / r)} for r, res in results.items()},
    }
    (work / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    table = format_table(report, epochs)
    print("\n" + table)
    if not a.no_write:
        write_doc(table, argv if argv is not None else sys.argv[1:], a.device)
    return 0


def write_doc(table: str, argv: list[str], device: str) -> None:
    import platform

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _report import update_section

    from pairmine.runtime import device_name, resolve_device

    machine = f"{device_name(resolve_device(device))}, {platform.platform()}"
    body = ("## SePP-ID on CIFAR-10 (replication)\n\n"
            f"Machine: {machine}; date {time.strftime('%Y-%m-%d')}; command: "
            f"`python benchmarks/sepp_id_cifar10.py {' '.join(argv)}`\n\n{table}")
    update_section(ROOT / "docs" / "benchmarks.md", "sepp-id-cifar10", body)


def prepare_data(work: Path, data: Path, per_class: int, test_per_class: int) -> tuple[Path,
                                                                                      Path]:
    root = work / "data"
    done = root / ".unpacked"
    if not done.exists():
        for split in ("train", "test"):
            tgz = data / f"cifar10-{split}-jpeg.tar.gz"
            if not tgz.exists():
                sys.exit(f"missing {tgz}: the CIFAR-10 JPEG tarballs (see PROVENANCE.md)")
            with tarfile.open(tgz) as tar:
                tar.extractall(root, filter="data")
        done.write_text("ok\n")
    lists = []
    for split, n in (("train", per_class), ("test", test_per_class)):
        folder = root / "cifar10" / split
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        lines = ["path,label"]
        for label, name in enumerate(classes):  # alphabetical = CIFAR-10's label order
            files = sorted((folder / name).iterdir())[:n]
            lines += [f"{f},{label}" for f in files]
        path = work / f"{split}-{n}.csv"
        if not path.exists():
            path.write_text("\n".join(lines) + "\n")
        lists.append(path)
    return lists[0], lists[1]


def step(timings: dict[str, float], name: str, done: Path, args: list[str]) -> None:
    if done.exists():
        print(f"== {name}: done ({done})", flush=True)
        return
    print(f"== {name}: pairmine {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "pairmine", *args], env=env, check=False)
    if proc.returncode != 0:
        sys.exit(f"step {name} failed (exit {proc.returncode}); fix it and run again to resume")
    timings[name] = round(time.perf_counter() - t0, 1)


def pair_quality(work: Path, name: str) -> dict[str, Any]:
    """Pair count and pair accuracy (share of pairs whose two images share a label)."""
    from pairmine.stores import open_embeddings, open_pairs

    pairs = open_pairs(work / name)
    labels = open_embeddings(work / "emb").meta.column("label").to_pylist()
    a = pairs.table.column("a").to_pylist()
    b = pairs.table.column("b").to_pylist()
    same = sum(labels[i] == labels[j] for i, j in zip(a, b, strict=True))
    return {"pairs": len(a), "same_label": same, "images": len(labels),
            "pair_accuracy": same / len(a) if a else None,
            "anchors": pairs.manifest.get("subset", {}).get("count")}


def _train_items(run: Path) -> Any:
    summary = run / "train.json"
    return json.loads(summary.read_text()).get("data", {}) if summary.exists() else None


def format_table(report: dict[str, Any], epochs: int) -> str:
    s = report["settings"]
    lines = [f"SePP-ID on CIFAR-10 ({'SMOKE RUN, not a result: ' if s['smoke'] else ''}"
             f"{s['per_class']} train images/class, {s['test_per_class']} test/class, {epochs} "
             f"epochs, batch {s['batch_size']}, {s['arch']}, linear probe {s['linear_epochs']} "
             "epochs)", ""]
    for label, q in (("paper's band", report["pairs"]), ("calibrated", report["calibrated"])):
        if q is None:
            continue
        band = q.get("band", s["band"])
        if q.get("same_as_paper"):
            lines.append(f"- calibrated (label-free, for the wanted yield): [{band[0]:g}, "
                         f"{band[1]:g}], the paper's band itself, so nothing more was run")
            continue
        acc = "-" if q["pair_accuracy"] is None else f"{100 * q['pair_accuracy']:.1f}%"
        lines.append(f"- {label} [{band[0]:g}, {band[1]:g}] on subset {s['subset']} "
                     f"({q['anchors']:,} anchors): {q['pairs']:,} pairs, pair accuracy "
                     f"(same label) {acc}")
    near = min(PAPER_TABLE4["vanilla"], key=lambda e: abs(e - epochs))
    lines += ["", f"| run | kNN top-1 | linear top-1 | paper, Table 4 ({near} ep) "
              "| paper, Table 6 (ImageNet) |", "| --- | ---: | ---: | ---: | ---: |"]
    for run, r in report["runs"].items():
        t4 = PAPER_TABLE4.get(run.split("-")[0] if run.startswith("seppid") else run,
                              {}).get(near)
        t6 = PAPER_TABLE6.get(run.split("-")[0] if run.startswith("seppid") else run)
        lines.append(f"| {run} | {100 * r['knn_top1']:.2f}% | {100 * r['linear_top1']:.2f}% | "
                     f"{'-' if t4 is None else f'{t4:.2f}%'} | "
                     f"{'-' if t6 is None else f'{t6:.1f}%'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
