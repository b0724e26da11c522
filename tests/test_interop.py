"""Real clients read an export unchanged and see the same pairs.

One export is built per module through the library: ``pairmine.embed`` with the test-only
``toy:SEED`` encoder, ``pairmine.match``, ``pairmine.export(fmt="webdataset")``, over JPEGs and
PNGs, so member names differ from sample to sample (``anchor.jpg`` / ``anchor.png``). The
reference is ``spps.parquet`` read with pyarrow, each original file's bytes checked against
the sha256 it records. Each client (Hugging Face ``datasets`` streaming, DuckDB over the
Parquet files, Ray Data ``read_webdataset``, webdataset's own pipeline in a two-worker
DataLoader) must yield exactly those pairs, each once, with the original bytes, and leave every
file of the export as it was.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from test_export import write_images

import pairmine


@dataclass(frozen=True)
class Seen:
    """One pair sample as a client delivered it: its key, the pair's image keys (from the
    sample's ``json``), and the sha256 of the two image members' bytes."""

    sample_key: str
    key_a: str
    key_b: str
    sha256_a: str
    sha256_b: str


@dataclass(frozen=True)
class Export:
    path: Path
    tars: list[str]  # absolute paths, in shard order
    expected: frozenset[Seen]  # from spps.parquet
    samples_per_tar: dict[str, int]  # from the shard indexes
    member_suffixes: frozenset[str]  # "anchor.jpg", "positive.png", ... across all samples
    files: dict[str, str]  # every file of the export → its sha256, before any client ran


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256(p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def spps(tmp_path_factory: pytest.TempPathFactory) -> Export:
    root = tmp_path_factory.mktemp("interop")
    write_images(root / "images", 24, png_every=3)
    pairmine.embed(root / "images", root / "emb", encoder="toy:0", workers=0, device="cpu")
    # the toy encoder's features are all close (ReLU outputs): the top of the range holds a
    # few dozen pairs
    pairmine.match(root / "emb", root / "pairs", min_score=0.99, max_score=1.0, device="cpu")
    out = root / "spps"
    result = pairmine.export(root / "pairs", out, fmt="webdataset", shard_size=5)
    assert result.pairs >= 10 and result.shards >= 4, result  # two workers get 2+ shards each

    table = pq.read_table(out / "spps.parquet").to_pylist()
    expected = set()
    for row in table:
        for side in "ab":  # the manifest's hashes are those of the original files
            assert sha256(Path(row[f"source_{side}"]).read_bytes()) == row[f"sha256_{side}"]
        expected.add(Seen(row["sample_key"], row["key_a"], row["key_b"], row["sha256_a"],
                          row["sha256_b"]))
    assert len(expected) == len(table) == result.pairs
    manifest = json.loads((out / "manifest.json").read_text())
    tars = [str(out / shard["tar"]) for shard in manifest["shards"]]
    samples_per_tar, suffixes = {}, set()
    for shard in manifest["shards"]:
        index = pq.read_table(out / shard["index"], columns=["name_a", "name_b"]).to_pylist()
        samples_per_tar[str(out / shard["tar"])] = len(index)
        suffixes |= {name for row in index for name in row.values()}  # "anchor.jpg", ...
    assert {s.rsplit(".", 1)[1] for s in suffixes} == {"jpg", "png"}
    return Export(path=out, tars=tars, expected=frozenset(expected),
                  samples_per_tar=samples_per_tar, member_suffixes=frozenset(suffixes),
                  files=file_hashes(out))


def seen(sample_key: str, members: Mapping[str, Any], meta: Mapping[str, Any]) -> Seen:
    """``members``: member suffix → bytes, as the client names them; members a sample does
    not have may be there as None or NaN (clients fill the columns other samples have)."""
    present = {name: data for name, data in members.items() if isinstance(data, bytes)}
    anchor = [data for name, data in present.items() if name.startswith("anchor.")]
    positive = [data for name, data in present.items() if name.startswith("positive.")]
    assert len(anchor) == len(positive) == 1, (sample_key, sorted(present))
    assert meta["kind"] == "pair"
    return Seen(sample_key, meta["key_a"], meta["key_b"], sha256(anchor[0]), sha256(positive[0]))


def assert_same_pairs(spps: Export, got: list[Seen]) -> None:
    repeated = [s for s, n in Counter(got).items() if n > 1]
    assert repeated == []
    assert set(got) == spps.expected
    assert file_hashes(spps.path) == spps.files  # read unchanged: nothing written or altered


def test_hugging_face_datasets_streams_the_export(spps: Export, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets  # type: ignore[import-untyped]  # no stubs, no py.typed

    # The builder infers its columns from the first 5 samples and refuses samples whose member
    # names differ (anchor.jpg beside anchor.png); a reader of a mixed export declares every
    # member name, from the shard indexes, with undecoded image columns (bytes as stored).
    value = datasets.Value
    features = datasets.Features({
        **{suffix: datasets.Image(decode=False) for suffix in sorted(spps.member_suffixes)},
        "json": {"a": value("int64"), "b": value("int64"), "key_a": value("string"),
                 "key_b": value("string"), "kind": value("string"), "label_a": value("int64"),
                 "label_b": value("int64"), "pair_id": value("int64"),
                 "score": value("float64")},
        "__key__": value("string"), "__url__": value("string")})
    stream = datasets.load_dataset("webdataset", data_files={"train": spps.tars}, split="train",
                                   streaming=True, features=features,
                                   cache_dir=str(tmp_path / "hf-cache"))
    assert isinstance(stream, datasets.IterableDataset)
    got = []
    for row in stream:
        members = {s: row[s]["bytes"] if row[s] else None for s in spps.member_suffixes}
        got.append(seen(row["__key__"], members, row["json"]))
    assert_same_pairs(spps, got)


def test_duckdb_queries_the_parquet_manifest(spps: Export) -> None:
    import duckdb

    con = duckdb.connect()
    # each pair of spps.parquet, its sample in the shard index, and the image members' bytes
    # cut out of the tar at the offsets the index gives (blob slices are 1-based, inclusive)
    rows = con.execute("""
        SELECT s.sample_key, s.key_a, s.key_b,
               sha256(t.content[i.offset_a + 1 : i.offset_a + i.size_a]),
               sha256(t.content[i.offset_b + 1 : i.offset_b + i.size_b])
        FROM read_parquet($spps) AS s
        JOIN read_parquet($indexes) AS i ON i.key = s.sample_key AND i.pair_id = s.pair_id
        JOIN read_blob($tars) AS t ON t.filename = $root || '/' || s.shard
        ORDER BY s.pair_id
    """, {"spps": str(spps.path / "spps.parquet"),
          "indexes": [t.removesuffix(".tar") + ".parquet" for t in spps.tars],
          "tars": spps.tars, "root": str(spps.path)}).fetchall()
    assert_same_pairs(spps, [Seen(*row) for row in rows])

    per_shard = dict(con.execute(
        "SELECT $root || '/' || shard, count(*) FROM read_parquet($spps) GROUP BY shard",
        {"spps": str(spps.path / "spps.parquet"), "root": str(spps.path)}).fetchall())
    assert per_shard == spps.samples_per_tar


def test_webdataset_pipeline_in_a_two_worker_dataloader(spps: Export) -> None:
    import webdataset as wds
    from torch.utils.data import DataLoader

    # split_by_worker (the default) hands each worker whole shards
    pipeline = wds.WebDataset(spps.tars, shardshuffle=False).map(tag_worker)
    loader = DataLoader(pipeline, batch_size=None, num_workers=2, timeout=120)
    samples = list(loader)
    got = [seen(s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")
                               and k != "json"}, json.loads(s["json"])) for s in samples]
    assert_same_pairs(spps, got)
    # each shard read once in total, by one worker, and both workers read
    workers_of: dict[str, set[int]] = {}
    for s in samples:
        workers_of.setdefault(s["__url__"], set()).add(s["__worker__"])
    assert all(len(w) == 1 for w in workers_of.values()), workers_of
    assert set().union(*workers_of.values()) == {0, 1}
    assert Counter(s["__url__"] for s in samples) == spps.samples_per_tar


def tag_worker(sample: dict[str, Any]) -> dict[str, Any]:
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    assert info is not None  # runs inside a DataLoader worker
    return {**sample, "__worker__": info.id}


def test_ray_data_reads_the_webdataset_shards(spps: Export, ray_cluster: Path) -> None:
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    rows = ray.data.read_webdataset(spps.tars, decoder=None).take_all()  # members as bytes
    got = [seen(row["__key__"], {k: v for k, v in row.items() if k in spps.member_suffixes},
                json.loads(row["json"])) for row in rows]
    assert_same_pairs(spps, got)
