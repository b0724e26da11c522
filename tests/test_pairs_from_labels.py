"""`pairmine pairs-from-labels`: label-curated pairs and their augmented control, as normal
pairs stores that export, verify and eval-pairs read unchanged (issue 19 §2).

Tiny generated stores (tests/test_export.py's helpers): 30 images over 3 class folders, two of
them exact copies of another image of their class, random unit vectors.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_export import build_embeddings, build_pairs, random_pairs, tar_samples, write_images

import pairmine
from pairmine import stores as st
from pairmine.errors import ConfigError, InputError
from pairmine.quality import pairs_from_labels

N_IMAGES = 30


@pytest.fixture
def emb(tmp_path: Path) -> Path:
    paths = write_images(tmp_path / "images", N_IMAGES, png_every=4)
    # two exact duplicates inside their class: never a pair
    for src in (paths[0], paths[4]):
        shutil.copy(src, src.with_name("copy-" + src.name))
    return build_embeddings(tmp_path / "images", tmp_path / "emb")


def pairs_of(store: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = st.open_pairs(store).table
    return (table.column("a").to_numpy(), table.column("b").to_numpy(),
            table.column("score").to_numpy())


def labels_and_hashes(emb: Path) -> tuple[np.ndarray, list[str]]:
    meta = st.open_embeddings(emb).meta
    return meta.column("label").to_numpy(), meta.column("sha256").to_pylist()


def test_per_class_pairs_are_same_class_different_non_duplicate_images(
        emb: Path, tmp_path: Path) -> None:
    result = pairs_from_labels(emb, tmp_path / "cur", per_class=20, seed=1)
    a, b, score = pairs_of(tmp_path / "cur")
    labels, sha = labels_and_hashes(emb)
    assert result.pairs == a.size == 60
    assert result.per_class == {"cat": 20, "dog": 20, "emu": 20}
    assert (labels[a] == labels[b]).all()
    assert (a < b).all()
    assert all(sha[i] != sha[j] for i, j in zip(a, b, strict=True))  # no duplicates
    assert len({(int(i), int(j)) for i, j in zip(a, b, strict=True)}) == a.size  # each once
    assert Counter(labels[a].tolist()) == {0: 20, 1: 20, 2: 20}
    # the score is match's: the float64 dot of the stored rows, stored as float32
    vec = np.asarray(st.open_embeddings(emb).vectors[:], dtype=np.float64)
    want = np.einsum("ij,ij->i", vec[a], vec[b]).astype(np.float32)
    assert np.array_equal(score, want)
    manifest = st.open_pairs(tmp_path / "cur").manifest
    cur = manifest["curation"]
    assert cur["method"] == "labels" and cur["seed"] == 1
    assert cur["pairs_per_class"] == {"cat": 20, "dog": 20, "emu": 20}
    assert manifest["inputs"]["embeddings"]["manifest_sha256"] == \
        st.sha256_file(emb / "manifest.json")
    assert manifest["duplicates"]["pairs"] == 2


def test_the_draw_is_seeded(emb: Path, tmp_path: Path) -> None:
    pairs_from_labels(emb, tmp_path / "x", per_class=10, seed=3)
    pairs_from_labels(emb, tmp_path / "y", per_class=10, seed=3)
    pairs_from_labels(emb, tmp_path / "z", per_class=10, seed=4)
    x, y, z = (pq.read_table(tmp_path / s / "pairs" / "pairs-00000.parquet")
               for s in ("x", "y", "z"))
    assert x.equals(y)
    assert not x.equals(z)


def test_like_copies_the_per_class_counts_of_a_mined_store(emb: Path, tmp_path: Path) -> None:
    n = len(st.open_embeddings(emb))
    mined_list = random_pairs(n, 40)
    mined = build_pairs(emb, tmp_path / "mined", mined_list)
    labels, _ = labels_and_hashes(emb)
    # a mined pair's class: image a's label (a, the lower id, is the export's anchor)
    want = Counter(int(labels[min(p)]) for p in mined_list)
    mixed = sum(1 for i, j in mined_list if labels[i] != labels[j])
    assert mixed > 0  # random pairs: the rule for mixed-label pairs is exercised

    result = pairs_from_labels(emb, tmp_path / "cur", like=mined, seed=0)
    a, b, _ = pairs_of(tmp_path / "cur")
    assert Counter(labels[a].tolist()) == want
    assert (labels[a] == labels[b]).all() and (a < b).all()
    assert result.mixed_pairs == mixed and result.pairs == 40

    control = pairs_from_labels(emb, tmp_path / "ctl", like=mined, control=True)
    a, b, _ = pairs_of(tmp_path / "ctl")
    assert (a == b).all()
    assert Counter(labels[a].tolist()) == want
    assert control.per_class == result.per_class
    assert st.open_pairs(tmp_path / "ctl").manifest["self_pairs"] is True


def test_control_repeats_images_only_as_much_as_the_counts_need(emb: Path,
                                                                 tmp_path: Path) -> None:
    # 10 or 11 images per class (one a duplicate): 25 pairs per class use each image 2-3 times
    pairs_from_labels(emb, tmp_path / "ctl", per_class=25, control=True, seed=0)
    a, b, score = pairs_of(tmp_path / "ctl")
    _, sha = labels_and_hashes(emb)
    assert (a == b).all() and a.size == 75
    uses = Counter(a.tolist())
    assert max(uses.values()) - min(uses.values()) <= 1
    assert len({sha[i] for i in uses}) == len(uses)  # one image per content
    assert np.allclose(score, 1.0, atol=1e-3)


def test_export_verify_and_eval_pairs_read_the_stores(emb: Path, tmp_path: Path) -> None:
    pairs_from_labels(emb, tmp_path / "cur", per_class=5)
    pairs_from_labels(emb, tmp_path / "ctl", per_class=5, control=True)
    report = pairmine.quality.eval_pairs(tmp_path / "cur", grid=False, ks=(1,))
    assert report.accuracy.unordered == 1.0 and report.accuracy.pairs == 15

    for store in ("cur", "ctl"):
        out = tmp_path / f"spps-{store}"
        result = pairmine.export(tmp_path / store, out, fmt="webdataset", combined=True)
        assert result.pairs == 15
        pairmine.verify(out)
    # the control's pair samples: two members holding the same image's bytes (two views)
    samples = {}
    for tar in sorted((tmp_path / "spps-ctl" / "shards").glob("*.tar")):
        samples.update(tar_samples(tar))
    pair_samples = [s for key, s in samples.items() if key.startswith("pair-")]
    assert len(pair_samples) == 15
    for sample in pair_samples:
        anchor = next(v for k, v in sample.items() if k.startswith("anchor."))
        positive = next(v for k, v in sample.items() if k.startswith("positive."))
        assert anchor == positive


def test_too_few_images_is_one_clear_error(emb: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"too few images .* cat \(5[0-9] possible, 500 asked"):
        pairs_from_labels(emb, tmp_path / "cur", per_class=500)
    assert not (tmp_path / "cur" / "manifest.json").exists()


@pytest.mark.parametrize("options", [{}, {"per_class": 3, "like": "somewhere"}])
def test_exactly_one_of_like_and_per_class(emb: Path, tmp_path: Path,
                                          options: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="exactly one of --like PAIRS and --per-class N"):
        pairs_from_labels(emb, tmp_path / "cur", **options)


def test_cli(emb: Path, tmp_path: Path) -> None:
    from pairmine.cli import cli

    out = tmp_path / "cur"
    run = CliRunner().invoke(cli, ["pairs-from-labels", str(emb), str(out), "--per-class",
                                    "4", "--seed", "2", "--control"])
    assert run.exit_code == 0, run.output
    assert "control" in run.output
    assert st.open_pairs(out).manifest["curation"]["method"] == "control"
    bad = CliRunner().invoke(cli, ["pairs-from-labels", str(emb), str(tmp_path / "x")])
    assert bad.exit_code == 2 and "exactly one of" in bad.output


def test_the_trainer_and_show_read_them(emb: Path, tmp_path: Path) -> None:
    from pairmine.train.data import SEMANTIC, open_train_data

    pairs_from_labels(emb, tmp_path / "ctl", per_class=4, control=True)
    pairmine.export(tmp_path / "ctl", tmp_path / "spps", combined=True)
    data = open_train_data(tmp_path / "spps")
    sem = data.kind == SEMANTIC
    assert data.counts()["semantic"] == 2 * 12  # both directions of each pair
    # the control: each semantic item's two reads are one image's bytes
    assert all(data.reader.read(int(a)) == data.reader.read(int(b))
               for a, b in zip(data.a[sem], data.b[sem], strict=True))
    report = pairmine.quality.show(tmp_path / "ctl", tmp_path / "page")
    assert report.index.is_file() and report.shown == 12


def test_like_a_store_mined_from_another_embeddings_store(emb: Path, tmp_path: Path) -> None:
    # the same images embedded again (other vectors): classes are matched by name
    other = build_embeddings(tmp_path / "images", tmp_path / "emb2", seed=1)
    n = len(st.open_embeddings(other))
    mined_list = random_pairs(n, 30, seed=5)
    mined = build_pairs(other, tmp_path / "mined", mined_list)
    labels, _ = labels_and_hashes(other)
    names = st.open_embeddings(other).manifest["source"]["class_names"]
    want = Counter(names[int(labels[min(p)])] for p in mined_list)
    result = pairs_from_labels(emb, tmp_path / "cur", like=mined)
    assert result.per_class == dict(sorted(want.items()))
    record = st.open_pairs(tmp_path / "cur").manifest["curation"]["like"]
    assert record["manifest_sha256"] == st.sha256_file(mined / "manifest.json")
