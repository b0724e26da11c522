"""The export store's contract (pairmine.stores.export): the typed manifest round-trips every
manifest `pairmine export` writes, a damaged manifest or index is one StoreError that names the
file and says what to do, and the shard index locates every member exactly where a plain
tarfile scan of the real shards finds it."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_export import make_stores

from pairmine import stores
from pairmine.errors import StoreError
from pairmine.export import export
from pairmine.export import layout as lay
from pairmine.stores.export import (
    EXPORT_FORMAT,
    KIND_IMAGE,
    KIND_PAIR,
    ExportManifest,
    open_export,
    shard_tar,
)

RECREATE = "pairmine export PAIRS OUT --overwrite"

# (format, combined) → the export folder's name
KINDS = {("webdataset", True): "wds-combined", ("webdataset", False): "wds",
         ("parquet", True): "pq-combined", ("parquet", False): "pq"}


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real exports of both formats, combined and not, from 12 images and 15 pairs (a skipped
    image in one more, so the manifest's ``skipped`` records are exercised too). Read only."""
    root = tmp_path_factory.mktemp("exports")
    s = make_stores(root)
    out = {name: export(s.pairs, root / name, fmt=fmt, combined=combined, shard_size=4).path
           for (fmt, combined), name in KINDS.items()}
    s.image_of(s.pair_list[0][1]).unlink()
    out["skipped"] = export(s.pairs, root / "skipped", combined=True, shard_size=5,
                            skip_missing=True).path
    return out


def _keys(obj: Any) -> Any:
    """Every dict's keys, in order, recursively: equal dicts with another key order differ."""
    if isinstance(obj, dict):
        return [(k, _keys(v)) for k, v in obj.items()]
    if isinstance(obj, list):
        return [_keys(v) for v in obj]
    return None


# ---------------------------------------------------------------------------------------------
# the manifest


@pytest.mark.parametrize("name", [*KINDS.values(), "skipped"])
def test_manifest_round_trips_exactly(exports: dict[str, Path], name: str) -> None:
    text = (exports[name] / stores.MANIFEST).read_text(encoding="utf-8")
    obj = json.loads(text)
    manifest = ExportManifest.from_json(obj, exports[name])
    again = manifest.to_json()
    assert again == obj and _keys(again) == _keys(obj)
    assert json.dumps(again, indent=2) + "\n" == text  # the very bytes the writer wrote
    assert ExportManifest.from_json(again, exports[name]) == manifest


def test_manifest_is_typed(exports: dict[str, Path]) -> None:
    wds = open_export(exports["wds-combined"]).manifest
    assert wds.export_format == "webdataset" and wds.config.combined and wds.config.shuffle
    assert wds.counts.samples == 27 == sum(s.samples for s in wds.shards)
    assert [s.tar for s in wds.shards] == [shard_tar(i) for i in range(len(wds.shards))]
    assert set(wds.files) == {stores.SPPS_FILE, stores.IMAGES_FILE}
    assert wds.source_kind == "folder" and wds.class_names == ("cat", "dog", "emu")
    pq_only = open_export(exports["pq"]).manifest
    assert pq_only.shards == () and pq_only.config.max_shard_bytes is None
    assert pq_only.counts.bytes == 0 and set(pq_only.files) == {stores.SPPS_FILE}
    skipped = open_export(exports["skipped"]).manifest
    assert len(skipped.skipped) == 1 and skipped.skipped[0].reason
    assert skipped.counts.skipped_pairs > 0


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(obj: dict[str, Any]) -> None:
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value
    return change


def _drop(path: list[Any]) -> Callable[[dict[str, Any]], None]:
    def change(obj: dict[str, Any]) -> None:
        for key in path[:-1]:
            obj = obj[key]
        del obj[path[-1]]
    return change


@pytest.mark.parametrize(("change", "reason"), [
    (_drop(["counts"]), "'counts' is missing"),
    (_set(["counts", "samples"], "27"), "'samples' is missing or not int"),
    (_set(["counts", "pairs"], -1), "negative"),
    (_set(["counts", "samples"], 26), "are not"),
    (_set(["config", "combined"], 1), "'combined' is missing or not bool"),
    (_set(["shards", 0, "tar"], "../elsewhere.tar"), "not a path inside the export"),
    (_set(["shards", 0, "tar"], "/abs/spps-000000.tar"), "not a path inside the export"),
    (_drop(["shards", 1, "index_sha256"]), "shard record 1: 'index_sha256'"),
    (_set(["shards", 0, "bytes"], 7), "the shard records hold"),
    (_set(["shards"], {"tar": "x"}), "'shards' is missing or not list"),
    (_drop(["files", "spps.parquet"]), "lists no spps.parquet"),
    (_set(["files", "images.parquet", "rows"], None), "'rows' is missing"),
    (_drop(["inputs", "embeddings"]), "inputs: 'embeddings'"),
    (_set(["source"], {"spec": "x"}), "names no source kind"),
    (_set(["class_names"], [1, 2]), "'class_names'"),
    (_set(["version"], "1"), "no format version"),  # read_manifest's own check
])
def test_damaged_manifest_is_one_store_error(exports: dict[str, Path], tmp_path: Path,
                                             change: Callable[[dict[str, Any]], None],
                                             reason: str) -> None:
    copy = tmp_path / "spps"
    shutil.copytree(exports["wds-combined"], copy)
    obj = json.loads((copy / stores.MANIFEST).read_text(encoding="utf-8"))
    change(obj)
    (copy / stores.MANIFEST).write_text(json.dumps(obj), encoding="utf-8")
    with pytest.raises(StoreError) as err:
        open_export(copy)
    assert err.value.message.startswith(f"store {copy} is damaged: manifest.json: ")
    assert reason in err.value.message
    assert err.value.hint is not None and RECREATE in err.value.hint


def test_unknown_keys_survive_the_round_trip(exports: dict[str, Path]) -> None:
    obj = json.loads((exports["pq"] / stores.MANIFEST).read_text(encoding="utf-8"))
    obj["zz_written_by_a_plugin"] = {"n": 1}
    assert ExportManifest.from_json(obj, exports["pq"]).to_json() == obj


def test_other_stores_are_not_exports(tmp_path: Path) -> None:
    s = make_stores(tmp_path)
    for store, kind in ((s.pairs, stores.PAIRS_FORMAT), (s.emb, stores.EMBEDDINGS_FORMAT)):
        with pytest.raises(StoreError, match=f"holds a '{kind}' store, not an export"):
            open_export(store)
    with pytest.raises(StoreError, match="does not exist"):
        open_export(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# the shard index


def _tar_members(tar: Path) -> dict[str, tuple[int, int]]:
    with tarfile.open(tar, "r:") as tf:
        return {m.name: (m.offset_data, m.size) for m in tf.getmembers()}


@pytest.mark.parametrize("name", ["wds-combined", "wds", "skipped"])
def test_shard_index_locates_every_member_as_tarfile_finds_it(exports: dict[str, Path],
                                                              name: str) -> None:
    exp = open_export(exports[name])
    index = exp.index
    assert len(index) == exp.manifest.counts.samples
    scanned = {number: _tar_members(path) for number, path in enumerate(exp.tar_paths())}
    seen: set[tuple[int, str]] = set()
    for row in index.table.to_pylist():
        members = scanned[row["shard"]]
        named = [(f"{row['key']}.{row['name_a']}", "a"), (f"{row['key']}.{lay.JSON}", "json")]
        if row["kind"] == KIND_PAIR:
            named.append((f"{row['key']}.{row['name_b']}", "b"))
            assert row["name_a"].startswith(lay.ANCHOR) and row["name_b"].startswith(
                lay.POSITIVE)
        else:
            assert row["kind"] == KIND_IMAGE and row["b"] is None
            assert row["name_a"].startswith(lay.IMAGE)
        for member, side in named:
            assert members[member] == (row[f"offset_{side}"], row[f"size_{side}"])
            seen.add((row["shard"], member))
    # the index names every member of every tar, and nothing else
    assert seen == {(n, m) for n, found in scanned.items() for m in found}
    # samples in shard order, then tar order
    order = [(row["shard"], row["offset"]) for row in index.table.to_pylist()]
    assert order == sorted(order)


def test_shard_index_selects_kinds_and_reads_bytes(exports: dict[str, Path]) -> None:
    exp = open_export(exports["wds-combined"])
    pairs, images = exp.index.of_kinds([KIND_PAIR]), exp.index.of_kinds([KIND_IMAGE])
    assert (len(pairs), len(images)) == (15, 12)
    assert set(pairs.values("kind")) == {KIND_PAIR}
    assert pairs.numbers("b").min() >= 0 and set(images.numbers("b").tolist()) == {-1}
    row = pairs.table.slice(3, 1).to_pylist()[0]
    with open(exp.path / exp.manifest.shards[row["shard"]].tar, "rb") as fh:
        fh.seek(row["offset_b"])
        assert hashlib.sha256(fh.read(row["size_b"])).hexdigest() == row["sha256_b"]


def test_parquet_export_has_tables_and_no_index(exports: dict[str, Path]) -> None:
    exp = open_export(exports["pq-combined"])
    assert not exp.has_shards and len(exp.index) == 0 and exp.tar_paths() == []
    assert exp.pairs().num_rows == 15 and exp.pairs().column("shard").null_count == 15
    images = exp.images()
    assert images is not None and images.num_rows == 12
    assert open_export(exports["pq"]).images() is None


@pytest.mark.parametrize(("damage", "reason"), [
    ("missing", "spps-000001.parquet: missing"),
    ("garbage", "spps-000001.parquet: not a Parquet file"),
    ("rows", "spps-000001.parquet: 3 samples, the manifest says 4"),
    ("kind", "spps-000001.parquet: a sample kind other than pair or image"),
])
def test_damaged_index_is_one_store_error(exports: dict[str, Path], tmp_path: Path,
                                          damage: str, reason: str) -> None:
    copy = tmp_path / "spps"
    shutil.copytree(exports["wds-combined"], copy)
    index = copy / lay.shard_index(1)
    table = pq.read_table(index)
    if damage == "missing":
        index.unlink()
    elif damage == "garbage":
        index.write_bytes(b"not parquet")
    elif damage == "rows":
        pq.write_table(table.slice(0, 3), index)
    else:
        kinds = ["video", *table.column("kind").to_pylist()[1:]]
        pq.write_table(table.set_column(1, "kind", pa.array(kinds, pa.string())), index)
    exp = open_export(copy)  # the manifest is fine: the index is read when first used
    with pytest.raises(StoreError) as err:
        exp.index  # noqa: B018
    assert f"store {copy} is damaged: shards/{reason}" in err.value.message
    assert err.value.hint is not None and RECREATE in err.value.hint


def test_damaged_table_is_one_store_error(exports: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "spps"
    shutil.copytree(exports["pq-combined"], copy)
    table = pq.read_table(copy / stores.IMAGES_FILE)
    pq.write_table(table.slice(0, 5), copy / stores.IMAGES_FILE)
    with pytest.raises(StoreError, match=r"images\.parquet: 5 rows, the manifest says 12"):
        open_export(copy).images()


# ---------------------------------------------------------------------------------------------
# one contract: the writer's layout module re-exports the store's names


def test_the_writer_uses_the_store_contract() -> None:
    from pairmine.stores import export as contract

    for name in ("SPPS_FILE", "IMAGES_FILE", "SHARDS_DIR", "KIND_PAIR", "KIND_IMAGE", "ANCHOR",
                 "POSITIVE", "IMAGE", "JSON", "INDEX_SCHEMA", "SPPS_SCHEMA", "IMAGES_SCHEMA",
                 "shard_tar", "shard_index", "pair_key", "image_key"):
        assert getattr(lay, name) is getattr(contract, name), name
    assert stores.EXPORT_FORMAT == EXPORT_FORMAT == ExportManifest.format
