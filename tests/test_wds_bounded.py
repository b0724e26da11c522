"""The WebDataset source on a listing on disk: same samples as before, in memory flat in their
number (keys checked for duplicates by hash, the ref reader's tar indexes bounded)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
from test_sources import write_tar

import pairmine
from pairmine.errors import SourceError
from pairmine.sources import listing, open_source, ref_reader
from pairmine.sources import wds as wds_mod
from pairmine.sources.base import REFS_SCHEMA


def png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (6, 5), (seed % 256, (seed * 7) % 256, 40)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    """Row groups of 4 rows: a few samples span several groups, as millions span 65,536s."""
    monkeypatch.setattr(listing, "CHUNK", 4)
    monkeypatch.setattr(wds_mod, "CHUNK", 4)
    return 4


def three_shards(root: Path) -> tuple[str, list[tuple[str, str, str, int | None, bytes]]]:
    """Three shards; the samples expected, in order: (key, shard, member, label, bytes)."""
    expected: list[tuple[str, str, str, int | None, bytes]] = []
    for s in range(3):
        members: list[tuple[str, bytes]] = []
        path = root / f"part-{s}.tar"
        for i in range(5):
            key = f"s{s}/{i:03d}"
            data = png(10 * s + i)
            ext = "png" if i % 2 else "jpg"  # bytes need not match the name to be read back
            members.append((f"{key}.{ext}", data))
            label = None if i == 3 else 10 * s + i
            if label is not None:
                members.append((f"{key}.cls", f"{label}\n".encode()))
            members.append((f"{key}.json", b"{}"))
            expected.append((key, str(path), f"{key}.{ext}", label, data))
        members.append((f"s{s}/nothing.txt", b"no image"))  # a sample without an image
        members.append(("__index__", b"meta"))  # outside any sample
        write_tar(path, members)
    return str(root / "part-{0..2}.tar"), expected


def test_listing_backed_source_reads_every_sample(tmp_path: Path, small_chunks: int) -> None:
    spec, expected = three_shards(tmp_path)
    src = open_source(spec)
    assert isinstance(src, wds_mod.WebDatasetSource)
    assert len(src) == 15
    refs = src.refs_listing()
    assert isinstance(refs, listing.SpilledListing) and refs.num_rows == 15
    table = src.refs()
    assert table.schema == REFS_SCHEMA()
    assert table.column("key").to_pylist() == [e[0] for e in expected]
    assert table.column("source").to_pylist() == [e[1] for e in expected]
    assert table.column("member").to_pylist() == [e[2] for e in expected]
    assert table.column("label").to_pylist() == [e[3] for e in expected]
    assert refs.take([14, 0, 5]).column("key").to_pylist() == ["s2/004", "s0/000", "s1/000"]
    assert [src.read(i) for i in range(15)] == [e[4] for e in expected]
    assert [src.ext(i) for i in range(15)] == [e[2].rsplit(".", 1)[1] for e in expected]
    # out of order, as DataLoader workers read: each group read again as needed
    assert [src.read(i) for i in (14, 0, 9, 3)] == [expected[i][4] for i in (14, 0, 9, 3)]
    desc = src.describe()
    assert desc["samples"] == 15 and desc["shards"] == 3
    assert desc["image_exts"] == {"jpg": 9, "png": 6}
    assert desc["labelled"] == 12 and desc["labels"] is True
    assert desc["skipped_without_image"] == 3 and desc["ignored_members"] == 3
    clone = pickle.loads(pickle.dumps(src))  # a DataLoader worker's copy reads the same files
    assert [clone.read(i) for i in (13, 2)] == [expected[13][4], expected[2][4]]
    assert clone.ext(13) == src.ext(13)
    blind = open_source(spec, labels=False)
    assert blind.refs().column("label").to_pylist() == [None] * 15
    assert blind.describe()["labelled"] == 0


def test_duplicate_key_across_shards_names_both_shards(tmp_path: Path,
                                                         small_chunks: int) -> None:
    write_tar(tmp_path / "a.tar", [("x.jpg", png(1)), ("k.jpg", png(2))])
    write_tar(tmp_path / "b.tar", [(f"b{i}.jpg", png(3)) for i in range(6)])
    write_tar(tmp_path / "c.tar", [("y.jpg", png(4)), ("k.png", png(5))])
    with pytest.raises(SourceError) as exc:
        open_source(str(tmp_path / "{a,b,c}.tar"))
    assert exc.value.message == (f"sample key 'k' occurs twice: in {tmp_path / 'a.tar'} and "
                                 f"in {tmp_path / 'c.tar'}")
    # a sample without an image has a key too: it must not repeat one either
    write_tar(tmp_path / "d.tar", [("y.json", b"{}")])
    with pytest.raises(SourceError, match=r"key 'y' occurs twice: in .*c.tar and in .*d.tar"):
        open_source(f"{tmp_path / 'c.tar'}::{tmp_path / 'd.tar'}")
    # the same key twice in one shard, apart
    write_tar(tmp_path / "e.tar", [("p.jpg", png(6)), ("q.jpg", png(7)), ("p.png", png(8))])
    with pytest.raises(SourceError, match=r"key 'p' occurs twice: in .*e.tar and in .*e.tar"):
        open_source(tmp_path / "e.tar")


def test_equal_hashes_of_different_keys_are_no_duplicate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hashes only pick the keys to compare: a collision of two keys is no error."""
    write_tar(tmp_path / "a.tar", [(f"k{i}.jpg", png(i)) for i in range(4)])
    monkeypatch.setattr(wds_mod, "hash", lambda key: 7, raising=False)
    assert len(open_source(tmp_path / "a.tar")) == 4


def test_more_samples_than_a_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing, "CHUNK", 64)
    monkeypatch.setattr(wds_mod, "CHUNK", 64)
    sizes = (300, 1, 150)
    for s, n in enumerate(sizes):
        write_tar(tmp_path / f"{s}.tar", [m for i in range(n) for m in (
            (f"{s}-{i:04d}.jpg", f"img {s} {i}".encode()), (f"{s}-{i:04d}.cls", b"%d" % i))])
    src = open_source(str(tmp_path / "{0..2}.tar"))
    assert len(src) == sum(sizes) == src.refs_listing().num_rows
    with pytest.raises(IndexError):
        src.read(len(src))
    for i in (0, 63, 64, 299, 300, 301, 450):
        s, local = (0, i) if i < 300 else (1, 0) if i == 300 else (2, i - 301)
        assert src.read(i) == f"img {s} {local}".encode(), i
        assert src.refs_listing().value("label", i) == local
    meta = pq_metadata(src.refs_listing().path)
    assert meta == [64] * 7 + [451 - 7 * 64]  # row groups of CHUNK rows
    assert src.describe()["labelled"] == 451


def pq_metadata(path: str) -> list[int]:
    import pyarrow.parquet as pq

    md = pq.ParquetFile(path).metadata
    return [md.row_group(g).num_rows for g in range(md.num_row_groups)]


def test_opening_holds_memory_flat_in_the_samples(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Python lists of every key, member and ext cost over 150 bytes a sample; the listing
    costs the 8-byte hash of the duplicate check (and a shard's members while it is read)."""
    import tracemalloc

    monkeypatch.setattr(listing, "CHUNK", 512)
    monkeypatch.setattr(wds_mod, "CHUNK", 512)
    write_tar(tmp_path / "warm.tar", [("w.jpg", b"x")])
    open_source(tmp_path / "warm.tar")  # one-time costs (pyarrow's first table loads pandas)
    peaks = {}
    for n in (2_000, 16_000):
        for s in range(n // 500):  # shards of 500 samples, as img2dataset's of 10,000
            write_tar(tmp_path / f"{n}" / f"{s}.tar",
                      [(f"{s}/{i:06d}.jpg", b"x") for i in range(500)])
        tracemalloc.start()
        src = open_source(str(tmp_path / f"{n}" / f"{{0..{n // 500 - 1}}}.tar"))
        assert len(src) == n and src.read(n - 1) == b"x"
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        del src
    assert peaks[16_000] - peaks[2_000] < 30 * 14_000, peaks


def count_scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the tars whose headers are scanned from now on, in order."""
    scanned: list[str] = []
    members = wds_mod._members

    def counted(path: str) -> wds_mod.Scan:
        scanned.append(Path(path).name)
        return members(path)

    monkeypatch.setattr(wds_mod, "_members", counted)
    return scanned


def test_ref_reader_keeps_a_bounded_number_of_tar_indexes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wds_mod, "MAX_INDEXED_TARS", 2)
    scanned = count_scans(monkeypatch)
    for s in range(5):
        write_tar(tmp_path / f"{s}.tar", [(f"k{s}.jpg", b"image %d" % s)])
    read = ref_reader("webdataset")
    for s in range(5):
        assert read(str(tmp_path / f"{s}.tar"), f"k{s}.jpg") == (b"image %d" % s, "jpg")
    assert scanned == ["0.tar", "1.tar", "2.tar", "3.tar", "4.tar"]
    read(str(tmp_path / "4.tar"), "k4.jpg")  # kept
    read(str(tmp_path / "3.tar"), "k3.jpg")  # kept
    assert len(scanned) == 5
    read(str(tmp_path / "0.tar"), "k0.jpg")  # dropped: indexed again, 4.tar goes
    read(str(tmp_path / "3.tar"), "k3.jpg")
    assert scanned[5:] == ["0.tar"]
    read(str(tmp_path / "4.tar"), "k4.jpg")
    assert scanned[5:] == ["0.tar", "4.tar"]
    kept = [c for c in closure_values(read) if isinstance(c, dict)]
    assert len(kept) == 1 and list(kept[0]) == [str(tmp_path / f"{s}.tar") for s in (3, 4)]


def closure_values(fn: object) -> list[object]:
    """What a reader's closures hold, nested ones included (the cache of tar indexes)."""
    found: list[object] = []
    for cell in getattr(fn, "__closure__", None) or ():
        value = cell.cell_contents
        found.append(value)
        if callable(value) and getattr(value, "__closure__", None):
            found += closure_values(value)
    return found


def test_embed_of_a_webdataset_source_end_to_end(tmp_path: Path, small_chunks: int) -> None:
    spec, expected = three_shards(tmp_path / "wds")
    result = pairmine.embed(spec, tmp_path / "e", encoder="toy:0", workers=0, shard_size=6)
    assert result.images == 15 and result.errors == 0
    meta = pairmine.open_embeddings(tmp_path / "e").meta
    assert meta.column("key").to_pylist() == [e[0] for e in expected]
    assert meta.column("label").to_pylist() == [e[3] for e in expected]
    assert meta.column("member").to_pylist() == [e[2] for e in expected]


def test_ref_reader_bounds_its_indexes_by_members_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 3 tars of 4 images (and a json each, not indexed): a budget of 8 members keeps 2 tars
    monkeypatch.setattr(wds_mod, "MAX_INDEXED_MEMBERS", 8)
    scanned = count_scans(monkeypatch)
    for s in range(3):
        write_tar(tmp_path / f"{s}.tar", [m for i in range(4) for m in (
            (f"k{s}{i}.json", b"{}"), (f"k{s}{i}.png", b"png %d %d" % (s, i)))])
    read = ref_reader("webdataset")
    for s in (0, 1, 2, 2, 1, 0):
        for i in range(4):
            assert read(str(tmp_path / f"{s}.tar"), f"k{s}{i}.png") == (
                b"png %d %d" % (s, i), "png")
    # 2 then 1 kept while 0 was dropped for 2: only 0 is indexed twice
    assert scanned == ["0.tar", "1.tar", "2.tar", "0.tar"]
    with pytest.raises(SourceError, match="has no member"):
        read(str(tmp_path / "0.tar"), "k00.json")  # only images are indexed


def tar_places(path: str) -> dict[str, tuple[int, int]]:
    """Every member's (data offset, size), as tarfile reads them."""
    import tarfile

    with tarfile.open(path) as tf:
        return {m.name: (m.offset_data, m.size) for m in tf.getmembers()}


def test_embed_records_where_each_image_lies(tmp_path: Path, small_chunks: int) -> None:
    spec, expected = three_shards(tmp_path / "wds")
    pairmine.embed(spec, tmp_path / "e", encoder="toy:0", workers=0, shard_size=6)
    emb = pairmine.open_embeddings(tmp_path / "e")
    assert set(pairmine.stores.PLACE_COLUMNS) <= set(emb.meta_columns)
    rows = emb.meta.to_pylist()
    assert [(r["member_offset"], r["member_size"]) for r in rows] == [
        tar_places(shard)[member] for _, shard, member, _, _ in expected]
    with open(expected[7][1], "rb") as f:  # the place is the image's bytes
        f.seek(rows[7]["member_offset"])
        assert f.read(rows[7]["member_size"]) == expected[7][4]


def mined(root: Path) -> list[tuple[str, str, str, int | None, bytes]]:
    """:func:`three_shards` under ``root/wds``, embedded (``root/e``, toy encoder) and matched
    over the whole cosine range (``root/p``); the samples expected."""
    spec, expected = three_shards(root / "wds")
    pairmine.embed(spec, root / "e", encoder="toy:0", workers=0, shard_size=6)
    pairmine.match(root / "e", root / "p", min_score=-1.0, max_score=1.0)
    return expected


def test_a_recorded_place_is_read_without_indexing_the_tar(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tar(tmp_path / "0.tar", [("a.json", b"{}"), ("a.png", b"png a"), ("b.jpg", b"jpg b")])
    places = tar_places(str(tmp_path / "0.tar"))
    scanned = count_scans(monkeypatch)
    read = ref_reader("webdataset")
    assert read(str(tmp_path / "0.tar"), "b.jpg", place=places["b.jpg"]) == (b"jpg b", "jpg")
    assert read(str(tmp_path / "0.tar"), "a.png", place=places["a.png"]) == (b"png a", "png")
    assert scanned == []
    # a place that does not hold that member (another member's, a shifted one, past the end):
    # the header check refuses it and the tar is indexed as without a place
    assert read(str(tmp_path / "0.tar"), "b.jpg", place=places["a.png"]) == (b"jpg b", "jpg")
    assert scanned == ["0.tar"]
    for wrong in [(places["b.jpg"][0] + 1, 5), (places["b.jpg"][0], 6), (10 ** 9, 5), (0, 5)]:
        assert read(str(tmp_path / "0.tar"), "b.jpg", place=wrong) == (b"jpg b", "jpg")


def test_a_rewritten_shard_is_read_by_name_again(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "0.tar"
    write_tar(path, [("a.png", b"png a"), ("b.jpg", b"jpg b")])
    old = tar_places(str(path))
    write_tar(path, [("b.jpg", b"jpg b"), ("c.png", b"c"), ("a.png", b"png a")])  # reordered
    read = ref_reader("webdataset")
    assert read(str(path), "a.png", place=old["a.png"]) == (b"png a", "png")
    assert read(str(path), "b.jpg", place=old["b.jpg"]) == (b"jpg b", "jpg")
    path.unlink()
    with pytest.raises(SourceError, match="no longer exists"):
        read(str(path), "a.png", place=old["a.png"])


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_a_long_member_name_is_found_by_name(tmp_path: Path, fmt: str) -> None:
    import tarfile

    name = "d" * 120 + "/" + "k" * 110 + ".png"  # too long for the header's name fields
    with tarfile.open(tmp_path / "0.tar", "w", format=tarfile.GNU_FORMAT if fmt == "gnu"
                      else tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(name)
        info.size = 4
        tf.addfile(info, io.BytesIO(b"long"))
    place = tar_places(str(tmp_path / "0.tar"))[name]
    assert ref_reader("webdataset")(str(tmp_path / "0.tar"), name, place=place) == (b"long",
                                                                                 "png")


def test_export_of_a_webdataset_store_reads_by_place(tmp_path: Path, small_chunks: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    expected = mined(tmp_path)
    scanned = count_scans(monkeypatch)
    pairmine.export(tmp_path / "p", tmp_path / "x", fmt="webdataset", combined=True)
    assert scanned == []  # no tar was indexed: every image was read at its place
    by_key = {key: data for key, _, _, _, data in expected}
    written = {}
    for shard in sorted((tmp_path / "x").rglob("*.tar")):
        for member, (offset, size) in tar_places(str(shard)).items():
            with open(shard, "rb") as f:
                f.seek(offset)
                written[member] = f.read(size)
    images = [data for member, data in written.items() if member.endswith((".png", ".jpg"))]
    assert images and all(data in by_key.values() for data in images)


def test_one_large_tar_is_read_without_a_list_of_its_members(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tar's members are streamed while it is indexed: a single tar of 16,000 samples costs
    what 16,000 samples in 32 tars cost, not ~150 bytes a member more."""
    import tracemalloc

    monkeypatch.setattr(listing, "CHUNK", 512)
    monkeypatch.setattr(wds_mod, "CHUNK", 512)
    write_tar(tmp_path / "warm.tar", [("w.jpg", b"x")])
    open_source(tmp_path / "warm.tar")
    peaks = {}
    for n in (2_000, 16_000):
        write_tar(tmp_path / f"{n}.tar", [m for i in range(n) for m in (
            (f"{i:06d}.jpg", b"x"), (f"{i:06d}.cls", b"1"))])
        tracemalloc.start()
        src = open_source(str(tmp_path / f"{n}.tar"))
        assert len(src) == n and src.read(n - 1) == b"x"
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        del src
    assert peaks[16_000] - peaks[2_000] < 30 * 14_000, peaks


def test_a_parquet_export_carries_the_places_its_readers_use(
        tmp_path: Path, small_chunks: int, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = mined(tmp_path)
    pairmine.export(tmp_path / "p", tmp_path / "x", fmt="parquet", combined=True)
    exp = pairmine.stores.open_export(tmp_path / "x")
    pairs, images = exp.pairs().to_pylist(), exp.images()
    assert images is not None
    for row in pairs:
        for side in "ab":
            place = (row[f"member_offset_{side}"], row[f"member_size_{side}"])
            assert place == tar_places(row[f"source_{side}"])[row[f"member_{side}"]]
    for row in images.to_pylist():
        assert (row["member_offset"], row["member_size"]) == \
            tar_places(row["source"])[row["member"]]
    scanned = count_scans(monkeypatch)
    from pairmine.datasets import SPPSDataset

    dataset = SPPSDataset(tmp_path / "x")
    by_member = {member: data for _, _, member, _, data in expected}
    for i in range(len(dataset)):
        first, second = dataset.raw(i)
        assert first in by_member.values() and (second is None or second in by_member.values())
    result = pairmine.verify(tmp_path / "x")
    assert not result.problems and result.sources == 15
    assert scanned == []  # the trainer's reader and verify read at the places, no tar indexed


def test_show_reads_a_webdataset_store_by_place(tmp_path: Path, small_chunks: int,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from pairmine.quality.report import show

    mined(tmp_path)
    scanned = count_scans(monkeypatch)
    result = show(tmp_path / "p", tmp_path / "page", inline=True)
    assert result.images == 15 and not result.missing
    assert scanned == []  # every thumbnail read at its place
