"""Image sources: write real files, open them, read them back (folder, list, webdataset, cifar,
stl10), through pickling, DataLoader workers and the ref readers that later stages use."""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pairmine.errors import SourceError
from pairmine.images import decode_rgb
from pairmine.sources import ImageSource, open_source, ref_reader
from pairmine.sources import arrays as arrays_mod
from pairmine.sources import wds as wds_mod
from pairmine.sources.base import absolute_spec


def image_bytes(seed: int, fmt: str = "PNG", size: tuple[int, int] = (12, 9)) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def put(path: Path, data: bytes) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def all_bytes(src: ImageSource) -> list[bytes]:
    return [src.read(i) for i in range(len(src))]


def column(src: ImageSource, name: str) -> list[Any]:
    values: list[Any] = src.refs().column(name).to_pylist()
    return values


# ---------------------------------------------------------------------------------------------
# folder


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "tree"
    files = {
        "b_cls/x.png": image_bytes(1),
        "b_cls/sub/deep/y.JPG": image_bytes(2, "JPEG"),
        "a_cls/z.jpeg": image_bytes(3, "JPEG"),
        "a_cls/Z.png": image_bytes(4),
        "root1.webp": image_bytes(5, "WEBP"),
        "c_cls/q.gif": image_bytes(6, "GIF"),
    }
    for rel, data in files.items():
        put(root / rel, data)
    put(root / "b_cls/notes.txt", b"not an image")
    put(root / "README.md", b"# hi")
    put(root / "only_text/readme.txt", b"x")
    (root / "empty_cls").mkdir()
    return root, files


def test_folder_order_keys_labels_bytes(tree: tuple[Path, dict[str, bytes]]) -> None:
    root, files = tree
    src = open_source(root)
    assert src.kind == "folder"
    keys = column(src, "key")
    # plain code-point sort of the relative POSIX path: upper case before lower case
    assert keys == ["a_cls/Z.png", "a_cls/z.jpeg", "b_cls/sub/deep/y.JPG", "b_cls/x.png",
                    "c_cls/q.gif", "root1.webp"]
    # classes = top-level folders holding images, sorted; root files have no label
    assert src.class_names() == ["a_cls", "b_cls", "c_cls"]
    assert column(src, "label") == [0, 0, 1, 1, 2, None]
    assert column(src, "source") == [str(root.resolve() / k) for k in keys]
    assert column(src, "member") == [None] * 6
    assert [src.ext(i) for i in range(6)] == ["png", "jpeg", "jpg", "png", "gif", "webp"]
    assert all_bytes(src) == [files[k] for k in keys]
    assert src.refs().schema == pa.schema([("key", pa.string()), ("source", pa.string()),
                                           ("member", pa.string()), ("label", pa.int64())])
    desc = json.loads(json.dumps(src.describe()))
    assert desc["images"] == 6 and desc["ignored_files"] == 3 and desc["classes"] == 3
    assert desc["extensions"] == {"gif": 1, "jpeg": 1, "jpg": 1, "png": 2, "webp": 1}


def test_folder_without_labels(tree: tuple[Path, dict[str, bytes]]) -> None:
    src = open_source(tree[0], labels=False)
    assert column(src, "label") == [None] * 6
    assert src.class_names() is None


def test_folder_follows_symlinks_without_looping(tmp_path: Path) -> None:
    root = tmp_path / "r"
    data = put(root / "c" / "a.png", image_bytes(7))
    other = put(tmp_path / "elsewhere" / "b.png", image_bytes(8))
    os.symlink(root, root / "c" / "loop")  # a cycle back to the root: not entered again
    os.symlink(tmp_path / "elsewhere", root / "linked")  # a linked folder: followed
    src = open_source(root)
    assert column(src, "key") == ["c/a.png", "linked/b.png"]
    assert all_bytes(src) == [data, other]


@pytest.mark.parametrize("content", ["empty", "text_only"])
def test_folder_without_images_is_an_error(tmp_path: Path, content: str) -> None:
    root = tmp_path / "d"
    root.mkdir()
    if content == "text_only":
        put(root / "sub" / "a.txt", b"x")
    with pytest.raises(SourceError, match="no images found in"):
        open_source(root)


# ---------------------------------------------------------------------------------------------
# file lists


@pytest.fixture
def listed(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """Images in several places; lists live in tmp/lists."""
    return tmp_path / "lists", {
        "imgs/a.png": put(tmp_path / "lists" / "imgs" / "a.png", image_bytes(10)),
        "b.jpg": put(tmp_path / "lists" / "b.jpg", image_bytes(11, "JPEG")),
        "../outside/c.png": put(tmp_path / "outside" / "c.png", image_bytes(12)),
        "noext": put(tmp_path / "lists" / "noext", image_bytes(13, "JPEG")),
    }


def test_txt_list(listed: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    base, files = listed
    absolute = str(tmp_path / "outside" / "c.png")
    lines = ["# a comment", "", "b.jpg", "  imgs/a.png  ", "", absolute, "noext", "# end"]
    (base / "l.txt").write_text("\n".join(lines) + "\n")
    src = open_source(base / "l.txt")
    assert src.kind == "list"
    assert column(src, "key") == ["b.jpg", "imgs/a.png", absolute, "noext"]
    assert column(src, "source") == [str(base / "b.jpg"), str(base / "imgs/a.png"), absolute,
                                     str(base / "noext")]
    assert column(src, "label") == [None] * 4
    assert all_bytes(src) == [files["b.jpg"], files["imgs/a.png"], files["../outside/c.png"],
                              files["noext"]]
    # an extension-less file gets its format from its leading bytes
    assert [src.ext(i) for i in range(4)] == ["jpg", "png", "png", "jpg"]
    json.dumps(src.describe())


def test_csv_list_with_labels(listed: tuple[Path, dict[str, bytes]]) -> None:
    base, files = listed
    with open(base / "l.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "path", "label", "class"])
        w.writerows([["t", "../outside/c.png", "7", "x"], ["t", "imgs/a.png", "", "y"],
                     ["t", "b.jpg", "0", "z"]])
    src = open_source(base / "l.csv")
    assert column(src, "key") == ["../outside/c.png", "imgs/a.png", "b.jpg"]
    assert column(src, "source")[0] == str(base.parent / "outside" / "c.png")
    assert column(src, "label") == [7, None, 0]
    assert all_bytes(src) == [files[k] for k in column(src, "key")]
    assert column(open_source(base / "l.csv", labels=False), "label") == [None] * 3


def test_parquet_list_with_labels(listed: tuple[Path, dict[str, bytes]]) -> None:
    base, files = listed
    pq.write_table(pa.table({"path": ["imgs/a.png", "b.jpg"],
                             "label": pa.array([3, 1], pa.int32())}), base / "l.parquet")
    src = open_source(base / "l.parquet")
    assert column(src, "label") == [3, 1]
    assert all_bytes(src) == [files["imgs/a.png"], files["b.jpg"]]


def test_list_errors(listed: tuple[Path, dict[str, bytes]]) -> None:
    base, _ = listed
    (base / "dup.txt").write_text("b.jpg\nimgs/a.png\nb.jpg\n")
    with pytest.raises(SourceError, match=r"more than once, e\.g\. 'b\.jpg' \(2×\)"):
        open_source(base / "dup.txt")
    (base / "nopath.csv").write_text("file,label\nb.jpg,1\n")
    with pytest.raises(SourceError, match="no `path` column"):
        open_source(base / "nopath.csv")
    pq.write_table(pa.table({"file": ["b.jpg"]}), base / "nopath.parquet")
    with pytest.raises(SourceError, match="no `path` column"):
        open_source(base / "nopath.parquet")
    (base / "badlabel.csv").write_text("path,label\nb.jpg,cat\n")
    with pytest.raises(SourceError, match="cannot read file list"):
        open_source(base / "badlabel.csv")
    (base / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(SourceError, match="no images found in"):
        open_source(base / "empty.txt")
    (base / "gone.txt").write_text("x.png\ny.png\n")
    with pytest.raises(SourceError, match="none of the 2 files"):
        open_source(base / "gone.txt")


def test_list_missing_file_fails_at_read(listed: tuple[Path, dict[str, bytes]]) -> None:
    base, files = listed
    (base / "some.txt").write_text("b.jpg\nmissing.png\n")
    src = open_source(base / "some.txt")
    assert len(src) == 2 and src.read(0) == files["b.jpg"]
    with pytest.raises(SourceError, match=r"missing\.png"):
        src.read(1)


# ---------------------------------------------------------------------------------------------
# webdataset


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.fixture
def shards(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    d = tmp_path / "wds"
    img = {k: image_bytes(20 + i, "JPEG" if k.endswith("jpg") else "PNG")
           for i, k in enumerate(["s0.jpg", "s1.png", "s3.png", "s3.webp", "dir/s4.JPG",
                                  "w0.jpg", "s6.jpeg"])}
    write_tar(d / "shard-000000.tar", [
        ("s0.jpg", img["s0.jpg"]), ("s0.cls", b"3\n"),
        ("s1.json", b"{}"), ("s1.png", img["s1.png"]), ("s1.cls", b"5"),
        ("s2.json", b"{}"), ("s2.cls", b"1"),  # no image: skipped
        ("s3.webp", img["s3.webp"]), ("s3.png", img["s3.png"]),  # png wins over webp
        ("__index__", b"meta"), ("nodot", b"x"),  # not part of any sample
    ])
    import webdataset

    with webdataset.TarWriter(str(d / "shard-000001.tar")) as sink:
        sink.write({"__key__": "w0", "jpg": img["w0.jpg"], "cls": 9})
    write_tar(d / "shard-000002.tar", [("dir/s4.JPG", img["dir/s4.JPG"]),
                                       ("s6.jpeg", img["s6.jpeg"]), ("s6.cls", b"2")])
    return d, img


def test_webdataset_brace_pattern(shards: tuple[Path, dict[str, bytes]]) -> None:
    d, img = shards
    src = open_source(str(d / "shard-{000000..000002}.tar"))
    assert src.kind == "webdataset"
    assert column(src, "key") == ["s0", "s1", "s3", "w0", "dir/s4", "s6"]
    assert column(src, "member") == ["s0.jpg", "s1.png", "s3.png", "w0.jpg", "dir/s4.JPG",
                                     "s6.jpeg"]
    assert column(src, "label") == [3, 5, None, 9, None, 2]
    sources = [str(d / f"shard-00000{i}.tar") for i in (0, 0, 0, 1, 2, 2)]
    assert column(src, "source") == sources
    assert [src.ext(i) for i in range(6)] == ["jpg", "png", "png", "jpg", "jpg", "jpeg"]
    assert all_bytes(src) == [img[m] for m in column(src, "member")]
    desc = json.loads(json.dumps(src.describe()))
    assert desc["skipped_without_image"] == 1 and desc["ignored_members"] == 2
    assert desc["shards"] == 3
    assert column(open_source(str(d / "shard-{000000..000002}.tar"), labels=False),
                  "label") == [None] * 6


def test_webdataset_single_and_joined(shards: tuple[Path, dict[str, bytes]]) -> None:
    d, _ = shards
    assert column(open_source(d / "shard-000001.tar"), "key") == ["w0"]
    joined = f"{d}/shard-000002.tar::{d}/shard-{{000000..000001}}.tar"
    assert column(open_source(joined), "key") == ["dir/s4", "s6", "s0", "s1", "s3", "w0"]


def test_absolute_spec(shards: tuple[Path, dict[str, bytes]],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    d, _ = shards
    monkeypatch.chdir(d.parent)
    relative = "wds/shard-000002.tar::wds/shard-{000000..000001}.tar"
    spec = absolute_spec(relative)
    assert spec == f"{d}/shard-000002.tar::{d}/shard-{{000000..000001}}.tar"
    assert absolute_spec("/x/{a,b}/c.tar") == "/x/{a,b}/c.tar"
    monkeypatch.chdir("/")
    assert column(open_source(spec), "source") == [str(d / "shard-000002.tar")] * 2 + \
        [str(d / "shard-000000.tar")] * 3 + [str(d / "shard-000001.tar")]


def test_webdataset_errors(shards: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    d, img = shards
    write_tar(d / "dup.tar", [("s1.png", img["s1.png"])])
    with pytest.raises(SourceError, match="key 's1' occurs twice"):
        open_source(f"{d}/{{shard-000000,dup}}.tar")
    write_tar(tmp_path / "again" / "x.tar", [("a.png", b"1"), ("b.png", b"2"), ("a.png", b"3")])
    with pytest.raises(SourceError, match="occurs twice"):
        open_source(tmp_path / "again" / "x.tar")
    write_tar(tmp_path / "badcls" / "x.tar", [("a.png", img["s1.png"]), ("a.cls", b"cat")])
    with pytest.raises(SourceError, match="not an integer class label"):
        open_source(tmp_path / "badcls" / "x.tar")
    assert len(open_source(tmp_path / "badcls" / "x.tar", labels=False)) == 1
    with pytest.raises(SourceError, match="1 of 4 shards do not exist"):
        open_source(str(d / "shard-{000000..000003}.tar"))
    with tarfile.open(tmp_path / "c.tar.gz", "w:gz") as tf:
        tf.add(d / "shard-000001.tar", "x.tar")
    with pytest.raises(SourceError, match="compressed tar") as exc:
        open_source(tmp_path / "c.tar.gz")
    assert "decompress" in str(exc.value)
    write_tar(tmp_path / "noimg" / "x.tar", [("a.json", b"{}")])
    with pytest.raises(SourceError, match="no images found in"):
        open_source(tmp_path / "noimg" / "x.tar")


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT,
                                 tarfile.PAX_FORMAT])
def test_tar_index_matches_tarfile(tmp_path: Path, fmt: int) -> None:
    """The fast header scan (or its tarfile fallback) lists exactly what tarfile does."""
    path = tmp_path / "t.tar"
    names = ["a.jpg", "d/" + "p" * 120 + "/b.png",  # ustar prefix/name split
             "long_" + "n" * 110 + ".jpg", "ünï.png", "empty.cls", "c.txt"]
    with tarfile.open(path, "w", format=fmt) as tf:
        for i, name in enumerate(names):
            if fmt == tarfile.USTAR_FORMAT and (name.startswith("long") or "ü" in name):
                continue  # not representable in plain ustar
            data = bytes(range(i * 37 % 256)) * (i + 1)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        folder = tarfile.TarInfo("d")
        folder.type = tarfile.DIRTYPE
        tf.addfile(folder)
        link = tarfile.TarInfo("l.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "a.jpg"
        tf.addfile(link)
    with tarfile.open(path) as tf:
        expected = [(m.name, m.offset_data, m.size) for m in tf if m.isreg()]
    scan = wds_mod._members(str(path))
    assert [tuple(m) for m in scan.members] == expected
    assert scan.skipped == {"symlink": 1}  # counted, not dropped silently; folders are not files
    plain = wds_mod._scan_plain(str(path), Counter())
    if fmt == tarfile.USTAR_FORMAT:  # every header plain: the fast path alone
        assert [tuple(m) for m in plain] == expected
    else:
        # pax and GNU long names: left to tarfile after the plain members before them, which
        # the stream above gave once each
        assert [tuple(m) for m in itertools.islice(plain, 1)] == expected[:1]
        with pytest.raises(wds_mod._NotPlain):
            next(plain)


def test_webdataset_reopens_handles_in_a_new_process(
        shards: tuple[Path, dict[str, bytes]]) -> None:
    src = open_source(shards[0] / "shard-000000.tar")
    assert isinstance(src, wds_mod.WebDatasetSource)
    first = src.read(0)
    parent_handle = src._handles[0]
    src._pid = -1  # as in a forked worker: the handles belong to another process
    assert src.read(0) == first
    assert src._handles[0] is not parent_handle
    clone = pickle.loads(pickle.dumps(src))
    assert not clone._handles and clone.read(1) == src.read(1)


# ---------------------------------------------------------------------------------------------
# CIFAR and STL-10 arrays


def dump_like_python2(obj: Any, f: Any) -> None:
    """Pickle ``obj`` as Python 2 did (protocol 2, bytes as BINSTRING opcodes), as in the real
    CIFAR batches; Python 3's protocol 2 would call _codecs.encode for bytes instead."""
    pure: Any = pickle._Pickler  # the pure-Python pickler, whose dispatch table can be patched

    def save_bytes(self: Any, data: bytes) -> None:
        n = len(data)
        head = (pickle.SHORT_BINSTRING + bytes([n]) if n < 256
                else pickle.BINSTRING + struct.pack("<i", n))
        self.write(head + data)
        self.memoize(data)

    pickler = pure(f, protocol=2)
    pickler.dispatch = {**pure.dispatch, bytes: save_bytes}
    pickler.dump(obj)


def cifar_batch(path: Path, n: int, seed: int, labels_key: bytes = b"labels") -> np.ndarray:
    """Write a batch exactly like the real format (a Python 2 protocol-2 pickle of a dict with
    bytes keys); return its images as (n, 32, 32, 3)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    batch = {b"batch_label": b"training batch", labels_key: [int(v) for v in rng.integers(
        0, 10, n)], b"data": data, b"filenames": [b"f%d.png" % i for i in range(n)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        dump_like_python2(batch, f)
    images: np.ndarray = data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
    return images


@pytest.fixture
def cifar10(tmp_path: Path) -> tuple[Path, np.ndarray]:
    root = tmp_path / "cifar-10-batches-py"
    images = [cifar_batch(root / f"data_batch_{i}", 4 + i, seed=i) for i in range(1, 6)]
    cifar_batch(root / "test_batch", 3, seed=9)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=2)
    return root, np.concatenate(images)


def pixels_of(src: ImageSource, i: int) -> np.ndarray:
    return np.asarray(decode_rgb(src.read(i)))


def test_cifar10_folder(cifar10: tuple[Path, np.ndarray]) -> None:
    root, images = cifar10
    src = open_source(root)
    assert src.kind == "cifar" and len(src) == 5 + 6 + 7 + 8 + 9
    keys = column(src, "key")
    assert keys[:2] == ["data_batch_1/00000", "data_batch_1/00001"]
    assert keys[5] == "data_batch_2/00000" and keys[-1] == "data_batch_5/00008"
    assert column(src, "member")[5] == "0"
    assert column(src, "source")[5] == str(root / "data_batch_2")
    with open(root / "data_batch_3", "rb") as f:
        labels3 = pickle.load(f, encoding="bytes")[b"labels"]
    assert column(src, "label")[11:18] == labels3
    assert src.class_names() == [f"c{i}" for i in range(10)]
    for i in range(len(src)):
        np.testing.assert_array_equal(pixels_of(src, i), images[i])
    assert src.read(7) == src.read(7) and src.ext(7) == "png"
    json.dumps(src.describe())


def test_png_is_lossless_and_has_no_metadata(cifar10: tuple[Path, np.ndarray]) -> None:
    data = open_source(cifar10[0]).read(0)
    chunks, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        chunks.append(data[pos + 4:pos + 8])
        pos += 12 + length
    assert set(chunks) == {b"IHDR", b"IDAT", b"IEND"}


def test_cifar_single_batch_and_cifar100(cifar10: tuple[Path, np.ndarray],
                                         tmp_path: Path) -> None:
    src = open_source(cifar10[0] / "test_batch", labels=False)
    assert column(src, "key") == ["test_batch/00000", "test_batch/00001", "test_batch/00002"]
    assert column(src, "label") == [None] * 3
    root = tmp_path / "cifar-100-python"
    images = cifar_batch(root / "train", 6, seed=3, labels_key=b"fine_labels")
    with open(root / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [b"apple", b"bear"]}, f, protocol=2)
    src = open_source(root)
    assert src.kind == "cifar" and src.describe()["variant"] == "cifar-100"
    assert column(src, "key")[-1] == "train/00005"
    with open(root / "train", "rb") as f:
        assert column(src, "label") == pickle.load(f, encoding="bytes")[b"fine_labels"]
    assert src.class_names() == ["apple", "bear"]
    np.testing.assert_array_equal(pixels_of(src, 5), images[5])


def test_cifar_errors(cifar10: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    root, _ = cifar10
    (root / "data_batch_3").unlink()
    with pytest.raises(SourceError, match="lacks data_batch_3"):
        open_source(root)
    canary = tmp_path / "canary"
    canary.write_text("alive")

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.remove, (str(canary),))

    evil = tmp_path / "evil" / "data_batch_1"
    evil.parent.mkdir()
    evil.write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(SourceError, match=r"refusing to load posix\.remove"):
        open_source(evil)
    assert canary.exists()


def stl_file(path: Path, images: np.ndarray) -> None:
    # STL-10 stores each image channel-major and column-major: (3, x, y)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(images.transpose(0, 3, 2, 1)).tofile(path)


@pytest.fixture
def stl(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    root = tmp_path / "stl10_binary"
    rng = np.random.default_rng(5)
    train = rng.integers(0, 256, size=(5, 96, 96, 3), dtype=np.uint8)
    unlabeled = rng.integers(0, 256, size=(3, 96, 96, 3), dtype=np.uint8)
    stl_file(root / "train_X.bin", train)
    np.array([1, 10, 3, 3, 7], np.uint8).tofile(root / "train_y.bin")
    stl_file(root / "unlabeled_X.bin", unlabeled)
    (root / "class_names.txt").write_text("\n".join(f"k{i}" for i in range(10)) + "\n")
    return root, train, unlabeled


def test_stl10_folder(stl: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, train, unlabeled = stl
    src = open_source(root)
    assert src.kind == "stl10" and len(src) == 8
    assert column(src, "key") == [f"train_X/{i:05d}" for i in range(5)] + \
        [f"unlabeled_X/{i:05d}" for i in range(3)]
    assert column(src, "label") == [0, 9, 2, 2, 6, None, None, None]
    assert column(src, "source")[-1] == str(root / "unlabeled_X.bin")
    assert src.class_names() == [f"k{i}" for i in range(10)]
    expected = np.concatenate([train, unlabeled])
    for i in range(8):
        np.testing.assert_array_equal(pixels_of(src, i), expected[i])
    json.dumps(src.describe())


def test_stl10_single_file(stl: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    root, train, _ = stl
    one = open_source(root / "train_X.bin")
    assert len(one) == 5 and column(one, "label")[1] == 9
    np.testing.assert_array_equal(pixels_of(one, 4), train[4])
    (tmp_path / "bad_X.bin").write_bytes(b"\0" * 100)
    with pytest.raises(SourceError, match="not a multiple"):
        open_source(tmp_path / "bad_X.bin")


# ---------------------------------------------------------------------------------------------
# every kind: pickling into a fresh process, DataLoader workers, ref readers


@pytest.fixture
def every_kind(tree: tuple[Path, dict[str, bytes]], listed: tuple[Path, dict[str, bytes]],
               shards: tuple[Path, dict[str, bytes]], cifar10: tuple[Path, np.ndarray],
               stl: tuple[Path, np.ndarray, np.ndarray]) -> list[ImageSource]:
    (listed[0] / "l.txt").write_text("b.jpg\nimgs/a.png\n")
    return [open_source(tree[0]), open_source(listed[0] / "l.txt"),
            open_source(str(shards[0] / "shard-{000000..000002}.tar")),
            open_source(cifar10[0]), open_source(stl[0])]


CHILD = """
import hashlib, pickle, sys
sources = pickle.load(sys.stdin.buffer)
out = [[hashlib.sha256(s.read(i)).hexdigest() for i in range(len(s))] for s in sources]
sys.stdout.write(repr(out))
"""


def digests(src: ImageSource) -> list[str]:
    return [hashlib.sha256(b).hexdigest() for b in all_bytes(src)]


def test_pickled_sources_read_the_same_in_a_fresh_process(
        every_kind: list[ImageSource]) -> None:
    for src in every_kind:
        src.read(0)  # handles and arrays now open/loaded here: they must not travel
    payload = pickle.dumps(every_kind)
    assert len(payload) < 20_000  # no pixel arrays inside
    child = subprocess.run([sys.executable, "-c", CHILD], input=payload, capture_output=True,
                           check=True, timeout=120)
    assert eval(child.stdout) == [digests(s) for s in every_kind]


class _Flat:
    """All images of several sources as one map-style dataset."""

    def __init__(self, sources: list[ImageSource]) -> None:
        self.items = [(s, i) for s in sources for i in range(len(s))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int) -> bytes:
        src, i = self.items[j]
        return src.read(i)


def test_dataloader_with_two_workers(every_kind: list[ImageSource]) -> None:
    from torch.utils.data import DataLoader

    expected = [b for s in every_kind for b in all_bytes(s)]  # parent opens handles first
    dataset: Any = _Flat(every_kind)
    loader: DataLoader[bytes] = DataLoader(dataset, batch_size=3, num_workers=2,
                                           collate_fn=list)
    assert [b for batch in loader for b in batch] == expected


def test_ref_readers_fetch_the_same_bytes(every_kind: list[ImageSource]) -> None:
    for src in every_kind:
        read = ref_reader(src.kind)
        refs = src.refs()
        for i, (source, member) in enumerate(zip(column(src, "source"), column(src, "member"),
                                                 strict=True)):
            assert read(source, member) == (src.read(i), src.ext(i)), (src.kind, i)
        assert refs.num_rows == len(src)
    with pytest.raises(SourceError, match="unknown source kind"):
        ref_reader("nope")


def test_ref_readers_cache_and_report_vanished_files(
        every_kind: list[ImageSource], monkeypatch: pytest.MonkeyPatch) -> None:
    folder, _, shards, cifar, stl = every_kind
    calls: list[str] = []
    members = wds_mod._members

    def counted_members(path: str) -> wds_mod.Scan:
        calls.append(path)
        return members(path)

    monkeypatch.setattr(wds_mod, "_members", counted_members)
    read = ref_reader("webdataset")
    tar = column(shards, "source")[0]
    read(tar, "s0.jpg")
    read(tar, "s1.png")
    assert calls == [tar]  # indexed once
    with pytest.raises(SourceError, match="has no member"):
        read(tar, "zz.jpg")

    loads: list[str] = []
    load = arrays_mod._load_cifar

    def counted_load(path: str) -> tuple[np.ndarray, list[int] | None]:
        loads.append(path)
        return load(path)

    monkeypatch.setattr(arrays_mod, "_load_cifar", counted_load)
    read = ref_reader("cifar")
    path = column(cifar, "source")[0]
    read(path, "0")
    read(path, "1")
    assert loads == [path]
    with pytest.raises(SourceError, match="has no image '99'"):
        read(path, "99")

    for src in (folder, shards, stl):
        source, member = column(src, "source")[0], column(src, "member")[0]
        Path(source).unlink()
        with pytest.raises(SourceError, match=f"{Path(source).name} no longer exists"):
            ref_reader(src.kind)(source, member)


# ---------------------------------------------------------------------------------------------
# the real CIFAR-10 JPEGs from ../shared/data


def test_real_cifar10_folder_and_its_labels_csv(cifar_test_folder: Path) -> None:
    folder = open_source(cifar_test_folder)
    assert len(folder) == 10_000
    assert folder.class_names() == ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                    "frog", "horse", "ship", "truck"]
    listing = open_source(cifar_test_folder.parent / "labels.csv")
    assert len(listing) == 10_000
    # labels.csv paths are relative to cifar10/: test/<class>/<NNNN>.jpg
    assert column(listing, "key") == ["test/" + k for k in column(folder, "key")]
    assert column(listing, "label") == column(folder, "label")
    assert column(folder, "label")[::1000] == list(range(10))
    for i in (0, 4321, 9999):
        assert listing.read(i) == folder.read(i)
        assert decode_rgb(folder.read(i)).size == (32, 32)
