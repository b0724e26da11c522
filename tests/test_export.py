"""`pairmine export` / `pairmine verify`: real JPEG/PNG files, stores built by hand, real tars.

The embeddings and pairs stores are written here with the store helpers (the embed and
match stages are tested elsewhere); their meta rows come from the real source kinds, so the
export reads the originals exactly as it would after `pairmine embed`.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pairmine import stores as st
from pairmine.cli import cli
from pairmine.errors import ConfigError, SourceError, StoreError
from pairmine.export import export, verify

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR_TEST_TGZ = SHARED_DATA / "cifar10-test-jpeg.tar.gz"


# ---------------------------------------------------------------------------------------------
# building stores by hand


def write_images(root: Path, n: int, *, png_every: int = 0, size: tuple[int, int] = (40, 30),
                 classes: Sequence[str] = ("cat", "dog", "emu")) -> list[Path]:
    """``n`` distinct random images over class folders; every ``png_every``-th one a PNG."""
    from PIL import Image

    paths = []
    for i in range(n):
        rng = np.random.default_rng(1000 + i)
        arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        is_png = png_every > 0 and i % png_every == 0
        path = root / classes[i % len(classes)] / f"{i:04d}.{'png' if is_png else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr, "RGB").save(path, format="PNG" if is_png else "JPEG", quality=90)
        paths.append(path)
    return paths


def build_embeddings(source: str | Path, out: Path, *, dim: int = 8, seed: int = 0) -> Path:
    """An embeddings store over a real source: meta from the source kind's refs, sha256 of the
    bytes it reads, random unit vectors (export never looks at them)."""
    from pairmine.sources import open_source

    src = open_source(str(source))
    refs = src.refs()
    n = refs.num_rows
    sha = [hashlib.sha256(src.read(i)).hexdigest() for i in range(n)]
    meta = pa.table({"id": np.arange(n, dtype=np.int64), "key": refs.column("key"),
                     "source": refs.column("source"), "member": refs.column("member"),
                     "label": refs.column("label"), "sha256": sha}, schema=st.META_SCHEMA())
    vec = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    out.mkdir(parents=True)
    st.save_npy_atomic(out / "emb" / "emb-00000.npy", vec.astype(np.float16))
    st.write_parquet_atomic(out / "meta" / "meta-00000.parquet", meta)
    st.finish_store(out, {
        "format": st.EMBEDDINGS_FORMAT, "count": n, "dim": dim, "dtype": "float16",
        "shards": [{"emb": "emb/emb-00000.npy", "meta": "meta/meta-00000.parquet", "rows": n,
                    "id_start": 0}],
        "source": {"kind": src.kind, "spec": str(Path(source).resolve()), **src.describe(),
                   "class_names": src.class_names()},
        "encoder": {"spec": "test:random"},
    })
    return out


def build_pairs(emb: Path, out: Path, pairs: Sequence[tuple[int, int]], *,
                shards: int = 1) -> Path:
    """A pairs store holding ``pairs`` (deliberately not sorted), split over ``shards``."""
    rng = np.random.default_rng(7)
    n = len(st.open_embeddings(emb))
    a = np.array([min(p) for p in pairs], dtype=np.int64)
    b = np.array([max(p) for p in pairs], dtype=np.int64)
    score = rng.uniform(0.97, 0.99, len(pairs)).astype(np.float32)
    out.mkdir(parents=True)
    names = []
    for k, part in enumerate(np.array_split(np.arange(len(pairs))[::-1], shards)):
        name = f"pairs/pairs-{k:05d}.parquet"
        st.write_parquet_atomic(out / name, pa.table(
            {"a": a[part], "b": b[part], "score": score[part]}, schema=st.PAIRS_SCHEMA()))
        names.append(name)
    st.finish_store(out, {"format": st.PAIRS_FORMAT,
                           "inputs": {"embeddings": st.input_record(emb)},
                           "shards": names, "min": 0.97, "max": 0.99, "count": len(pairs),
                           "subset": st.SubsetRecord(st.SUBSET_FILE, n, n, 0, None,
                                                     "subset").to_json()})
    st.write_parquet_atomic(out / st.SUBSET_FILE, pa.table({"id": pa.array(range(n),
                                                                           pa.int64())}))
    return out


def random_pairs(n: int, count: int, seed: int = 3) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, int]] = set()
    while len(seen) < count:
        i, j = (int(x) for x in rng.choice(n, 2, replace=False))
        seen.add((min(i, j), max(i, j)))
    return sorted(seen, key=lambda p: (p[1], p[0]))


@dataclass
class Stores:
    root: Path
    images: list[Path]
    emb: Path
    pairs: Path
    pair_list: list[tuple[int, int]]

    def image_of(self, image_id: int) -> Path:
        key = str(st.open_embeddings(self.emb).meta.column("key")[image_id].as_py())
        return self.root / "images" / key


def make_stores(root: Path, n: int = 12, n_pairs: int = 15, *, png_every: int = 4,
                pair_shards: int = 2) -> Stores:
    images = write_images(root / "images", n, png_every=png_every)
    emb = build_embeddings(root / "images", root / "emb")
    pair_list = random_pairs(n, n_pairs)
    pairs = build_pairs(emb, root / "pairs", pair_list, shards=pair_shards)
    return Stores(root=root, images=images, emb=emb, pairs=pairs, pair_list=pair_list)


@pytest.fixture
def stores(tmp_path: Path) -> Stores:
    return make_stores(tmp_path)


def tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    """key -> {suffix: bytes}, read with plain tarfile."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            key, suffix = m.name.split(".", 1)
            f = tf.extractfile(m)
            assert f is not None
            samples.setdefault(key, {})[suffix] = f.read()
    return samples


def all_samples(out: Path) -> dict[str, dict[str, bytes]]:
    merged: dict[str, dict[str, bytes]] = {}
    for tar in sorted((out / "shards").glob("*.tar")):
        merged.update(tar_samples(tar))
    return merged


def export_bytes(out: Path) -> dict[str, bytes]:
    """Every file of an export, the manifest included."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file()}


# ---------------------------------------------------------------------------------------------
# webdataset export


def test_pair_samples_hold_the_original_bytes(stores: Stores, tmp_path: Path) -> None:
    out = tmp_path / "spps"
    result = export(stores.pairs, out, shard_size=4)
    assert (result.pairs, result.images, result.samples) == (15, 0, 15)
    assert result.shards == 4 and result.resumed_shards == 0

    manifest = st.read_manifest(out, st.EXPORT_FORMAT)
    assert manifest["export_format"] == "webdataset"
    assert manifest["inputs"]["pairs"] == st.input_record(stores.pairs)
    assert [s["samples"] for s in manifest["shards"]] == [4, 4, 4, 3]
    assert manifest["counts"]["pairs_both_orders"] == 30
    for s in manifest["shards"]:
        assert st.sha256_file(out / s["tar"]) == s["sha256"]
        assert (out / s["tar"]).stat().st_size == s["bytes"]

    meta = st.open_embeddings(stores.emb).meta.to_pydict()
    ordered = sorted(stores.pair_list)
    samples = all_samples(out)
    assert len(samples) == 15
    for pair_id, (a, b) in enumerate(ordered):
        sample = samples[f"pair-{pair_id:09d}"]
        ext_a = "png" if meta["key"][a].endswith(".png") else "jpg"
        ext_b = "png" if meta["key"][b].endswith(".png") else "jpg"
        assert set(sample) == {f"anchor.{ext_a}", f"positive.{ext_b}", "json"}
        assert sample[f"anchor.{ext_a}"] == Path(meta["source"][a]).read_bytes()
        assert sample[f"positive.{ext_b}"] == Path(meta["source"][b]).read_bytes()
        info = json.loads(sample["json"])
        assert (info["kind"], info["pair_id"], info["a"], info["b"]) == ("pair", pair_id, a, b)
        assert (info["key_a"], info["key_b"]) == (meta["key"][a], meta["key"][b])
        assert (info["label_a"], info["label_b"]) == (meta["label"][a], meta["label"][b])
        assert 0.97 <= info["score"] <= 0.99

    # tar headers are fixed: reproducible, owned by nobody in particular
    with tarfile.open(out / manifest["shards"][0]["tar"]) as tf:
        for m in tf.getmembers():
            assert (m.mtime, m.uid, m.gid, m.mode) == (0, 0, 0, 0o444)

    spps = pq.read_table(out / "spps.parquet").to_pydict()
    assert spps["pair_id"] == list(range(15))
    assert list(zip(spps["a"], spps["b"], strict=True)) == ordered
    assert spps["source_a"] == [meta["source"][a] for a, _ in ordered]
    assert spps["label_b"] == [meta["label"][b] for _, b in ordered]
    assert spps["sample_key"] == [f"pair-{i:09d}" for i in range(15)]
    assert all(s.startswith("shards/spps-") and s.endswith(".tar") for s in spps["shard"])


def test_index_offsets_locate_every_member(stores: Stores, tmp_path: Path) -> None:
    out = tmp_path / "spps"
    export(stores.pairs, out, shard_size=5, combined=True)
    for index in sorted((out / "shards").glob("*.parquet")):
        tar = index.with_suffix(".tar").read_bytes()
        rows = pq.read_table(index).to_pylist()
        assert [r["position"] for r in rows] == sorted(r["position"] for r in rows)
        for r in rows:
            for side in ("a", "b", "json"):
                if r[f"offset_{side}"] is None:
                    continue
                data = tar[r[f"offset_{side}"]:r[f"offset_{side}"] + r[f"size_{side}"]]
                assert hashlib.sha256(data).hexdigest() == r[f"sha256_{side}"]
        meta = pq.read_schema(index).metadata
        assert int(meta[b"pairmine.tar_bytes"]) == len(tar)


def test_two_exports_are_identical_byte_for_byte(stores: Stores, tmp_path: Path) -> None:
    for combined in (False, True):
        first = export_bytes(export(stores.pairs, tmp_path / f"x{combined}", shard_size=6,
                                    combined=combined).path)
        second = export_bytes(export(stores.pairs, tmp_path / f"y{combined}", shard_size=6,
                                     combined=combined).path)
        assert first.keys() == second.keys()
        assert any(k.endswith(".tar") for k in first)
        for name in first:
            assert first[name] == second[name], name


def test_combined_is_every_image_plus_the_pairs_shuffled(stores: Stores, tmp_path: Path) -> None:
    out = tmp_path / "spps"
    result = export(stores.pairs, out, combined=True, seed=5, shard_size=7)
    assert (result.images, result.pairs, result.samples) == (12, 15, 27)
    samples = all_samples(out)
    meta = st.open_embeddings(stores.emb).meta.to_pydict()
    singles = {k: v for k, v in samples.items() if k.startswith("image-")}
    assert len(singles) == 12
    for key, members in singles.items():
        image_id = int(key.split("-")[1])
        ext = "png" if meta["key"][image_id].endswith(".png") else "jpg"
        assert members[f"image.{ext}"] == Path(meta["source"][image_id]).read_bytes()
        assert json.loads(members["json"]) == {"kind": "image", "id": image_id,
                                               "key": meta["key"][image_id],
                                               "label": meta["label"][image_id]}
    # shuffled: images and pairs interleave, in an order fixed by the seed
    kinds = [r["kind"] for p in sorted((out / "shards").glob("*.parquet"))
             for r in pq.read_table(p, columns=["kind"]).to_pylist()]
    assert kinds != sorted(kinds) and kinds != sorted(kinds, reverse=True)
    other = export(stores.pairs, tmp_path / "seed6", combined=True, seed=6, shard_size=7)
    kinds6 = [r["kind"] for p in sorted((other.path / "shards").glob("*.parquet"))
              for r in pq.read_table(p, columns=["kind"]).to_pylist()]
    assert kinds6 != kinds
    images = pq.read_table(out / "images.parquet").to_pydict()
    assert images["id"] == list(range(12)) and images["key"] == meta["key"]
    assert set(images["sample_key"]) == set(singles)


def test_max_shard_bytes_bounds_every_tar(tmp_path: Path) -> None:
    s = make_stores(tmp_path, n=10, n_pairs=20, png_every=0)
    out = tmp_path / "spps"
    limit = 40 * 1024
    result = export(s.pairs, out, max_shard_bytes=limit)
    sizes = [p.stat().st_size for p in sorted((out / "shards").glob("*.tar"))]
    assert result.shards == len(sizes) > 1
    assert all(size <= limit for size in sizes)
    assert result.pairs == 20 and result.bytes == sum(sizes)


def test_interrupted_export_resumes_into_the_same_bytes(stores: Stores, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from pairmine.export import shards

    clean = export_bytes(export(stores.pairs, tmp_path / "clean", shard_size=4,
                                combined=True).path)
    real = shards._write_shard
    calls = {"n": 0}

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(shards, "_write_shard", interrupted)
    out = tmp_path / "spps"
    with pytest.raises(KeyboardInterrupt):
        export(stores.pairs, out, shard_size=4, combined=True)
    assert not (out / "manifest.json").exists()
    assert len(list((out / "shards").glob("*.parquet"))) == 2
    with pytest.raises(StoreError, match="incomplete"):
        verify(out)
    # options that would give other shards are refused, not mixed in
    with pytest.raises(StoreError, match="shard_size"):
        export(stores.pairs, out, shard_size=5, combined=True)
    monkeypatch.setattr(shards, "_write_shard", real)
    # leftovers of a killed write and of an older, longer run are not part of the export
    (out / "shards" / ".spps-000002.tar.x1y2.tmp").write_bytes(b"half a tar")
    (out / "shards" / "spps-000099.parquet").write_bytes(b"stale")
    result = export(stores.pairs, out, shard_size=4, combined=True)
    assert result.resumed_shards == 2 and result.samples == 27
    assert export_bytes(out) == clean


def test_a_complete_export_is_only_replaced_with_overwrite(stores: Stores,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "spps"
    export(stores.pairs, out)
    with pytest.raises(StoreError, match="--overwrite"):
        export(stores.pairs, out)
    assert export(stores.pairs, out, overwrite=True, fmt="parquet").format == "parquet"
    assert not (out / "shards").exists()


# ---------------------------------------------------------------------------------------------
# bad input


def test_changed_and_vanished_sources_are_listed(stores: Stores, tmp_path: Path) -> None:
    gone, changed = stores.pair_list[0][0], stores.pair_list[1][1]
    gone_path, changed_path = stores.image_of(gone), stores.image_of(changed)
    gone_path.unlink()
    changed_path.write_bytes(changed_path.read_bytes() + b"\0")
    out = tmp_path / "spps"
    with pytest.raises(SourceError) as err:
        export(stores.pairs, out, shard_size=3)
    message = str(err.value)
    # one short line: the counts, the first image, the fixes; every image in problems.json
    assert "1 source image(s) are gone and 1 changed" in message
    assert "--skip-missing" in message and "--image-root" in message
    assert (str(gone_path) in message) != (str(changed_path) in message)
    assert not (out / "manifest.json").exists()
    listing = json.loads((out / ".partial" / "problems.json").read_text())
    assert sorted(p["id"] for p in listing) == sorted([gone, changed])

    # the same run with --skip-missing resumes and leaves them out, listed
    result = export(stores.pairs, out, shard_size=3, skip_missing=True)
    bad = {gone, changed}
    expected = [p for p in sorted(stores.pair_list) if not bad & set(p)]
    assert result.pairs == len(expected)
    assert result.skipped_pairs == 15 - len(expected)
    assert sorted(p.id for p in result.skipped) == sorted(bad)
    manifest = st.read_manifest(out, st.EXPORT_FORMAT)
    assert sorted(p["id"] for p in manifest["skipped"]) == sorted(bad)
    assert {p["reason"] for p in manifest["skipped"]} == {"missing", "changed"}
    spps = pq.read_table(out / "spps.parquet").to_pydict()
    assert list(zip(spps["a"], spps["b"], strict=True)) == expected
    verify(out)


def test_skip_missing_in_a_combined_export(stores: Stores, tmp_path: Path) -> None:
    stores.image_of(5).unlink()
    result = export(stores.pairs, tmp_path / "spps", combined=True, skip_missing=True)
    assert result.images == 11 and result.skipped_images == 1
    assert [p.id for p in result.skipped] == [5]
    assert "image-000000005" not in all_samples(result.path)
    # the pairs view leaves out the same pairs: verify holds it to the combined shards
    view = st.open_export(result.path).manifest.pairs_view
    assert sum(s.pairs for s in view) == result.pairs < 15
    verify(result.path)


def test_embeddings_store_gone(stores: Stores, tmp_path: Path) -> None:
    shutil.rmtree(stores.emb)
    with pytest.raises(StoreError, match=f"embeddings store {stores.emb.resolve()}.* is gone"):
        export(stores.pairs, tmp_path / "spps")
    assert not (tmp_path / "spps").exists()


def test_embeddings_store_changed_since_match(stores: Stores, tmp_path: Path) -> None:
    manifest = st.read_json(stores.emb / "manifest.json")
    manifest["encoder"] = {"spec": "something else"}
    st.write_json_atomic(stores.emb / "manifest.json", manifest)
    with pytest.raises(StoreError, match="changed after"):
        export(stores.pairs, tmp_path / "spps")


def test_pairs_that_do_not_fit_the_embeddings_store(stores: Stores, tmp_path: Path) -> None:
    bad = build_pairs(stores.emb, tmp_path / "bad", [(0, 1), (3, 99)])
    with pytest.raises(StoreError, match=r"\(3, 99\)"):
        export(bad, tmp_path / "spps")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"fmt": "zip"}, "unknown export format"),
    ({"shard_size": 0}, "shard-size"),
    ({"max_shard_bytes": 100}, "too small"),
    ({"fmt": "parquet", "shuffle": True}, "shuffle"),
])
def test_bad_options(stores: Stores, tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        export(stores.pairs, tmp_path / "spps", **kwargs)


# ---------------------------------------------------------------------------------------------
# parquet export


def test_parquet_export_points_at_the_originals(stores: Stores, tmp_path: Path) -> None:
    out = tmp_path / "spps"
    result = export(stores.pairs, out, fmt="parquet", combined=True)
    assert (result.pairs, result.images, result.shards) == (15, 12, 0)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "images.parquet",
                                                     "manifest.json", "spps.parquet"]
    spps = pq.read_table(out / "spps.parquet").to_pydict()
    assert list(zip(spps["a"], spps["b"], strict=True)) == sorted(stores.pair_list)
    for src, sha in zip(spps["source_a"] + spps["source_b"],
                        spps["sha256_a"] + spps["sha256_b"], strict=True):
        assert hashlib.sha256(Path(src).read_bytes()).hexdigest() == sha
    assert spps["shard"] == [None] * 15
    checked = verify(out)
    assert checked.sources == 12 and checked.samples == 27
    stores.image_of(stores.pair_list[0][0]).write_bytes(b"not the same image")
    with pytest.raises(StoreError, match="changed"):
        verify(out)


# ---------------------------------------------------------------------------------------------
# verify


def test_verify_checks_every_byte(stores: Stores, tmp_path: Path) -> None:
    out = tmp_path / "spps"
    export(stores.pairs, out, shard_size=4, combined=True)
    result = verify(out)
    assert (result.shards, result.samples, result.pairs, result.images) == (7, 27, 15, 12)
    # every member hashed: the combined shards and the pairs view (pairs/shards)
    assert result.members == 15 * 3 + 12 * 2 + 15 * 3 and result.embeddings_checked

    tar = out / "shards" / "spps-000001.tar"
    row = pq.read_table(out / "shards" / "spps-000001.parquet").to_pylist()[1]
    original = tar.read_bytes()
    flipped = bytearray(original)
    flipped[row["offset_a"] + 10] ^= 0xFF
    tar.write_bytes(bytes(flipped))
    with pytest.raises(StoreError) as err:
        verify(out)
    assert f"{row['key']}.{row['name_a']} does not match its sha256" in str(err.value)
    assert "spps-000001.tar does not match the manifest" in str(err.value)

    tar.write_bytes(original[:-20000] if len(original) > 30000 else original[:2048])
    with pytest.raises(StoreError, match="spps-000001"):
        verify(out)
    tar.write_bytes(original)
    verify(out)
    (out / "shards" / "spps-000002.parquet").unlink()
    with pytest.raises(StoreError, match=r"spps-000002\.parquet is missing"):
        verify(out)


def test_verify_without_the_embeddings_store(stores: Stores, tmp_path: Path) -> None:
    out = tmp_path / "spps"
    export(stores.pairs, out)
    shutil.rmtree(stores.emb)
    result = verify(out)  # a shard export is self-contained
    assert result.pairs == 15 and not result.embeddings_checked


def test_verify_rejects_what_is_not_an_export(stores: Stores) -> None:
    with pytest.raises(StoreError, match="pairmine/pairs"):
        verify(stores.pairs)


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_export_and_verify(stores: Stores, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "spps"
    res = runner.invoke(cli, ["export", str(stores.pairs), str(out), "--combined",
                              "--shard-size", "5", "--max-shard-bytes", "64K"])
    assert res.exit_code == 0, res.output
    assert "samples" in res.output and "27" in res.output
    assert st.read_manifest(out, st.EXPORT_FORMAT)["config"]["max_shard_bytes"] == 65536
    res = runner.invoke(cli, ["verify", str(out)])
    assert res.exit_code == 0, res.output
    assert "verified" in res.output

    (out / "spps.parquet").write_bytes(b"garbage")
    res = runner.invoke(cli, ["verify", str(out)])
    assert res.exit_code == 1
    assert "spps.parquet does not match" in res.output and "Traceback" not in res.output

    res = runner.invoke(cli, ["export", str(stores.pairs), str(out)])
    assert res.exit_code == 1 and "--overwrite" in res.output

    stores.image_of(stores.pair_list[0][1]).unlink()
    res = runner.invoke(cli, ["export", str(stores.pairs), str(tmp_path / "other")])
    assert res.exit_code == 1 and "--skip-missing" in res.output
    res = runner.invoke(cli, ["export", str(stores.pairs), str(tmp_path / "other"),
                              "--skip-missing"])
    assert res.exit_code == 0, res.output
    assert "left out" in res.output

    res = runner.invoke(cli, ["export", str(stores.pairs), str(tmp_path / "x"),
                              "--max-shard-bytes", "lots"])
    assert res.exit_code == 2 and "not a size" in res.output


# ---------------------------------------------------------------------------------------------
# interop: plain webdataset readers


def _identity(batch: Any) -> Any:
    return batch


@pytest.fixture
def jpeg_export(tmp_path: Path) -> tuple[Stores, Path]:
    s = make_stores(tmp_path, n=16, n_pairs=24, png_every=0)
    out = export(s.pairs, tmp_path / "spps", shard_size=4).path
    return s, out


def test_webdataset_reads_pairs_in_a_multiworker_dataloader(
        jpeg_export: tuple[Stores, Path]) -> None:
    import torch
    import webdataset as wds
    from PIL import Image

    s, out = jpeg_export
    urls = [str(p) for p in sorted((out / "shards").glob("*.tar"))]
    assert len(urls) == 6
    meta = st.open_embeddings(s.emb).meta.to_pydict()

    decoded = (wds.WebDataset(urls, shardshuffle=False, empty_check=False)
               .decode("pil").to_tuple("anchor.jpg", "positive.jpg", "json"))
    loader = torch.utils.data.DataLoader(decoded, batch_size=None, num_workers=2,
                                         collate_fn=_identity)
    seen = []
    for anchor, positive, info in loader:
        assert isinstance(anchor, Image.Image) and anchor.size == (40, 30)
        assert isinstance(positive, Image.Image)
        seen.append((info["a"], info["b"]))
    assert sorted(seen) == sorted(s.pair_list)

    raw = wds.WebDataset(urls, shardshuffle=False, empty_check=False).to_tuple(
        "anchor.jpg", "positive.jpg", "json")
    loader = torch.utils.data.DataLoader(raw, batch_size=None, num_workers=2,
                                         collate_fn=_identity)
    n = 0
    for anchor_bytes, positive_bytes, info_bytes in loader:
        info = json.loads(info_bytes)
        assert anchor_bytes == Path(meta["source"][info["a"]]).read_bytes()
        assert positive_bytes == Path(meta["source"][info["b"]]).read_bytes()
        n += 1
    assert n == 24


def test_split_by_node_gives_each_rank_its_own_shards(jpeg_export: tuple[Stores, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """webdataset 1.0.2 takes rank and world size from RANK/WORLD_SIZE when both are set, else
    from an initialised torch.distributed, else (0, 1)."""
    import webdataset as wds

    _, out = jpeg_export
    urls = [str(p) for p in sorted((out / "shards").glob("*.tar"))]

    def keys() -> list[str]:
        ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node,
                            empty_check=False)
        return [sample["__key__"] for sample in ds]

    everything = keys()  # not distributed: one node gets all
    assert len(everything) == 24
    per_rank = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        per_rank.append(keys())
    assert len(per_rank[0]) == len(per_rank[1]) == 12
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(everything)
    # without a node splitter webdataset refuses to run distributed
    with pytest.raises(ValueError, match="nodesplitter"):
        list(wds.WebDataset(urls, shardshuffle=False))


def test_export_from_a_webdataset_source(tmp_path: Path) -> None:
    """Images that live inside tar shards come out as the same bytes."""
    pngs = write_images(tmp_path / "loose", 6, png_every=2)
    src = tmp_path / "src.tar"
    with tarfile.open(src, "w") as tf:
        for i, path in enumerate(pngs):
            for name, data in ((f"s{i:03d}.{path.suffix[1:]}", path.read_bytes()),
                               (f"s{i:03d}.cls", str(i % 2).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    emb = build_embeddings(src, tmp_path / "emb")
    assert st.read_manifest(emb, st.EMBEDDINGS_FORMAT)["source"]["kind"] == "webdataset"
    pairs = build_pairs(emb, tmp_path / "pairs", [(0, 1), (2, 5), (3, 4)])
    out = export(pairs, tmp_path / "spps", combined=True).path
    samples = all_samples(out)
    assert samples["pair-000000001"]["anchor.png"] == pngs[2].read_bytes()
    assert samples["pair-000000001"]["positive.jpg"] == pngs[5].read_bytes()
    assert samples["image-000000003"]["image.jpg"] == pngs[3].read_bytes()
    assert json.loads(samples["image-000000003"]["json"])["label"] == 1
    verify(out)


def test_cifar10_test_jpegs(tmp_path: Path) -> None:
    """Real data: 300 CIFAR-10 test JPEGs from ../shared/data, exported and verified."""
    if not CIFAR_TEST_TGZ.exists():
        pytest.skip("../shared/data is not present")
    root = tmp_path / "cifar"
    with tarfile.open(CIFAR_TEST_TGZ) as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile() and m.name.endswith(".jpg")
                   and int(m.name.rsplit("/", 1)[1][:4]) < 30]
        tar.extractall(root, members=members, filter="data")
    emb = build_embeddings(root / "cifar10" / "test", tmp_path / "emb")
    pairs = build_pairs(emb, tmp_path / "pairs", random_pairs(300, 200))
    result = export(pairs, tmp_path / "spps", combined=True, shard_size=128)
    assert (result.images, result.pairs, result.shards) == (300, 200, 4)
    names = st.read_manifest(result.path, st.EXPORT_FORMAT)["class_names"]
    assert names[0] == "airplane" and len(names) == 10
    assert verify(result.path).members == 300 * 2 + 200 * 3 + 200 * 3  # + the pairs view


def test_export_and_verify_do_not_import_torch(stores: Stores, tmp_path: Path) -> None:
    """An export copies bytes: it must not pay torch's import (seconds per process; WebDataset's
    own tar writer would bring it in)."""
    import subprocess
    import sys

    script = ("import sys, pairmine\n"
              f"pairmine.export({str(stores.pairs)!r}, {str(tmp_path / 'spps')!r}, combined=True)\n"
              f"pairmine.verify({str(tmp_path / 'spps')!r})\n"
              "print(sorted(m for m in ('torch', 'webdataset', 'faiss') if m in sys.modules))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------------------------------------
# memory independent of the embeddings store's size (issue 22)


def _scale_builder() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "export.py"
    spec = importlib.util.spec_from_file_location("bench_export", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_scale_stores


def test_export_and_verify_memory_does_not_grow_with_the_store(tmp_path: Path) -> None:
    import tracemalloc

    from pairmine import verify

    build = _scale_builder()
    peaks = []
    for rows in (8_000, 70_000):  # one embeddings shard, then two
        pairs = build(tmp_path / f"n{rows}", rows, 500, 100)
        tracemalloc.start()
        result = export(pairs, tmp_path / f"n{rows}" / "export", fmt="webdataset")
        checked = verify(tmp_path / f"n{rows}" / "export")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert result.pairs == 500 and checked.embeddings_checked and not checked.problems
    # 9x the rows: the Python heap of export + verify stays put (before: lists of every row)
    assert peaks[1] < 1.25 * peaks[0] + (1 << 20), peaks
