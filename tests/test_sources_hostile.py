"""Hostile inputs to the sources: file lists naming devices, FIFOs, sockets and folders; files
over the size cap and decompression bombs; lists reaching outside --root; folders whose
symlinks alias classes, loop or dangle, and hidden folders; tar members whose names are not
UTF-8. Each is an image, an error entry with a clear reason, or an ignored entry counted with
its reason: never a hang, an unbounded read, a crash or a silent skip."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import write_image

import pairmine
from pairmine.embed.reader import _device_decodable
from pairmine.errors import ConfigError, SourceError
from pairmine.images import DEFAULT_MAX_IMAGE_PIXELS, ImageDecodeError, decode_rgb
from pairmine.sources import open_source, ref_reader
from pairmine.sources import wds as wds_mod
from pairmine.sources.files import DEFAULT_MAX_IMAGE_BYTES, read_file


@pytest.fixture
def deadline() -> Iterator[None]:
    """Fail (instead of hanging the suite) if the test blocks: SIGALRM interrupts a blocking
    open() of a FIFO."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError("blocked for 30 s: a read that should have been refused")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def make_socket(path: Path) -> socket.socket:
    """A listening Unix socket at ``path`` (bound by a short relative name: AF_UNIX paths are
    limited to ~107 bytes, pytest's tmp paths can be longer)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        sock.bind(path.name)
    finally:
        os.chdir(cwd)
    return sock


def embed_errors(out: Path) -> dict[str, str]:
    table = pq.read_table(out / "errors.parquet").to_pydict()
    return dict(zip(table["key"], table["error"], strict=True))


def embedded_keys(out: Path) -> list[str]:
    keys: list[str] = pairmine.open_embeddings(out).meta.column("key").to_pylist()
    return keys


def manifest(out: Path) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return found


# ---------------------------------------------------------------------------------------------
# file lists naming things that are not image files


def test_list_of_special_files_gives_error_entries(tmp_path: Path, deadline: None) -> None:
    data = tmp_path / "data"
    write_image(data / "ok.jpg", 1)
    os.mkfifo(data / "pipe.jpg")
    (data / "folder.jpg").mkdir()
    sock = make_socket(data / "sock.jpg")
    os.symlink(data / "gone.jpg", data / "dangling.jpg")
    entries = ["ok.jpg", "pipe.jpg", "folder.jpg", "sock.jpg", "dangling.jpg", "never.jpg",
               "/dev/null"]
    (data / "list.txt").write_text("\n".join(entries) + "\n")
    try:
        result = pairmine.embed(data / "list.txt", tmp_path / "e", encoder="toy:0", workers=0)
    finally:
        sock.close()
    assert result.images == 1 and result.errors == 6
    errors = embed_errors(tmp_path / "e")
    assert set(errors) == set(entries) - {"ok.jpg"}
    assert errors["pipe.jpg"].endswith("is not a regular file (FIFO)")
    assert errors["folder.jpg"].endswith("is not a regular file (directory)")
    assert errors["sock.jpg"].endswith("is not a regular file (socket)")
    assert errors["/dev/null"].endswith("is not a regular file (character device)")
    # a listed file that never existed says so: not the export-time "no longer exists"
    assert errors["never.jpg"] == f"unreadable: image file {data / 'never.jpg'} does not exist"
    assert "dangling symlink" in errors["dangling.jpg"]
    assert all("\n" not in e and "Traceback" not in e for e in errors.values())


def test_endless_devices_are_refused_without_reading(tmp_path: Path) -> None:
    """/dev/zero and /dev/urandom never end: reading one whole grew a process to 3 GB. Run in
    a child with 1.5 GiB of address space so that a regression fails instead of swapping."""
    write_image(tmp_path / "ok.png", 2, fmt="PNG")
    (tmp_path / "list.txt").write_text("ok.png\n/dev/zero\n/dev/urandom\n")
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 29, 3 << 29))\n"
        "from pairmine.errors import SourceError\n"
        "from pairmine.sources import open_source\n"
        f"src = open_source({str(tmp_path / 'list.txt')!r})\n"
        "for i in range(len(src)):\n"
        "    try:\n"
        "        print(len(src.read(i)))\n"
        "    except SourceError as exc:\n"
        "        print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == str((tmp_path / "ok.png").stat().st_size)
    assert lines[1:] == [f"image file /dev/{name} is not a regular file (character device)"
                         for name in ("zero", "urandom")]


def test_fifo_without_an_extension_does_not_block_ext(tmp_path: Path, deadline: None) -> None:
    """A list entry without an image extension is sniffed; sniffing must not open a FIFO."""
    write_image(tmp_path / "photo", 3)  # a JPEG without an extension
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "list.txt").write_text("photo\npipe\n")
    src = open_source(tmp_path / "list.txt")
    started = time.monotonic()
    assert [src.ext(0), src.ext(1)] == ["jpg", "bin"]
    assert time.monotonic() - started < 5  # not an open() that waited for the alarm


def test_read_file_reasons(tmp_path: Path, deadline: None) -> None:
    os.symlink("loop.jpg", tmp_path / "loop.jpg")
    with pytest.raises(SourceError, match=r"is a symlink loop$"):
        read_file(str(tmp_path / "loop.jpg"))
    with pytest.raises(SourceError, match=r"does not exist$"):
        read_file(str(tmp_path / "nothing.jpg"))


# ---------------------------------------------------------------------------------------------
# size cap and decompression bombs


def test_size_cap_is_an_error_entry_for_files(tmp_path: Path) -> None:
    write_image(tmp_path / "small.png", 4, size=(8, 8), fmt="PNG")
    write_image(tmp_path / "big.png", 5, size=(200, 200), fmt="PNG")
    cap = (tmp_path / "small.png").stat().st_size + 10
    assert (tmp_path / "big.png").stat().st_size > cap
    (tmp_path / "list.csv").write_text("path\nsmall.png\nbig.png\n")
    pairmine.embed(tmp_path / "list.csv", tmp_path / "e", encoder="toy:0", workers=0,
                   max_image_bytes=cap)
    assert embedded_keys(tmp_path / "e") == ["small.png"]
    assert embed_errors(tmp_path / "e")["big.png"] == (
        f"unreadable: image file {tmp_path / 'big.png'} is "
        f"{(tmp_path / 'big.png').stat().st_size:,} bytes, over the {cap:,}-byte cap "
        f"(raise --max-image-bytes to read it)")
    config = manifest(tmp_path / "e")["config"]
    assert config["max_image_bytes"] == cap
    assert config["max_image_pixels"] == DEFAULT_MAX_IMAGE_PIXELS and config["root"] is None


def test_size_cap_applies_to_folders(tmp_path: Path) -> None:
    write_image(tmp_path / "f" / "a" / "big.png", 6, size=(100, 100), fmt="PNG")
    write_image(tmp_path / "f" / "a" / "tiny.png", 7, size=(4, 4), fmt="PNG")
    src = open_source(tmp_path / "f", max_image_bytes=500)
    assert src.read(1) == (tmp_path / "f" / "a" / "tiny.png").read_bytes()
    with pytest.raises(SourceError, match="over the 500-byte cap"):
        src.read(0)


def _tar(path: Path, members: dict[str, bytes], *, encoding: str = "utf-8",
         fmt: int = tarfile.GNU_FORMAT) -> None:
    with tarfile.open(path, "w", format=fmt, encoding=encoding) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def png_bytes(seed: int, size: tuple[int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()

    Image.new("RGB", size, (seed % 256, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def test_size_cap_refuses_a_tar_member_without_reading_it(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    small, big = png_bytes(1, (4, 4)), png_bytes(2, (300, 300)) + bytes(5000)
    _tar(tmp_path / "s.tar", {"a.png": small, "b.png": big})
    src = open_source(tmp_path / "s.tar", max_image_bytes=len(small))
    assert src.read(0) == small

    def no_read(shard: int) -> None:
        raise AssertionError("the shard was opened to read a member over the cap")

    monkeypatch.setattr(src, "_handle", no_read)
    with pytest.raises(SourceError, match=rf"member b.png of shard .*s.tar is {len(big):,} "
                                          rf"bytes, over the {len(small):,}-byte cap"):
        src.read(1)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR declaring ``width`` x ``height``, then an empty IDAT: what
    a decompression bomb looks like to a header check, in a few dozen bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize(("size", "limit", "reason"), [
    # between Pillow's warning and its error level: it would decode 300 MB; we refuse it
    ((10_000, 10_000), DEFAULT_MAX_IMAGE_PIXELS, "over the --max-image-pixels limit"),
    ((100_000, 100_000), DEFAULT_MAX_IMAGE_PIXELS, "decompression bomb"),  # Pillow's own
    ((101, 100), 10_000, "101x100 = 10,100 pixels, over the --max-image-pixels limit of 10,000"),
])
def test_pixel_limit(size: tuple[int, int], limit: int, reason: str) -> None:
    with pytest.raises(ImageDecodeError, match=reason):
        decode_rgb(png_header_only(*size), max_pixels=limit)


def test_pixel_limit_is_an_error_entry_and_recorded(tmp_path: Path,
                                                    recwarn: pytest.WarningsRecorder) -> None:
    write_image(tmp_path / "f" / "small.jpg", 8, size=(20, 20))
    write_image(tmp_path / "f" / "large.jpg", 9, size=(120, 100))
    (tmp_path / "f" / "bomb.png").write_bytes(png_header_only(12_000, 9_000))
    pairmine.embed(tmp_path / "f", tmp_path / "e", encoder="toy:0", workers=0,
                   max_image_pixels=5_000)
    assert embedded_keys(tmp_path / "e") == ["small.jpg"]
    errors = embed_errors(tmp_path / "e")
    assert errors["large.jpg"] == ("refused: 120x100 = 12,000 pixels, over the "
                                   "--max-image-pixels limit of 5,000 (a decompression bomb, "
                                   "or raise the limit)")
    assert "over the --max-image-pixels limit" in errors["bomb.png"]
    assert manifest(tmp_path / "e")["config"]["max_image_pixels"] == 5_000
    # Pillow's DecompressionBombWarning is replaced by the error entry, not printed too
    assert not [w for w in recwarn if "decompression" in str(w.message).lower()]


def test_device_decode_path_keeps_bombs_on_the_cpu_path(tmp_path: Path) -> None:
    write_image(tmp_path / "x.jpg", 10, size=(64, 48))
    data = (tmp_path / "x.jpg").read_bytes()
    assert _device_decodable(data)
    assert not _device_decodable(data, max_pixels=64 * 48 - 1)  # the CPU path reports it


def test_limits_are_validated_before_anything_is_written(tmp_path: Path) -> None:
    write_image(tmp_path / "f" / "a.jpg", 11)
    options: dict[str, Any]
    for options in ({"max_image_bytes": 0}, {"max_image_pixels": 0},
                    {"root": tmp_path / "no-such-dir"}, {"root": tmp_path / "f" / "a.jpg"}):
        with pytest.raises(ConfigError):
            pairmine.embed(tmp_path / "f", tmp_path / "e", encoder="toy:0", workers=0,
                           **options)
        assert not (tmp_path / "e").exists()


class _StopAfter:
    """A progress reporter that stops the run (like Ctrl-C) once ``limit`` images are done."""

    def __init__(self, limit: int) -> None:
        self.limit, self.done = limit, 0

    def start(self, description: str, total: int | None, unit: str = "items") -> None:
        pass

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        if self.done >= self.limit:
            raise KeyboardInterrupt

    def finish(self) -> None:
        pass


@pytest.mark.parametrize("changed", [{"max_image_bytes": 10_000}, {"max_image_pixels": 500},
                                     {"root": "."}])
def test_resuming_with_other_limits_is_refused(tmp_path: Path, changed: dict[str, Any]) -> None:
    for i in range(4):
        write_image(tmp_path / "f" / f"{i}.jpg", 40 + i)
    if changed.get("root") == ".":
        changed = {"root": tmp_path}
    opts: dict[str, Any] = {"encoder": "toy:0", "workers": 0, "shard_size": 2, "batch_size": 2}
    with pytest.raises(KeyboardInterrupt):
        pairmine.embed(tmp_path / "f", tmp_path / "e", progress=_StopAfter(3), **opts)
    with pytest.raises(pairmine.StoreError, match="other options"):
        pairmine.embed(tmp_path / "f", tmp_path / "e", **opts, **changed)


def test_default_limits_are_documented() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "sources.md").read_text()
    assert f"{DEFAULT_MAX_IMAGE_BYTES:,}" in doc and f"{DEFAULT_MAX_IMAGE_PIXELS:,}" in doc


# ---------------------------------------------------------------------------------------------
# --root confinement


@pytest.fixture
def escaping_list(tmp_path: Path) -> tuple[Path, Path]:
    """A list under root/ naming images inside root, next to it via ``..``, by absolute path
    outside, and through a symlink inside root that leads outside."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_image(root / "in.jpg", 12)
    write_image(root / "sub" / "deeper.jpg", 13)
    write_image(outside / "secret.jpg", 14)
    os.symlink(outside / "secret.jpg", root / "link.jpg")
    os.symlink(root / "in.jpg", outside / "back.jpg")  # outside, but leads inside
    lst = root / "list.txt"
    lst.write_text(f"in.jpg\nsub/../sub/deeper.jpg\n../outside/secret.jpg\n"
                   f"{outside / 'secret.jpg'}\nlink.jpg\n{outside / 'back.jpg'}\n")
    return lst, root


def test_absolute_and_dotdot_paths_are_allowed_without_root(
        escaping_list: tuple[Path, Path], tmp_path: Path) -> None:
    lst, _ = escaping_list
    result = pairmine.embed(lst, tmp_path / "e", encoder="toy:0", workers=0)
    assert result.images == 6 and result.errors == 0


def test_root_confines_every_listed_path(escaping_list: tuple[Path, Path],
                                         tmp_path: Path) -> None:
    lst, root = escaping_list
    outside = tmp_path / "outside"
    result = pairmine.embed(lst, tmp_path / "e", encoder="toy:0", workers=0, root=root)
    assert embedded_keys(tmp_path / "e") == ["in.jpg", "sub/../sub/deeper.jpg",
                                             f"{outside / 'back.jpg'}"]
    errors = embed_errors(tmp_path / "e")
    assert result.errors == 3 and set(errors) == {
        "../outside/secret.jpg", f"{outside / 'secret.jpg'}", "link.jpg"}
    for key, error in errors.items():
        assert error.endswith(f"resolves to {outside / 'secret.jpg'}, outside --root {root}"), key
    assert manifest(tmp_path / "e")["config"]["root"] == str(root)


def test_root_checks_tar_shards_once(tmp_path: Path) -> None:
    _tar(tmp_path / "s.tar", {"a.png": png_bytes(3, (4, 4))})
    (tmp_path / "root").mkdir()
    with pytest.raises(SourceError, match=r"s.tar resolves to .*, outside --root"):
        open_source(tmp_path / "s.tar", root=tmp_path / "root")
    assert len(open_source(tmp_path / "s.tar", root=tmp_path)) == 1


# ---------------------------------------------------------------------------------------------
# folders: ImageFolder's classes, aliases, hidden folders, entries that are not files


def imagefolder_labels(root: Path) -> dict[str, int]:
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(root), loader=lambda path: path)
    return {os.path.relpath(path, root): label for path, label in ds.samples}


def our_labels(root: Path) -> dict[str, int]:
    src = open_source(root)
    refs = src.refs().to_pydict()
    return {k: lab for k, lab in zip(refs["key"], refs["label"], strict=True) if lab is not None}


def test_alias_of_a_class_folder_labels_like_imagefolder(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "tree"
    for c, name in enumerate(["cat", "dog"]):
        for i in range(3):
            write_image(root / name / f"{i}.jpg", 10 * c + i)
    write_image(root / "dog" / "deep" / "x.png", 99, fmt="PNG")
    os.symlink("cat", root / "zz_alias")  # `ln -s cat zz_alias`: a class of its own
    os.symlink(root / "dog" / "0.jpg", root / "cat" / "linked.jpg")  # a symlinked file
    with caplog.at_level(logging.WARNING, logger="pairmine.sources.folder"):
        mine = our_labels(root)
    theirs = imagefolder_labels(root)
    assert mine == theirs
    assert mine["cat/0.jpg"] == 0 and mine["zz_alias/0.jpg"] == 2  # cat keeps its own index
    src = open_source(root)
    assert src.class_names() == ["cat", "dog", "zz_alias"]
    # cat's 3 images + its linked file are reached twice, dog/0.jpg twice too: reported
    assert src.describe()["aliased_images"] == 5
    assert "5 images are reached through more than one path" in caplog.text


def test_hidden_folders_are_not_classes_and_are_counted(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "tree"
    for name in ["b", "c"]:
        write_image(root / name / "1.jpg", ord(name))
    write_image(root / ".ipynb_checkpoints" / "1-checkpoint.jpg", 1)  # would sort first
    write_image(root / "b" / ".cache" / "thumb.jpg", 2)
    write_image(root / "b" / "._1.jpg", 3)  # an AppleDouble file
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    with caplog.at_level(logging.WARNING, logger="pairmine.sources.folder"):
        src = open_source(root)
    assert src.class_names() == ["b", "c"]
    assert our_labels(root) == {"b/1.jpg": 0, "c/1.jpg": 1}
    # ImageFolder would make `.ipynb_checkpoints` class 0: the one documented deviation
    assert imagefolder_labels(root)["b/1.jpg"] == 1
    assert src.ignored() == {"hidden": 4}
    assert src.describe()["hidden_folders"] == [".ipynb_checkpoints"]
    assert "hidden folders .ipynb_checkpoints are not classes" in caplog.text


def test_every_folder_entry_is_an_image_or_ignored_with_its_reason(
        tmp_path: Path, deadline: None) -> None:
    root = tmp_path / "tree"
    write_image(root / "cat" / "ok.jpg", 20)
    write_image(root / "cat" / "ok2.png", 21, fmt="PNG")
    (root / "cat" / "notes.txt").write_text("x")
    os.symlink(root / "cat" / "gone.jpg", root / "cat" / "dangling.jpg")
    os.symlink("self.jpg", root / "cat" / "self.jpg")  # a link loop
    os.symlink(root, root / "cat" / "up")  # a folder link back up the tree
    os.mkfifo(root / "cat" / "fifo.jpg")
    sock = make_socket(root / "cat" / "sock.png")
    os.symlink("/dev/null", root / "cat" / "device.jpg")
    (root / ".hidden.jpg").write_bytes(b"x")
    try:
        src = open_source(root)
    finally:
        sock.close()
    assert [src.refs().column("key").to_pylist()] == [["cat/ok.jpg", "cat/ok2.png"]]
    ignored = src.ignored()
    assert ignored == {"dangling symlink": 1, "hidden": 1, "not a regular file (FIFO)": 1,
                       "not a regular file (character device)": 1,
                       "not a regular file (socket)": 1, "not an image extension": 1,
                       "symlink loop": 2}
    # everything considered is accounted for: 2 images + 8 ignored = the 10 entries made
    assert len(src) + sum(ignored.values()) == 10
    assert src.describe()["ignored"] == ignored


def test_ignored_counts_reach_the_manifest_and_the_cli(tmp_path: Path) -> None:
    from pairmine.cli import cli

    root = tmp_path / "tree"
    write_image(root / "a" / "1.jpg", 30)
    write_image(root / "a" / "2.jpg", 31)
    (root / "a" / "readme.md").write_text("x")
    os.symlink(root / "missing", root / "a" / "broken.jpg")
    (root / "a" / "huge.jpg").write_bytes((root / "a" / "1.jpg").read_bytes() + bytes(4000))
    out = tmp_path / "e"
    res = CliRunner().invoke(cli, ["embed", str(root), str(out), "--encoder", "toy:0",
                                    "--workers", "0", "--max-image-bytes", "3000"])
    assert res.exit_code == 0, res.output
    assert "ignored" in res.output and "2 (not images" in res.output
    source = manifest(out)["source"]
    assert source["ignored"] == {"dangling symlink": 1, "not an image extension": 1}
    assert "over the 3,000-byte cap" in embed_errors(out)["a/huge.jpg"]


# ---------------------------------------------------------------------------------------------
# WebDataset members whose names are not UTF-8


def test_non_utf8_tar_names_get_escaped_keys(tmp_path: Path) -> None:
    images = {"caf\xe9.jpg": png_bytes(5, (5, 5)), "dir/x\xff\xfe.png": png_bytes(6, (6, 6)),
              "back\\slash.png": png_bytes(7, (7, 7)), "ok.png": png_bytes(8, (8, 8)),
              "long_" + "\xe9" * 120 + ".png": png_bytes(9, (9, 9))}  # GNU long name: tarfile
    # latin-1: each of é, ÿ, þ is written as one byte that is not valid UTF-8
    _tar(tmp_path / "s.tar", images, encoding="latin-1")
    src = open_source(tmp_path / "s.tar")
    refs = src.refs().to_pydict()
    assert refs["key"] == ["caf\\xe9", "dir/x\\xff\\xfe", "back\\\\slash", "ok",
                           "long_" + "\\xe9" * 120]
    raw = [wds_mod.unescape_member(m) for m in refs["member"]]
    assert raw == [name.encode("latin-1") for name in images]  # reversible
    assert [src.read(i) for i in range(len(src))] == list(images.values())
    read = ref_reader("webdataset")
    assert [read(s, m)[0] for s, m in zip(refs["source"], refs["member"], strict=True)] == list(
        images.values())
    result = pairmine.embed(tmp_path / "s.tar", tmp_path / "e", encoder="toy:0", workers=0)
    assert result.images == 5 and embedded_keys(tmp_path / "e") == refs["key"]


def test_escape_is_identity_for_ordinary_names() -> None:
    for name in ["a.jpg", "dir/ünï.png", "日本.webp"]:
        assert wds_mod.escape_member(name) == name
        assert wds_mod.unescape_member(name) == name.encode("utf-8")


def test_tar_links_and_devices_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        data = png_bytes(1, (3, 3))
        info = tarfile.TarInfo("a.png")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        for name, kind in [("b.png", tarfile.SYMTYPE), ("c.png", tarfile.FIFOTYPE),
                           ("d.png", tarfile.CHRTYPE)]:
            member = tarfile.TarInfo(name)
            member.type, member.linkname = kind, "a.png"
            tf.addfile(member)
    src = open_source(path)
    assert len(src) == 1
    assert src.ignored() == {"not a regular file member (FIFO)": 1,
                             "not a regular file member (character device)": 1,
                             "not a regular file member (symlink)": 1}
