"""The export as a publishable dataset (issue 19 §4): ``README.md`` with the Hugging Face YAML
header at the export root; ``datasets.load_dataset(OUT)`` loads the pairs with both images
and ``load_dataset(OUT, "combined")`` the merged set, every image counted on a mixed
JPEG+PNG export; ``pairmine verify`` checks the card against the data.

Hugging Face ``datasets`` runs offline (HF_DATASETS_OFFLINE=1) with a cache in tmp_path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml  # type: ignore[import-untyped]
from test_export import make_stores

import pairmine
from pairmine import stores as st
from pairmine.errors import ConfigError, StoreError
from pairmine.quality import pairs_from_labels

IMAGE_ROLES = ("anchor", "positive", "image")


def header_of(out: Path) -> dict[str, Any]:
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    return dict(yaml.safe_load(text[4:text.index("\n---\n", 3)]))


def load(out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
         *config: str) -> list[dict[str, Any]]:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset(str(out), *config, split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    return list(ds)


def images_per_row(rows: list[dict[str, Any]]) -> list[int]:
    return [sum(1 for k, v in r.items() if k.split(".")[0] in IMAGE_ROLES and v is not None)
            for r in rows]


def test_load_dataset_gets_every_pair_with_both_images_from_a_mixed_export(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = make_stores(tmp_path, n=12, n_pairs=15, png_every=3)
    out = tmp_path / "spps"
    pairmine.export(s.pairs, out, fmt="webdataset", shard_size=5)
    names = {n for p in (out / "shards").glob("*.parquet")
             for col in ("name_a", "name_b") for n in pq.read_table(p).column(col).to_pylist()}
    assert {n.rsplit(".", 1)[1] for n in names} == {"jpg", "png"}  # mixed formats

    rows = load(out, tmp_path, monkeypatch)
    assert len(rows) == 15
    assert images_per_row(rows) == [2] * 15  # no image dropped
    spps = pq.read_table(out / "spps.parquet").to_pylist()
    assert sorted(r["json"]["pair_id"] for r in rows) == [r["pair_id"] for r in spps]
    for row in rows:
        anchor = next(v for k, v in row.items() if k.startswith("anchor.") and v is not None)
        ref = next(r for r in spps if r["pair_id"] == row["json"]["pair_id"])
        assert anchor.size == _size_of(Path(ref["source_a"]))
    header = header_of(out)
    assert [c["config_name"] for c in header["configs"]] == ["pairs"]
    assert header["configs"][0]["default"] is True
    pairmine.verify(out)


def _size_of(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def test_pairs_and_combined_configs_of_a_combined_export(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # unshuffled, 12 images in shards of 4: the pairs lie in shards of their own
    s = make_stores(tmp_path, n=12, n_pairs=15, png_every=3)
    out = tmp_path / "spps"
    pairmine.export(s.pairs, out, fmt="webdataset", combined=True, shuffle=False, shard_size=4)
    header = header_of(out)
    assert {c["config_name"]: c.get("default", False) for c in header["configs"]} == \
        {"pairs": True, "combined": False}
    pairs = load(out, tmp_path, monkeypatch)
    assert len(pairs) == 15 and images_per_row(pairs) == [2] * 15
    merged = load(out, tmp_path, monkeypatch, "combined")
    assert len(merged) == 27
    assert sum(images_per_row(merged)) == 2 * 15 + 12
    assert {r["json"]["kind"] for r in merged} == {"pair", "image"}
    pairmine.verify(out)


def test_a_shuffled_combined_export_loads_its_pairs_alone_by_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the default combined export: pairs and images shuffled together in the training shards,
    # and the pairs alone, in pair order, in pairs/shards (the card's default config)
    s = make_stores(tmp_path, n=12, n_pairs=15, png_every=3)
    out = tmp_path / "spps"
    pairmine.export(s.pairs, out, fmt="webdataset", combined=True, shard_size=5)
    info = st.open_export(out).manifest
    assert info.config.shuffle
    assert {k for sh in info.shards for k in _kinds(out / sh.index)} == {"pair", "image"}
    assert [sh.tar for sh in info.pairs_view] == [f"pairs/shards/spps-00000{i}.tar"
                                                  for i in range(3)]
    header = header_of(out)
    assert {c["config_name"]: c.get("default", False) for c in header["configs"]} == \
        {"pairs": True, "combined": False}

    pairs = load(out, tmp_path, monkeypatch)  # no config: the pairs, each with both images
    assert len(pairs) == 15 and images_per_row(pairs) == [2] * 15
    assert [r["json"]["pair_id"] for r in pairs] == list(range(15))
    merged = load(out, tmp_path, monkeypatch, "combined")
    assert len(merged) == 27 and sum(images_per_row(merged)) == 2 * 15 + 12
    # the same bytes in both series: a pair's anchor loads alike from either
    by_id = {r["json"]["pair_id"]: r for r in merged if r["json"]["kind"] == "pair"}
    for row in pairs:
        name = next(k for k, v in row.items() if k.startswith("anchor.") and v is not None)
        assert row[name].tobytes() == by_id[row["json"]["pair_id"]][name].tobytes()

    result = pairmine.verify(out)
    assert result.pairs == 15 and result.samples == 27 and result.pairs_view_shards == 3
    tar = out / info.pairs_view[1].tar
    tar.write_bytes(tar.read_bytes()[:-2048] + bytes(2048 - 1) + b"x")
    with pytest.raises(StoreError, match=r"pairs/shards/spps-000001\.tar"):
        pairmine.verify(out)


def _kinds(index: Path) -> set[str]:
    return set(pq.read_table(index, columns=["kind"]).column("kind").to_pylist())


def test_license_and_provenance(tmp_path: Path) -> None:
    s = make_stores(tmp_path, n=12, n_pairs=15)
    out = tmp_path / "spps"
    pairmine.export(s.pairs, out, shard_size=5)
    header = header_of(out)
    assert header["license"] == "other" and header["license_name"]
    assert "--license" in (out / "README.md").read_text()  # the note
    facts = header["pairmine"]
    assert facts["encoder"]["spec"] == "test:random"
    assert facts["band"] == [0.97, 0.99]
    assert facts["subset"]["seed"] == 0
    assert facts["counts"]["pairs"] == 15
    labels = pq.read_table(out / "spps.parquet").to_pydict()
    same = sum(a == b for a, b in zip(labels["label_a"], labels["label_b"], strict=True))
    assert facts["pair_accuracy"]["accuracy"] == pytest.approx(same / 15)
    assert facts["pairmine_version"] == pairmine.__version__
    assert st.open_export(out).manifest.extra["card"]["license"] == "other"

    # a curated store: the card says how it was made, and the license given
    pairs_from_labels(s.emb, tmp_path / "cur", per_class=2, seed=7)
    pairmine.export(tmp_path / "cur", tmp_path / "spps-cur", license="cc-by-4.0")
    header = header_of(tmp_path / "spps-cur")
    assert header["license"] == "cc-by-4.0" and "license_name" not in header
    assert header["pairmine"]["curation"]["method"] == "labels"
    assert header["pairmine"]["curation"]["seed"] == 7
    assert header["pairmine"]["pair_accuracy"]["accuracy"] == 1.0
    with pytest.raises(ConfigError, match="--license"):
        pairmine.export(s.pairs, tmp_path / "bad", license="a: b")


def test_a_parquet_export_has_a_card_too(tmp_path: Path) -> None:
    s = make_stores(tmp_path, n=12, n_pairs=15)
    out = tmp_path / "pq"
    pairmine.export(s.pairs, out, fmt="parquet", combined=True)
    header = header_of(out)
    assert {c["config_name"]: c["data_files"][0]["path"] for c in header["configs"]} == \
        {"pairs": ["spps.parquet"], "images": ["images.parquet"]}
    pairmine.verify(out)


def edit_header(out: Path, change: Any) -> None:
    text = (out / "README.md").read_text()
    end = text.index("\n---\n", 3)
    header = yaml.safe_load(text[4:end])
    change(header)
    (out / "README.md").write_text("---\n" + yaml.safe_dump(header, sort_keys=False) +
                                   text[end + 1:])


@pytest.mark.parametrize(("change", "message"), [
    (lambda h: h["dataset_info"][0]["features"].pop(0), "do not declare the export's members"),
    (lambda h: h["configs"][0]["data_files"][0]["path"].pop(), "lists 2 file"),
    (lambda h: h["configs"][0]["data_files"][0]["path"].append("shards/nope.tar"),
     "names missing files"),
    (lambda h: h["pairmine"]["counts"].update(pairs=14), "counts 14 pairs"),
    (lambda h: h.pop("license"), "declares no license"),
])
def test_verify_checks_the_card_against_the_data(tmp_path: Path, change: Any,
                                                 message: str) -> None:
    s = make_stores(tmp_path, n=12, n_pairs=15)
    out = tmp_path / "spps"
    pairmine.export(s.pairs, out, shard_size=5)
    pairmine.verify(out)
    edit_header(out, change)
    with pytest.raises(StoreError, match=message):
        pairmine.verify(out)


def test_verify_reports_a_deleted_card(tmp_path: Path) -> None:
    s = make_stores(tmp_path, n=12, n_pairs=15)
    out = tmp_path / "spps"
    pairmine.export(s.pairs, out, shard_size=5)
    (out / "README.md").unlink()
    with pytest.raises(StoreError, match=r"README.md .* is missing"):
        pairmine.verify(out)
