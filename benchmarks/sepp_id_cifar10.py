"""SePP-ID on CIFAR-10, end to end, next to the paper's Table 4 (and the Table 6 control).

    python benchmarks/sepp_id_cifar10.py WORK                  # the paper's protocol (GPU, days)
    python benchmarks/sepp_id_cifar10.py WORK --preset cpu     # reduced replication, 2-core CPU
    python benchmarks/sepp_id_cifar10.py WORK --smoke          # minutes on a CPU: a smoke run
    python benchmarks/sepp_id_cifar10.py WORK --preset cpu --dry-run   # the plan and its time

Steps (each skipped when its output is complete, so an interrupted run resumes):
1. data: unpack ../shared/data/cifar10-{train,test}-jpeg.tar.gz, write train/test lists
   (the first N images of each class: a class-balanced subset, the same for every run)
2. vanilla: `pairmine train` MoCo-v2 on the train images
3. samplers: `pairmine embed` the train images with (a) the vanilla checkpoint's 128-D head
   (`pairmine:`, the paper's self-trained Semantic Sampler) and (b) the supervised CIFAR
   ResNet-20 of ../shared/data (`cifar-resnet:`, pairs nearly all right); `pairmine match`
   band [0.97, 0.99] on a 10% subset (the paper's K); `pairmine export --combined`. When a band
   gives fewer than --min-yield positives per anchor, a label-free band from
   `pairmine calibrate --no-labels --target-yield` is matched and exported, and the SePP-ID run
   trains on it (both bands are recorded)
4. seppid-ssl, seppid-supervised: `pairmine train` on the exports (Eq. 2, λ = 1), from scratch,
   same seed and settings
5. random-dup: `pairmine train` on the train images plus as many randomly chosen duplicated
   images as seppid-ssl added pair items (the paper's Table 6 control)
6. eval: `pairmine eval` kNN (k 200, t 0.07) and linear probe of each run on the test images
7. seeds: a second seed of vanilla and of the better SePP-ID run (by linear top-1), and their
   evals: the seed-to-seed spread the effect is read against (vanilla-seed: vanilla's alone)
Every stage runs as the `pairmine` CLI in a subprocess: the benchmark imports no stage.
Results: WORK/results.json, a table printed next to the paper's figures, and the same table
with machine and settings in docs/benchmarks.md (--no-write skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SUPERVISED = "resnet20-cifar10.th"  # the supervised sampler's checkpoint in --data
# Table 4 (ResNet-18, linear top-1 %, CIFAR-10), by pre-training epochs
PAPER_TABLE4 = {"vanilla": {200: 65.27, 400: 69.50, 800: 73.88},
                "seppid": {200: 72.05, 400: 73.87, 800: 77.46}}
# Table 6 (ResNet-50, ImageNet, 800 epochs): adding random duplicates barely helps
PAPER_TABLE6 = {"vanilla": 72.2, "random-dup": 72.4, "seppid": 76.3}
RUNS = ("vanilla", "seppid-ssl", "seppid-supervised", "random-dup", "vanilla-seed", "seeds")
SEPPID_RUNS = ("seppid-ssl", "seppid-supervised")
SECOND_SEED = 1
ROOT = Path(__file__).resolve().parents[1]

# Trainer images/s measured on this project's CPU machine (2-core AMD EPYC, AVX-512 BF16,
# other sessions loading it, load average ~4) with `pairmine train --max-steps 8 --batch-size
# 256` on 500 CIFAR-10 images, first step dropped (docs/training.md, "the backbone budget for
# issue 21"); the resnet18-cifar figures are benchmarks/train_speed.py's. At load ~6 the same
# resnet20-cifar bf16 run gave 129 img/s: pass --img-per-s for a busier machine. Only the
# dry-run's time estimates use them.
MEASURED_IMG_S: dict[tuple[str, str], float] = {
    ("resnet20-cifar", "fp32"): 130.0,
    ("resnet20-cifar", "auto"): 248.0,  # auto chose bf16 (its trial: 2.25x fp32)
    ("resnet20-cifar", "bf16"): 248.0,
    ("resnet20x2-cifar", "fp32"): 28.0,
    ("resnet20x2-cifar", "auto"): 62.0,  # bf16, 2.12x fp32
    ("resnet20x2-cifar", "bf16"): 62.0,
    ("resnet18-cifar", "fp32"): 13.0,
    ("resnet18-cifar", "auto"): 32.0,
    ("resnet18-cifar", "bf16"): 32.0,
}
# `pairmine eval` of a resnet20-cifar checkpoint (features of 5,000 train + 1,000 test images,
# kNN, 100 linear-probe epochs): 6,000 images in 38 s wall, load ~6; dry-run estimate only
MEASURED_EVAL_IMG_S = 160.0


@dataclass(frozen=True)
class Preset:
    """One scale of the protocol; every run of a preset shares these settings."""

    label: str
    per_class: int  # train images per class (5000 = all of CIFAR-10)
    test_per_class: int
    epochs: int
    batch_size: int
    linear_epochs: int
    arch: str
    precision: str
    budget_min: float | None  # the wall-time budget per training run it was sized for


PRESETS: dict[str, Preset] = {
    "paper": Preset("the paper's protocol (needs a GPU)", 5000, 1000, 200, 256, 100,
                    "resnet18-cifar", "auto", None),
    # bf16, not auto: auto's timed trial could pick fp32 for one run on a busy machine, and
    # every run must share its settings
    "cpu": Preset("reduced replication for a 2-core CPU", 5000, 1000, 10, 256, 100,
                  "resnet20-cifar", "bf16", 45.0),
    "smoke": Preset("SMOKE RUN, not a result", 50, 20, 2, 64, 20, "resnet20-cifar", "auto",
                    None),
}


@dataclass(frozen=True)
class Settings:
    preset: str
    p: Preset
    lr: float
    subset: str
    lo: float
    hi: float
    lam: float
    device: str
    augment: str
    workers: int | None
    min_yield: float
    calibrated_yield: float
    data: Path
    work: Path

    @property
    def n_train(self) -> int:
        return self.p.per_class * 10

    @property
    def n_test(self) -> int:
        return self.p.test_per_class * 10

    @property
    def subset_fraction(self) -> float:
        k = float(self.subset)
        return k if k <= 1 else k / self.n_train


def parse(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("work", type=Path, help="working directory (resumable)")
    p.add_argument("--preset", choices=tuple(PRESETS), default="paper",
                   help="; ".join(f"{k}: {v.label}, {v.arch}, {v.per_class} train images/class, "
                                  f"{v.epochs} epochs" for k, v in PRESETS.items()))
    p.add_argument("--smoke", action="store_true", help="the same as --preset smoke")
    p.add_argument("--data", type=Path, default=SHARED,
                   help="folder of the CIFAR tarballs and the supervised ResNet-20")
    p.add_argument("--per-class", type=int, default=None, help="train images per class")
    p.add_argument("--test-per-class", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--arch", default=None)
    p.add_argument("--precision", default=None, help="the trainer's --precision")
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
    p.add_argument("--runs", default=",".join(RUNS),
                   help=f"which trainings to run, from {', '.join(RUNS)}")
    p.add_argument("--min-yield", type=float, default=0.1,
                   help="positives per anchor below which a band counts as too few and the "
                        "SePP-ID run trains on a calibrated band instead")
    p.add_argument("--calibrated-yield", type=float, default=1.0,
                   help="positives per anchor (subset x subset, as matched) the calibrated "
                        "band should give; it is chosen without labels")
    p.add_argument("--dry-run", action="store_true",
                   help="print the runs, their commands and estimated times; run nothing")
    p.add_argument("--img-per-s", type=float, default=None,
                   help="trainer images/s for the dry-run's estimate [default: measured]")
    p.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    a = p.parse_args(argv)
    name = "smoke" if a.smoke else a.preset
    preset = PRESETS[name]
    overrides = {k: v for k, v in (
        ("per_class", a.per_class), ("test_per_class", a.test_per_class),
        ("epochs", a.epochs), ("batch_size", a.batch_size), ("arch", a.arch),
        ("precision", a.precision), ("linear_epochs", a.linear_epochs)) if v is not None}
    preset = replace(preset, **overrides)
    unknown = [r for r in a.runs.split(",") if r and r not in RUNS]
    if unknown:
        p.error(f"unknown --runs {', '.join(unknown)}: choose from {', '.join(RUNS)}")
    s = Settings(preset=name, p=preset, lr=a.lr or 0.03 * preset.batch_size / 256,
                 subset=a.subset, lo=a.lo, hi=a.hi, lam=a.lam, device=a.device,
                 augment=a.augment, workers=a.workers, min_yield=a.min_yield,
                 calibrated_yield=a.calibrated_yield, data=a.data, work=a.work)
    return s, a


# ------------------------------------------------------------------------------ commands

def train_cmd(s: Settings, run: str, data: str, seed: int, extra: list[str]) -> list[str]:
    opts = ["--arch", s.p.arch, "--epochs", str(s.p.epochs), "--batch-size",
            str(s.p.batch_size), "--lr", f"{s.lr:g}", "--device", s.device, "--augment",
            s.augment, "--precision", s.p.precision, "--seed", str(seed)]
    if s.workers is not None:
        opts += ["--workers", str(s.workers)]
    return ["train", data, str(s.work / run), *opts, *extra, "--resume"]


def embed_cmd(s: Settings, emb: str, encoder: str) -> list[str]:
    return ["embed", str(s.work / f"train-{s.p.per_class}.csv"), str(s.work / emb),
            "--encoder", encoder, "--device", s.device]


def match_cmd(s: Settings, emb: str, pairs: str, band: tuple[str, str]) -> list[str]:
    return ["match", str(s.work / emb), str(s.work / pairs), "--min", band[0], "--max",
            band[1], "--subset", s.subset, "--seed", "0", "--device", s.device]


def export_cmd(s: Settings, pairs: str, spps: str) -> list[str]:
    return ["export", str(s.work / pairs), str(s.work / spps), "--format", "webdataset",
            "--combined"]


def calibrate_cmd(s: Settings, emb: str, target: str, out: str) -> list[str]:
    return ["calibrate", str(s.work / emb), "--no-labels", "--target-yield", target,
            "--subset", s.subset, "--seed", "0", "--floor", "0.8", "--max-cap", str(s.hi),
            "--device", s.device, "--out", str(s.work / out)]


def eval_cmd(s: Settings, run: str) -> list[str]:
    return ["eval", str(s.work / run), "--train", str(s.work / f"train-{s.p.per_class}.csv"),
            "--test", str(s.work / f"test-{s.p.test_per_class}.csv"), "--linear-epochs",
            str(s.p.linear_epochs), "--device", s.device, "--out",
            str(s.work / f"eval-{run}.json")]


@dataclass(frozen=True)
class Sampler:
    """A Semantic Sampler: the encoder whose embeddings the pairs are mined from."""

    name: str  # ssl | supervised
    run: str  # the SePP-ID training run its pairs feed

    def encoder(self, s: Settings) -> str:
        if self.name == "ssl":
            return f"pairmine:{s.work / 'vanilla' / 'checkpoint-last.pt'}"
        return f"cifar-resnet:{s.data / SUPERVISED}"

    def dirs(self, suffix: str = "") -> tuple[str, str, str]:
        """(embeddings, pairs, export) folder names under WORK."""
        return (f"emb-{self.name}", f"pairs-{self.name}{suffix}", f"spps-{self.name}{suffix}")


SAMPLERS = (Sampler("ssl", "seppid-ssl"), Sampler("supervised", "seppid-supervised"))


# ------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    s, a = parse(argv)
    runs = [r for r in a.runs.split(",") if r]
    if a.dry_run:
        print(format_plan(s, runs, a.img_per_s))
        return 0
    work = s.work
    work.mkdir(parents=True, exist_ok=True)
    previous = work / "results.json"  # timings of steps done by an earlier call
    timings: dict[str, float] = (json.loads(previous.read_text()).get("timings_s", {})
                                 if previous.exists() else {})
    train_csv, _ = prepare_data(work, s.data, s.p.per_class, s.p.test_per_class)

    trained: list[str] = []

    def train(run: str, data: Path, seed: int = 0, extra: list[str] | None = None) -> None:
        step(timings, run, work / run / "train.json",
             train_cmd(s, run, str(data), seed, extra or []))
        trained.append(run)

    train("vanilla", train_csv)
    mined: dict[str, dict[str, Any]] = {}
    for sampler in SAMPLERS:
        if sampler.run in runs or (sampler.name == "ssl" and "random-dup" in runs):
            mined[sampler.name] = mine(s, timings, sampler)
    for sampler in SAMPLERS:
        if sampler.run in runs:
            train(sampler.run, work / mined[sampler.name]["spps"],
                  extra=["--lambda", str(s.lam)])
    if "random-dup" in runs:
        # as many extra items as seppid-ssl added: each pair gives two (both directions)
        extra = min(2 * mined["ssl"]["trained"]["pairs"], s.n_train)
        train("random-dup", train_csv, extra=["--random-duplicates", str(extra)])
    results = {run: evaluate(s, timings, run) for run in trained}
    better = None
    if "seeds" in runs or "vanilla-seed" in runs:
        done = [r for r in SEPPID_RUNS if r in results]
        if done and "seeds" in runs:
            better = max(done, key=lambda r: results[r]["linear"]["top1"])
        for run in ("vanilla", *([better] if better else [])):
            again = f"{run}-seed{SECOND_SEED}"
            data = train_csv if run == "vanilla" else work / mined[
                run.removeprefix("seppid-")]["spps"]
            extra = [] if run == "vanilla" else ["--lambda", str(s.lam)]
            train(again, data, SECOND_SEED, extra)
            results[again] = evaluate(s, timings, again)

    report = {
        "settings": {"preset": s.preset, "label": s.p.label, "per_class": s.p.per_class,
                     "test_per_class": s.p.test_per_class, "epochs": s.p.epochs,
                     "batch_size": s.p.batch_size, "lr": s.lr, "arch": s.p.arch,
                     "precision": s.p.precision, "subset": s.subset, "band": [s.lo, s.hi],
                     "lambda": s.lam, "linear_epochs": s.p.linear_epochs, "device": s.device,
                     "budget_min": s.p.budget_min},
        "samplers": mined, "better_seppid": better, "timings_s": timings,
        "runs": {r: {"knn_top1": res["knn"]["top1"], "linear_top1": res["linear"]["top1"],
                     "train_items": _train_items(work / r), "img_per_s": _img_per_s(work / r),
                     "train_s": timings.get(r)} for r, res in results.items()},
    }
    (work / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    table = format_table(report)
    print("\n" + table)
    if not a.no_write:
        write_doc(s, table, argv if argv is not None else sys.argv[1:])
    return 0


def mine(s: Settings, timings: dict[str, float], sampler: Sampler) -> dict[str, Any]:
    """Embed, match the paper's band, export; a calibrated band when that gives too few.
    Returns both bands' pair quality and which one the SePP-ID run trains on."""
    work = s.work
    emb, pairs, spps = sampler.dirs()
    step(timings, f"embed {sampler.name}", work / emb / "manifest.json",
         embed_cmd(s, emb, sampler.encoder(s)))
    band = (str(s.lo), str(s.hi))
    step(timings, f"match {sampler.name}", work / pairs / "manifest.json",
         match_cmd(s, emb, pairs, band))
    step(timings, f"export {sampler.name}", work / spps / "manifest.json",
         export_cmd(s, pairs, spps))
    paper = {"band": [s.lo, s.hi], **pair_quality(work, emb, pairs)}
    out: dict[str, Any] = {"encoder": sampler.encoder(s), "paper_band": paper,
                           "calibrated": None, "trained": paper, "spps": spps}
    if paper["positives_per_anchor"] >= s.min_yield:
        return out
    # too few pairs for SePP-ID to matter: pick a band from the sampler's own score
    # distribution (no labels: the protocol stays self-supervised). calibrate counts an
    # anchor's positives among all images; matched subset x subset it keeps about K/N of
    # them, so ask calibrate for N/K times the wanted yield
    scale = paper["images"] / max(1, paper["anchors"] or 0)
    print(f"== {sampler.name}: the band gives {paper['pairs']} pairs on {paper['anchors']} "
          f"anchors (< {s.min_yield:g} positives per anchor): calibrating a band", flush=True)
    calibration = f"calibration-{sampler.name}.json"
    step(timings, f"calibrate {sampler.name}", work / calibration,
         calibrate_cmd(s, emb, f"{s.calibrated_yield * scale:g}", calibration))
    pick = json.loads((work / calibration).read_text())["suggestion"]
    if pick is None:
        print(f"== {sampler.name}: calibrate found no band with that yield: training on the "
              "paper's band", flush=True)
        out["calibrated"] = {"band": None}
        return out
    if (pick["lo"], pick["hi"]) == (s.lo, s.hi):
        out["calibrated"] = {"band": [s.lo, s.hi], "same_as_paper": True}
        return out
    _, pairs_c, spps_c = sampler.dirs("-calibrated")
    band = (str(pick["lo"]), str(pick["hi"]))
    step(timings, f"match {sampler.name} calibrated", work / pairs_c / "manifest.json",
         match_cmd(s, emb, pairs_c, band))
    step(timings, f"export {sampler.name} calibrated", work / spps_c / "manifest.json",
         export_cmd(s, pairs_c, spps_c))
    out["calibrated"] = {"band": [pick["lo"], pick["hi"]], **pair_quality(work, emb, pairs_c)}
    out["trained"], out["spps"] = out["calibrated"], spps_c
    return out


def evaluate(s: Settings, timings: dict[str, float], run: str) -> dict[str, Any]:
    out = s.work / f"eval-{run}.json"
    step(timings, f"eval {run}", out, eval_cmd(s, run))
    result: dict[str, Any] = json.loads(out.read_text())
    return result


# ------------------------------------------------------------------------------ plan

def estimate_img_s(s: Settings, override: float | None) -> float | None:
    if override:
        return override
    return MEASURED_IMG_S.get((s.p.arch, s.p.precision)) or None


def plan(s: Settings, runs: list[str]) -> list[dict[str, Any]]:
    """The steps main runs, in order, with their commands and the images each trains or
    encodes. Values known only once a step has run are shown as <placeholders>."""
    n, anchors = s.n_train, round(s.subset_fraction * s.n_train)
    # a SePP-ID run's items: the train images plus two per pair; the estimate assumes the
    # band (paper's or calibrated) gives about --calibrated-yield positives per anchor
    added = round(anchors * s.calibrated_yield)
    steps: list[dict[str, Any]] = [
        {"name": "data", "cmd": None, "train_images": 0, "eval_images": 0},
        {"name": "vanilla", "cmd": train_cmd(s, "vanilla", f"{s.work}/train-{s.p.per_class}.csv",
                                             0, []), "train_images": n * s.p.epochs}]
    trained = ["vanilla"]
    for sampler in SAMPLERS:
        if sampler.run in runs or (sampler.name == "ssl" and "random-dup" in runs):
            emb, pairs, spps = sampler.dirs()
            steps += [
                {"name": f"embed {sampler.name}", "cmd": embed_cmd(s, emb, sampler.encoder(s)),
                 "eval_images": n},
                {"name": f"match {sampler.name}",
                 "cmd": match_cmd(s, emb, pairs, (str(s.lo), str(s.hi)))},
                {"name": f"export {sampler.name}", "cmd": export_cmd(s, pairs, spps)},
                {"name": f"calibrate {sampler.name} (only if < {s.min_yield:g} positives per "
                         "anchor; then match + export the band it picks)",
                 "cmd": calibrate_cmd(s, emb, "<N/K x yield>",
                                      f"calibration-{sampler.name}.json")}]
    for sampler in SAMPLERS:
        if sampler.run in runs:
            steps.append({"name": sampler.run, "cmd": train_cmd(
                s, sampler.run, f"{s.work}/spps-{sampler.name}[-calibrated]", 0,
                ["--lambda", str(s.lam)]), "train_images": (n + added) * s.p.epochs})
            trained.append(sampler.run)
    if "random-dup" in runs:
        steps.append({"name": "random-dup", "cmd": train_cmd(
            s, "random-dup", f"{s.work}/train-{s.p.per_class}.csv", 0,
            ["--random-duplicates", "<2 x seppid-ssl pairs>"]),
            "train_images": (n + added) * s.p.epochs})
        trained.append("random-dup")
    for run in trained:
        steps.append({"name": f"eval {run}", "cmd": eval_cmd(s, run),
                      "eval_images": n + s.n_test})
    if "seeds" in runs or "vanilla-seed" in runs:
        for run, items, data, extra in (
                ("vanilla", n, f"{s.work}/train-{s.p.per_class}.csv", []),
                ("<better seppid>", n + added, f"{s.work}/<its spps>",
                 ["--lambda", str(s.lam)]))[:2 if "seeds" in runs else 1]:
            again = f"{run}-seed{SECOND_SEED}"
            steps += [{"name": again, "cmd": train_cmd(s, again, data, SECOND_SEED, extra),
                       "train_images": items * s.p.epochs},
                      {"name": f"eval {again}", "cmd": eval_cmd(s, again),
                       "eval_images": n + s.n_test}]
    return steps


def format_plan(s: Settings, runs: list[str], img_s_override: float | None) -> str:
    img_s = estimate_img_s(s, img_s_override)
    eval_s = MEASURED_EVAL_IMG_S or None
    lines = [f"plan: preset {s.preset} ({s.p.label}): {s.p.arch}, {s.p.precision}, "
             f"{s.n_train:,} train images ({s.p.per_class}/class), {s.n_test:,} test, "
             f"{s.p.epochs} epochs, batch {s.p.batch_size}, lr {s.lr:g}, subset {s.subset}, "
             f"band [{s.lo:g}, {s.hi:g}], λ {s.lam:g}, linear probe {s.p.linear_epochs} epochs",
             f"estimate from {img_s or '?'} trainer images/s "
             f"({'--img-per-s' if img_s_override else 'measured, MEASURED_IMG_S'}) and "
             f"{eval_s or '?'} eval images/s; steps already done in WORK are skipped", ""]
    total, longest = 0.0, 0.0
    for st in plan(s, runs):
        seconds = None
        if st.get("train_images") and img_s:
            seconds = st["train_images"] / img_s
            longest = max(longest, seconds)
        elif st.get("eval_images") and eval_s:
            seconds = st["eval_images"] / eval_s
        total += seconds or 0.0
        est = "" if seconds is None else f"  ~{_duration(seconds)}"
        lines.append(f"- {st['name']}{est}")
        if st["cmd"]:
            lines.append(f"    pairmine {' '.join(st['cmd'])}")
    lines += ["", f"estimated total: ~{_duration(total)} (longest training run "
                  f"~{_duration(longest)}"
                  + (f", budget {s.p.budget_min:g} min per run)" if s.p.budget_min else ")")]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ------------------------------------------------------------------------------ steps

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


def pair_quality(work: Path, emb: str, name: str) -> dict[str, Any]:
    """Pair count, pair accuracy (share of pairs whose two images share a label) and
    positives per anchor (each unordered pair is a positive of both its images)."""
    from pairmine.stores import open_embeddings, open_pairs

    pairs = open_pairs(work / name)
    labels = open_embeddings(work / emb).meta.column("label").to_pylist()
    a = pairs.table.column("a").to_pylist()
    b = pairs.table.column("b").to_pylist()
    same = sum(labels[i] == labels[j] for i, j in zip(a, b, strict=True))
    anchors = pairs.manifest.get("subset", {}).get("count")
    return {"pairs": len(a), "same_label": same, "images": len(labels),
            "pair_accuracy": same / len(a) if a else None, "anchors": anchors,
            "positives_per_anchor": 2 * len(a) / anchors if anchors else 0.0}


def _train_items(run: Path) -> Any:
    summary = run / "train.json"
    return json.loads(summary.read_text()).get("data", {}) if summary.exists() else None


def _img_per_s(run: Path) -> float | None:
    """Mean trainer images/s over the run's epochs (from its train.json history)."""
    summary = run / "train.json"
    if not summary.exists():
        return None
    history = json.loads(summary.read_text()).get("history", [])
    seconds = sum(h["seconds"] for h in history)
    return round(sum(h["images"] for h in history) / seconds, 1) if seconds else None


# ------------------------------------------------------------------------------ report

def _paper_key(run: str) -> str:
    base = run.split("-seed")[0]
    return "seppid" if base.startswith("seppid") else base


def format_table(report: dict[str, Any]) -> str:
    s = report["settings"]
    epochs = s["epochs"]
    budget = f", budget {s['budget_min']:g} min per training run" if s["budget_min"] else ""
    lines = [f"SePP-ID on CIFAR-10 ({s['label']}: {s['per_class']} train images/class, "
             f"{s['test_per_class']} test/class, {epochs} epochs, batch {s['batch_size']}, "
             f"lr {s['lr']:g}, {s['arch']}, {s['precision']}, linear probe "
             f"{s['linear_epochs']} epochs{budget})", "",
             "| sampler | band | anchors | pairs | pair accuracy (same label) "
             "| positives per anchor | trained on |", "| --- | --- | ---: | ---: | ---: | ---: "
             "| --- |"]
    for name, m in report["samplers"].items():
        for label, q in (("paper", m["paper_band"]), ("calibrated, label-free",
                                                     m["calibrated"])):
            if q is None:
                continue
            if q.get("band") is None:
                lines.append(f"| {name} | calibrated: no band with the wanted yield | | | | | |")
                continue
            band = f"{label} [{q['band'][0]:g}, {q['band'][1]:g}]"
            if q.get("same_as_paper"):
                lines.append(f"| {name} | {band}: the paper's band itself | | | | | |")
                continue
            acc = "-" if q["pair_accuracy"] is None else f"{100 * q['pair_accuracy']:.1f}%"
            used = "yes" if q is m["trained"] or q == m["trained"] else ""
            lines.append(f"| {name} | {band} | {q['anchors']:,} | {q['pairs']:,} | {acc} | "
                         f"{q['positives_per_anchor']:.2f} | {used} |")
    near = min(PAPER_TABLE4["vanilla"], key=lambda e: abs(e - epochs))
    lines += ["", f"| run | kNN top-1 | linear top-1 | train items | img/s | train wall "
              f"| paper, Table 4 ({near} ep, ResNet-18) | paper, Table 6 (ImageNet) |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for run, r in report["runs"].items():
        t4 = PAPER_TABLE4.get(_paper_key(run), {}).get(near)
        t6 = PAPER_TABLE6.get(_paper_key(run))
        items = (r.get("train_items") or {}).get("items")
        wall = "-" if r.get("train_s") is None else _duration(r["train_s"])
        lines.append(f"| {run} | {100 * r['knn_top1']:.2f}% | {100 * r['linear_top1']:.2f}% | "
                     f"{'-' if items is None else f'{items:,}'} | "
                     f"{r.get('img_per_s') or '-'} | {wall} | "
                     f"{'-' if t4 is None else f'{t4:.2f}%'} | "
                     f"{'-' if t6 is None else f'{t6:.1f}%'} |")
    spread = []
    for run in report["runs"]:
        if run.endswith(f"-seed{SECOND_SEED}"):
            base = run.removesuffix(f"-seed{SECOND_SEED}")
            if base in report["runs"]:
                d = [100 * abs(report["runs"][run][k] - report["runs"][base][k])
                     for k in ("knn_top1", "linear_top1")]
                spread.append(f"{base}: kNN {d[0]:.2f}, linear {d[1]:.2f} points")
    if spread:
        lines += ["", "Seed-to-seed difference (seed 0 vs seed 1): " + "; ".join(spread)]
    return "\n".join(lines)


def machine() -> str:
    """CPU model and the vector flags that decide the trainer's speed (bf16 or not)."""
    import platform

    model, flags = platform.processor() or platform.machine(), ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
                flags = " ".join(f for f in value.split() if f in wanted)
    return f"{model}, {os.cpu_count()} CPUs, flags {flags or '-'}, {platform.platform()}"


def write_doc(s: Settings, table: str, argv: list[str]) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _report import update_section

    reduced = s.preset == "cpu"
    title = ("## SePP-ID on CIFAR-10: reduced replication on a CPU (issue 21)" if reduced
             else "## SePP-ID on CIFAR-10 (replication)")
    note = ("**Reduced replication**: a ResNet-20-style CIFAR net, "
            f"{s.p.epochs} epochs, sized for <= {s.p.budget_min:g} min per training run on "
            "this CPU; the paper's figures are ResNet-18 at 200+ epochs and are shown for "
            "reference, not as the target.\n\n" if reduced else "")
    # the trainer's speed halves on this 2-core machine when other work runs beside it
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    body = (f"{title}\n\n{note}Machine: {machine()}; load average (1/5/15 min) when "
            f"written: {load}; date {time.strftime('%Y-%m-%d')}; "
            f"command: `python benchmarks/sepp_id_cifar10.py {' '.join(argv)}`\n\n{table}")
    section = "sepp-id-cifar10-reduced" if reduced else "sepp-id-cifar10"
    update_section(ROOT / "docs" / "benchmarks.md", section, body)


if __name__ == "__main__":
    raise SystemExit(main())
