"""The golden pipeline: a small fixed input through embed → match (twice: whole set, and a
seeded subset) → export, with every data file's sha256. ``tests/golden/hashes.json`` holds
the hashes that the code before the store-contract redesign wrote, so a refactor that changes
one byte of a store shows. Run as a script to print the hashes of the current code:
``python tests/golden_pipeline.py /tmp/pairmine-golden`` (metadata holds absolute source
paths: the test runs at that same place)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "pairmine" / "assets"
SAMPLE = ASSETS / "cifar10-sample"
CHECKPOINT = ASSETS / "resnet20-cifar10.th"
PER_CLASS = 6
# files that record timings or absolute paths by design, not data (an export's README.md, its
# dataset card, names the input stores' paths; tests/test_dataset_card.py checks it)
NOT_DATA = {"manifest.json", "runs.jsonl", "README.md"}


def golden_input(root: Path) -> Path:
    """The first PER_CLASS images of each class of the packaged sample (60 JPEGs)."""
    folder = root / "images"
    for cls in sorted(p for p in SAMPLE.iterdir() if p.is_dir()):
        for image in sorted(cls.iterdir())[:PER_CLASS]:
            (folder / cls.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, folder / cls.name / image.name)
    return folder


def run_pipeline(root: Path) -> dict[str, Path]:
    import pairmine

    images = golden_input(root)
    stores = {"emb": root / "emb", "pairs": root / "pairs", "subset": root / "pairs-subset",
              "export": root / "export"}
    pairmine.embed(images, stores["emb"], encoder=f"cifar-resnet:{CHECKPOINT}",
                   batch_size=8, shard_size=16, workers=0, device="cpu", precision="fp32")
    pairmine.match(stores["emb"], stores["pairs"], min_score=0.9, max_score=0.995,
                   block_rows=16, device="cpu")
    pairmine.match(stores["emb"], stores["subset"], min_score=0.8, max_score=0.995,
                   subset=0.5, seed=3, block_rows=16, device="cpu")
    pairmine.export(stores["pairs"], stores["export"], fmt="webdataset", combined=True,
                    shard_size=20)
    return stores


def data_hashes(stores: dict[str, Path]) -> dict[str, str]:
    """sha256 of every data file, keyed ``store/relative/path``."""
    hashes: dict[str, str] = {}
    for name, store in stores.items():
        for path in sorted(p for p in store.rglob("*") if p.is_file()):
            if path.name in NOT_DATA:
                continue
            rel = f"{name}/{path.relative_to(store).as_posix()}"
            hashes[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(data_hashes(run_pipeline(out)), indent=1, sort_keys=True))
