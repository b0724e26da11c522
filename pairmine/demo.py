"""`pairmine demo`: the whole pipeline on the embedded dataset, offline, in minutes on a CPU.

An orchestrator over the public stage functions (like the CLI, it is no stage itself): embed →
match → export (combined WebDataset) → verify → a short SePP-ID training → kNN evaluation →
a report. Each step whose store is already complete is skipped, so a rerun resumes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pairmine import stores
from pairmine.progress import NullProgress, Progress

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
SAMPLE = ASSETS / "cifar10-sample"
CHECKPOINT = ASSETS / "resnet20-cifar10.th"
ENCODER = f"cifar-resnet:{CHECKPOINT}"
BAND = (0.97, 0.99)


@dataclass
class Step:
    name: str
    path: Path
    seconds: float
    skipped: bool
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoResult:
    out: Path
    steps: list[Step]
    report: Path

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)


def demo(out: str | Path = "pairmine-demo", *, train_epochs: int = 3, device: str = "auto",
         overwrite: bool = False, progress: Progress | None = None) -> DemoResult:
    """Run the pipeline on the embedded CIFAR-10 sample into ``out``; see module docstring."""
    import shutil

    import pairmine

    out = Path(out)
    progress = progress or NullProgress()
    if overwrite and out.exists():
        if not (out / "report.md").exists() and not (out / "emb").exists():
            from pairmine.errors import StoreError

            raise StoreError(f"{out} does not look like a demo output",
                             "refusing to delete it; choose another path")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    steps: list[Step] = []

    def step(name: str, path: Path, fmt: str | None, run: Callable[[], dict[str, Any]],
             after: tuple[Path, ...] = ()) -> None:
        t = time.perf_counter()
        if fmt is not None:  # a store: complete once its manifest is there
            done = (path / stores.MANIFEST).exists()
            facts = _facts(path, fmt) if done else run()
        else:  # an eval's JSON (written atomically, last): done if newer than what it read
            done = _fresh(path, after) if after else False
            facts = _eval_facts(stores.read_json(path)) if done else run()
        steps.append(Step(name, path, time.perf_counter() - t, done, facts))
        log.info("demo: %s %s", name, "(already done)" if done else "done")

    emb, pairs, spps = out / "emb", out / "pairs", out / "spps"
    step("embed", emb, stores.EMBEDDINGS_FORMAT, lambda: _embed_facts(pairmine.embed(
        SAMPLE, emb, encoder=ENCODER, batch_size=250, device=device, progress=progress)))
    step("match", pairs, stores.PAIRS_FORMAT, lambda: _match_facts(pairmine.match(
        emb, pairs, min_score=BAND[0], max_score=BAND[1], device=device, progress=progress)))
    step("pair accuracy", pairs, None, lambda: pair_accuracy(pairs))
    step("export", spps, stores.EXPORT_FORMAT, lambda: _export_facts(pairmine.export(
        pairs, spps, fmt="webdataset", combined=True, progress=progress)))
    step("verify", spps, None, lambda: {"verified": _verify(spps)})
    train_list, test_list = _split_lists(out)
    if train_epochs > 0:
        run = out / "train"
        step("train SePP-ID", run, None, lambda: _train(spps, run, train_epochs, device, progress))
        step("eval trained", out / "eval-trained.json", None, lambda: _eval(
            f"pairmine:{run}", train_list, test_list, out / "eval-trained.json", device, progress),
             after=(run / "checkpoint-last.pt", train_list, test_list))
    step("eval sampler", out / "eval-sampler.json", None, lambda: _eval(
        ENCODER, train_list, test_list, out / "eval-sampler.json", device, progress),
         after=(CHECKPOINT, train_list, test_list))
    report = out / "report.md"
    report.write_text(render_report(out, steps), encoding="utf-8")
    return DemoResult(out=out, steps=steps, report=report)


def pair_accuracy(pairs_path: Path) -> dict[str, Any]:
    """Share of pairs whose two images have the same label, and the chance level."""
    import numpy as np

    pairs = stores.open_pairs(pairs_path)
    emb = stores.open_pairs_embeddings(pairs)
    labels = np.asarray(emb.meta.column("label").fill_null(-1).to_numpy(), dtype=np.int64)
    a = pairs.table.column("a").to_numpy()
    b = pairs.table.column("b").to_numpy()
    known = (labels[a] >= 0) & (labels[b] >= 0)
    same = labels[a][known] == labels[b][known]
    _, counts = np.unique(labels[labels >= 0], return_counts=True)
    p = counts / max(1, counts.sum())
    return {"pairs": len(a), "pair_accuracy": float(same.mean()) if len(same) else None,
            "chance": float((p ** 2).sum())}


def _facts(path: Path, fmt: str | None) -> dict[str, Any]:
    manifest = stores.read_json(path / stores.MANIFEST)
    keys = ("count", "errors", "dim", "counts")
    return {k: manifest[k] for k in keys if k in manifest} | {"resumed": True}


def _embed_facts(r: Any) -> dict[str, Any]:
    return {"images": r.images, "errors": r.errors, "dim": r.dim,
            "images_per_s": round(r.images_per_second)}


def _match_facts(r: Any) -> dict[str, Any]:
    return {"pairs": r.pairs, "ordered_pairs": r.ordered, "anchors_with_pairs":
            r.anchors_with_pairs, "duplicates": r.duplicates, "engine": r.engine}


def _export_facts(r: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(r).items() if isinstance(v, int | float | str)}


def _train(spps: Path, run: Path, epochs: int, device: str,
           progress: Progress) -> dict[str, Any]:
    from pairmine.train import train

    # A demonstration, not a result: a small ResNet-18 (ImageNet stem, so 32-px inputs stay
    # cheap) for a few epochs shows the SePP-ID loop consuming the export; see
    # benchmarks/sepp_id_cifar10.py for the measured replication protocol.
    result = train(spps, run, resume=(run / "checkpoint-last.pt").exists(), progress=progress,
                   arch="resnet18", image_size=32, epochs=epochs, batch_size=128, moco_k=1024,
                   device=device)
    return {"epochs": result.epochs_done, "last_loss": result.last_loss,
            "images_per_s": result.images_per_s,
            "instance_items": result.data.get("instance"),
            "pair_items": result.data.get("semantic")}


def _eval(encoder: str, train_list: Path, test_list: Path, out: Path, device: str,
          progress: Progress) -> dict[str, Any]:
    from pairmine.quality import evaluate

    result = evaluate(encoder, train_list, test_list, linear=False, device=device, out=out,
                      progress=progress)
    return _eval_facts(result.to_json())


def _eval_facts(result: dict[str, Any]) -> dict[str, Any]:
    knn = result.get("knn") or {}
    return {"knn_top1": knn.get("top1"), "k": knn.get("k"), "train": 1500, "test": 500}


def _fresh(result: Path, inputs: tuple[Path, ...]) -> bool:
    """``result`` exists and is newer than every input (a retrained model is evaluated again)."""
    if not result.is_file() or not all(p.exists() for p in inputs):
        return False
    return all(result.stat().st_mtime_ns >= p.stat().st_mtime_ns for p in inputs)


def _split_lists(out: Path) -> tuple[Path, Path]:
    """Hold out the last 50 images of each class of the sample for kNN evaluation."""
    train_list, test_list = out / "eval-train.csv", out / "eval-test.csv"
    rows: dict[str, list[str]] = {"train": [], "test": []}
    for label, folder in enumerate(sorted(p for p in SAMPLE.iterdir() if p.is_dir())):
        files = sorted(folder.glob("*.jpg"))
        for i, f in enumerate(files):
            rows["train" if i < len(files) - 50 else "test"].append(f"{f},{label}")
    for path, key in ((train_list, "train"), (test_list, "test")):
        text = "path,label\n" + "\n".join(rows[key]) + "\n"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:  # keep its mtime
            path.write_text(text, encoding="utf-8")
    return train_list, test_list


def _verify(spps: Path) -> bool:
    import pairmine

    pairmine.verify(spps)
    return True


def render_report(out: Path, steps: list[Step]) -> str:
    lines = ["# pairmine demo report", "",
             "Data: 2,000 CIFAR-10 test JPEGs shipped in `pairmine/assets/` (200 per class); "
             "encoder: the supervised CIFAR ResNet-20 checkpoint shipped beside them "
             f"(64-D pooled features); band [{BAND[0]}, {BAND[1]}] inclusive.", "",
             "| step | artefact | seconds | facts |", "| --- | --- | ---: | --- |"]
    for s in steps:
        facts = ", ".join(f"{k}={short(v)}" for k, v in s.facts.items())
        where = s.path.relative_to(out) if s.path.is_relative_to(out) else s.path
        lines.append(f"| {s.name}{' (resumed)' if s.skipped else ''} | `{where}` | "
                     f"{s.seconds:.1f} | {facts} |")
    return "\n".join(lines) + "\n"


def short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
