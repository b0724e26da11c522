"""The embed stage: store layout, bad images, resume byte-identity, determinism, CLI errors."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import RESNET20, write_image

import pairmine
from pairmine.cli import cli


def _store_files(store: Path) -> dict[str, bytes]:
    """Every file of a store except the run log (timings legitimately differ)."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.name != "runs.jsonl"}


def test_folder_store_layout(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "emb"
    result = pairmine.embed(image_folder, out, encoder="toy:0", workers=0, dtype="float32")
    assert result.images == 21 and result.errors == 0 and result.dim == 16
    store = pairmine.open_embeddings(out)
    assert store.vectors.shape == (21, 16) and store.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(store.vectors, axis=1), 1.0, atol=1e-6)
    meta = store.meta.to_pydict()
    assert meta["id"] == list(range(21))
    assert meta["key"] == sorted(meta["key"])
    assert meta["label"] == [0] * 7 + [1] * 7 + [2] * 7
    for key, digest in zip(meta["key"], meta["sha256"], strict=True):
        assert digest == hashlib.sha256((image_folder / key).read_bytes()).hexdigest()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "pairmine/embeddings"
    assert manifest["source"]["class_names"] == ["cat", "dog", "emu"]
    assert manifest["encoder"]["spec"] == "toy:0"
    assert not (out / ".partial").exists()


def test_float16_is_default_and_normalised(image_folder: Path, tmp_path: Path) -> None:
    pairmine.embed(image_folder, tmp_path / "e", encoder="toy:0", workers=0)
    store = pairmine.open_embeddings(tmp_path / "e")
    assert store.vectors.dtype == np.float16
    norms = np.linalg.norm(store.vectors.astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)


def test_bad_images_are_listed_not_fatal(image_folder: Path, tmp_path: Path) -> None:
    from PIL import Image

    bad = image_folder / "dog"
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("not an image at all")
    full = (image_folder / "cat" / "001.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(full[: len(full) // 2])
    # odd modes that must come out as RGB
    write_image(bad / "gray.png", 1, fmt="PNG", mode="L")
    write_image(bad / "palette.png", 2, fmt="PNG", mode="P")
    write_image(bad / "alpha.png", 3, fmt="PNG", mode="RGBA")
    write_image(bad / "cmyk.jpg", 4, fmt="JPEG", mode="CMYK")
    Image.fromarray(np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50).save(
        bad / "deep16.png")
    result = pairmine.embed(image_folder, tmp_path / "e", encoder="toy:0", workers=0)
    assert result.errors == 3
    assert result.images == 21 + 5
    errors = pq.read_table(tmp_path / "e" / "errors.parquet").to_pydict()
    assert sorted(errors["key"]) == ["dog/empty.jpg", "dog/text.jpg", "dog/truncated.jpg"]
    assert all(errors["error"])
    keys = pairmine.open_embeddings(tmp_path / "e").meta.column("key").to_pylist()
    assert {"dog/gray.png", "dog/palette.png", "dog/alpha.png", "dog/cmyk.jpg",
            "dog/deep16.png"} <= set(keys)


class _InterruptAfter:
    """A progress reporter that stops the run (like Ctrl-C) once `limit` images are done."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.done = 0

    def start(self, description: str, total: int | None, unit: str = "items") -> None:
        pass

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        if self.done > self.limit:
            raise KeyboardInterrupt

    def finish(self) -> None:
        pass


def test_resume_is_byte_identical(image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "dog" / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    opts: dict[str, Any] = {"encoder": "toy:1", "workers": 0, "shard_size": 5, "batch_size": 2}
    pairmine.embed(image_folder, tmp_path / "whole", **opts)
    with pytest.raises(KeyboardInterrupt):
        # 5 images = shard 0 written, then stop inside shard 1
        pairmine.embed(image_folder, tmp_path / "resumed", progress=_InterruptAfter(6), **opts)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    assert (tmp_path / "resumed" / "meta" / "meta-00000.parquet").exists()
    with pytest.raises(pairmine.StoreError, match="incomplete"):
        pairmine.open_embeddings(tmp_path / "resumed")
    result = pairmine.embed(image_folder, tmp_path / "resumed", **opts)
    assert result.resumed_shards == 1
    assert _store_files(tmp_path / "resumed") == _store_files(tmp_path / "whole")
    runs = (tmp_path / "resumed" / "runs.jsonl").read_text().splitlines()
    assert len(runs) == 1  # the interrupted run wrote no completion record


def test_resume_with_other_options_is_refused(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        pairmine.embed(image_folder, tmp_path / "e", encoder="toy:1", workers=0, shard_size=5,
                       batch_size=5, progress=_InterruptAfter(6))
    with pytest.raises(pairmine.StoreError, match="other options"):
        pairmine.embed(image_folder, tmp_path / "e", encoder="toy:2", workers=0, shard_size=5,
                       batch_size=5)


def test_same_output_for_any_worker_count(image_folder: Path, tmp_path: Path) -> None:
    for workers in (0, 2):
        pairmine.embed(image_folder, tmp_path / f"w{workers}", encoder="toy:3",
                       workers=workers, batch_size=4, shard_size=8)
    assert _store_files(tmp_path / "w0") == _store_files(tmp_path / "w2")


def test_batch_size_changes_no_row(image_folder: Path, tmp_path: Path) -> None:
    for bs in (1, 5, 64):
        pairmine.embed(image_folder, tmp_path / f"b{bs}", encoder="toy:3", workers=0,
                       batch_size=bs, dtype="float32", precision="fp32")
    ref = pairmine.open_embeddings(tmp_path / "b1")
    for bs in (5, 64):
        other = pairmine.open_embeddings(tmp_path / f"b{bs}")
        assert other.meta.equals(ref.meta)
        # batched convolutions may sum in another order: equal up to float32 rounding
        np.testing.assert_allclose(other.vectors, ref.vectors, atol=1e-5)


def test_complete_store_needs_overwrite(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "e"
    pairmine.embed(image_folder, out, encoder="toy:0", workers=0)
    with pytest.raises(pairmine.StoreError, match="--overwrite"):
        pairmine.embed(image_folder, out, encoder="toy:0", workers=0)
    result = pairmine.embed(image_folder, out, encoder="toy:5", workers=0, overwrite=True)
    assert result.images == 21
    assert pairmine.open_embeddings(out).manifest["encoder"]["spec"] == "toy:5"


# ---------------------------------------------------------------------------------------------
# CLI: every error path is one line, exit code 1, no traceback, nothing written


def _fails_cleanly(args: list[str], expect: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert expect in result.output, result.output
    assert result.output.strip().count("\n") == 0, result.output


def test_cli_error_paths(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _fails_cleanly(["embed", str(tmp_path / "nope"), str(out), "--encoder", "toy:0"],
                   "does not exist")
    (tmp_path / "empty").mkdir()
    _fails_cleanly(["embed", str(tmp_path / "empty"), str(out), "--encoder", "toy:0"],
                   "no images")
    _fails_cleanly(["embed", str(image_folder), str(out), "--encoder", "nosuch:x"],
                   "unknown encoder")
    junk = tmp_path / "junk.th"
    junk.write_bytes(b"this is not a checkpoint")
    _fails_cleanly(["embed", str(image_folder), str(out), "--encoder", f"cifar-resnet:{junk}"],
                   "not a loadable PyTorch checkpoint")
    assert not out.exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "precious.txt").write_text("keep me")
    _fails_cleanly(["embed", str(image_folder), str(busy), "--encoder", "toy:0"],
                   "not a pairmine store")
    assert sorted(p.name for p in busy.iterdir()) == ["precious.txt"]


def test_cli_success_prints_summary(image_folder: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["embed", str(image_folder), str(tmp_path / "e"),
                                      "--encoder", "toy:0", "--workers", "0"])
    assert result.exit_code == 0, result.output
    rows = dict(re.findall(r"^│ (\w+)\s+│ (.*?)\s+│$", result.stdout, re.M))  # the summary
    assert rows["images"] == "21" and rows["errors"] == "0" and rows["dim"] == "16"


# ---------------------------------------------------------------------------------------------
# the real encoder on real data


@pytest.mark.parametrize("per_class, expected", [
    (200, 0.763),  # the first 200 JPEGs of each class (sorted names): 2,000 images, ~10 s
    pytest.param(1000, 0.768, marks=pytest.mark.slow),  # all 10,000 test JPEGs
])
def test_resnet20_cifar10_nearest_neighbour(cifar_test_folder: Path, tmp_path: Path,
                                            per_class: int, expected: float) -> None:
    """Cosine 1-NN same-label rate of ResNet-20 embeddings on CIFAR-10 test JPEGs, against the
    figure measured for this checkpoint and data (``expected``, less 0.015 of slack for
    library versions). Proves loader, preprocessing and model are right."""
    if not RESNET20.exists():
        pytest.skip("../shared/data is not present")
    rows = []
    for label, folder in enumerate(sorted(p for p in cifar_test_folder.iterdir() if p.is_dir())):
        rows += [f"{f},{label}" for f in sorted(folder.glob("*.jpg"))[:per_class]]
    listing = tmp_path / "images.csv"
    listing.write_text("path,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "cifar-emb"
    result = pairmine.embed(listing, out, encoder=f"cifar-resnet:{RESNET20}",
                            batch_size=500, workers=0)
    assert result.images == 10 * per_class and result.errors == 0 and result.dim == 64
    store = pairmine.open_embeddings(out)
    x = np.asarray(store.vectors, dtype=np.float32)
    labels = np.asarray(store.meta.column("label").to_pylist())
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    same = labels[sims.argmax(axis=1)] == labels
    assert same.mean() >= expected - 0.015, same.mean()


def test_a_long_file_list_is_planned_in_memory_independent_of_its_length(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The list is streamed to a listing on disk: no list of every path in memory (issue 22).
    Small groups here stand in for 65,536-row groups of a list of millions."""
    import tracemalloc

    from pairmine.sources import filelist, listing

    monkeypatch.setattr(listing, "CHUNK", 2048)
    monkeypatch.setattr(filelist, "CHUNK", 2048)
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "real.jpg").write_bytes(b"\xff\xd8\xff")
    growth = {}
    for n in (1_000, 5_000, 50_000):
        path = tmp_path / f"list{n}.txt"
        path.write_text("img/real.jpg\n" + "".join(f"img/{i:09d}.jpg\n" for i in range(n)))
        tracemalloc.start()
        src = filelist.ListSource(path)
        refs = src.refs_listing()
        assert (len(src), refs.num_rows) == (n + 1, n + 1)
        assert src.read(0) == b"\xff\xd8\xff"  # item 0 read back from the listing
        assert refs.take([n, 0]).column("key").to_pylist() == [f"img/{n - 1:09d}.jpg",
                                                               "img/real.jpg"]
        growth[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        del src, refs
    # 45,000 more entries: the hashes of the duplicate check (8 to 16 bytes each), not the
    # paths (a list of them is over 100 bytes an entry)
    assert growth[50_000] - growth[5_000] < 24 * 45_000, growth


def test_a_folder_is_listed_in_sorted_order_with_imagefolder_labels(tmp_path: Path) -> None:
    """The folder walk streams paths in sorted order; the labels are the class folders'
    ranks by name, also where the walk meets them in another order ("a.b/" before "a/")."""
    from pairmine.sources.folder import FolderSource

    for rel in ("a/x.jpg", "a/sub/y.png", "a.b/z.jpg", "a0.jpg", "b/w.jpg", "a-c/v.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"\xff\xd8\xff")
    src = FolderSource(tmp_path)
    refs = src.refs_listing()
    keys = refs.slice(0).column("key").to_pylist()
    assert keys == sorted(keys) == ["a-c/v.jpg", "a.b/z.jpg", "a/sub/y.png", "a/x.jpg",
                                    "a0.jpg", "b/w.jpg"]
    assert src.class_names() == ["a", "a-c", "a.b", "b"]
    assert refs.column("label").to_pylist() == [1, 2, 0, 0, None, 3]
    assert src.describe()["extensions"] == {"jpg": 5, "png": 1}


def test_a_big_folder_is_listed_in_memory_independent_of_its_size(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tracemalloc

    from pairmine.sources import folder, listing

    monkeypatch.setattr(listing, "CHUNK", 1024)
    monkeypatch.setattr(folder, "CHUNK", 1024)
    peaks = {}
    for n in (500, 2_000, 20_000):
        root = tmp_path / f"f{n}"
        for c in range(10):  # ten classes
            (root / f"c{c}").mkdir(parents=True)
        for i in range(n):
            (root / f"c{i % 10}" / f"{i:07d}.jpg").touch()
        tracemalloc.start()
        src = folder.FolderSource(root)
        assert len(src) == n and src.refs_listing().num_rows == n
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        del src
    # 18,000 more images: a class folder's entries (2,000 here) and 8 bytes an image, not
    # a list of every path (over 100 bytes an image)
    assert peaks[20_000] - peaks[2_000] < 60 * 18_000, peaks


def test_auto_precision_keeps_an_unfinished_runs_choice(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A resumed `--precision auto` run reuses the precision its first part chose (a new trial
    could pick the other one and the run's identity would no longer match); a new run asks
    the trial."""
    from pairmine.embed import stage

    asked: list[str] = []

    class Choice:
        precision = "fp32"

    def trial(enc: object, device: str, precision: str, batch_size: int) -> Choice:
        asked.append(precision)
        return Choice()

    monkeypatch.setattr(stage, "choose_embed_precision", trial)
    out = tmp_path / "emb"
    assert stage._auto_precision(out, object(), "cpu", 8) == "fp32"  # type: ignore[arg-type]
    assert asked == ["auto"]
    (out / ".partial").mkdir(parents=True)
    (out / ".partial" / "run.json").write_text(json.dumps({"config": {"precision": "bf16"}}))
    assert stage._auto_precision(out, object(), "cpu", 8) == "bf16"  # type: ignore[arg-type]
    assert asked == ["auto"]


def test_precision_trial_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """PAIRMINE_PRECISION_TRIAL=0: auto is fp32 on every CPU, no timing (runs that must give
    the same bytes as another run); unset, a CPU with native bf16 times the model."""
    from pairmine import runtime

    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setenv("PAIRMINE_PRECISION_TRIAL", "0")
    assert not runtime.needs_trial("auto", "cpu")
    choice = runtime.choose_precision("auto", "cpu", lambda name: None)
    assert choice.precision == "fp32" and "PAIRMINE_PRECISION_TRIAL=0" in choice.reason
    monkeypatch.delenv("PAIRMINE_PRECISION_TRIAL")
    assert runtime.needs_trial("auto", "cpu")
