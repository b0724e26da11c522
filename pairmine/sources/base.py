"""The source contract and registry.

A source is an ordered, deterministic list of images. ``refs()`` returns one row per image
(columns ``key``, ``source``, ``member``, ``label``), in an order that depends only on the data
(never on worker count or batch size); ``read(i)`` returns image ``i``'s original encoded
bytes. Sources must pickle (they travel to DataLoader workers): open file handles lazily.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import SourceError

if TYPE_CHECKING:
    import pyarrow as pa


def REFS_SCHEMA() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([("key", pa.string()), ("source", pa.string()),
                      ("member", pa.string()), ("label", pa.int64())])


def refs_table(key: Sequence[str], source: Sequence[str], member: Sequence[str] | None,
               label: Sequence[int | None] | None) -> pa.Table:
    """A refs table in REFS_SCHEMA; ``None`` for ``member``/``label`` means all null."""
    import pyarrow as pa

    n = len(key)
    return pa.table({
        "key": pa.array(key, pa.string()),
        "source": pa.array(source, pa.string()),
        "member": pa.nulls(n, pa.string()) if member is None else pa.array(member, pa.string()),
        "label": pa.nulls(n, pa.int64()) if label is None else pa.array(label, pa.int64()),
    }, schema=REFS_SCHEMA())


def no_images(where: str, hint: str | None = None) -> SourceError:
    """The one error for a source that holds nothing to embed."""
    return SourceError(f"no images found in {where}", hint)


# (source, member) -> (original bytes, ext): fetches one image again from its meta columns
RefReader = Callable[[str, "str | None"], "tuple[bytes, str]"]


class ImageSource(ABC):
    """An ordered collection of images with stable keys."""

    kind: str = ""

    @abstractmethod
    def refs(self) -> pa.Table:
        """One row per image: key (stable, unique), source (absolute path of the file holding
        it), member (where inside that file; null for plain files), label (nullable int)."""

    @abstractmethod
    def read(self, index: int) -> bytes:
        """The original encoded bytes of image ``index`` (array sources: lossless PNG)."""

    def ext(self, index: int) -> str:
        """File extension of the encoded bytes, without dot (``jpg``, ``png``...)."""
        return "png"

    def describe(self) -> dict[str, Any]:
        """What the manifest records about this source."""
        return {"kind": self.kind}

    def class_names(self) -> list[str] | None:
        """Label index → class name, where the source knows it."""
        return None

    def __len__(self) -> int:
        return int(self.refs().num_rows)


# File extensions read as images (folder sources pick files by them; lowercase, no dot).
IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff",
                        "ppm", "pgm", "pbm"})

# leading bytes → extension, for files whose name carries none (file lists may hold such)
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF87a", "gif"),
    (b"GIF89a", "gif"), (b"BM", "bmp"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"),
    (b"P6", "ppm"), (b"P5", "pgm"), (b"P4", "pbm"),
)


def sniff_ext(head: bytes) -> str:
    """The extension an image format's leading bytes say (``bin`` when they say none)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    for magic, ext in _MAGIC:
        if head.startswith(magic):
            return ext
    return "bin"


def file_ext(path: str, head: bytes | None = None) -> str:
    """Lower-case extension of ``path`` (``jpeg`` stays ``jpeg``); sniffed from the leading
    bytes (read from ``path`` when not given) when the name has no image extension."""
    ext = Path(path).suffix[1:].lower()
    if ext in IMAGE_EXTS:
        return ext
    if head is None:
        try:
            with open(path, "rb") as f:
                head = f.read(16)
        except OSError:
            return ext or "bin"
    sniffed = sniff_ext(head)
    return sniffed if sniffed != "bin" or not ext else ext


def read_file(path: str) -> bytes:
    """The bytes of one plain image file; a file that vanished is a SourceError naming it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise SourceError(f"image file {path} no longer exists",
                          "was the source moved or deleted after embedding?") from None
    except OSError as exc:
        raise SourceError(f"cannot read image file {path}: {exc.strerror or exc}") from None


def plain_file_reader() -> RefReader:
    """The ref reader of sources whose images are plain files (``source`` = the file)."""

    def read(source: str, member: str | None) -> tuple[bytes, str]:
        data = read_file(source)
        return data, file_ext(source, data[:16])

    return read


@dataclass(frozen=True)
class SourceKind:
    name: str
    detect: Callable[[str], bool]  # does this spec look like this kind?
    open: Callable[[str, bool], ImageSource]  # (spec, labels) -> source
    help: str
    # a factory of readers that fetch one image again from its stored (source, member) pair,
    # returning (original bytes, ext); readers may cache (tar indexes, arrays) between calls.
    # Later stages (export, show) use it through `ref_reader(kind)`.
    ref_reader: Callable[[], RefReader]


SOURCES: dict[str, SourceKind] = {}


def register_source(kind: SourceKind) -> SourceKind:
    SOURCES[kind.name] = kind
    return kind


def _load_builtin() -> None:
    # importing the modules registers their kinds; order = detection priority
    from pairmine.sources import arrays, filelist, folder, wds  # noqa: F401


def absolute_spec(spec: str | Path) -> str:
    """``spec`` with every path made absolute, patterns kept: each ``::`` part, and in a brace
    pattern the folders before the first brace (``shards/x-{0..9}.tar`` →
    ``/abs/shards/x-{0..9}.tar``). What the embeddings manifest should record."""
    parts = []
    for part in str(spec).split("::"):
        brace = part.find("{")
        if brace < 0:
            parts.append(os.path.abspath(part))
            continue
        cut = part.rfind("/", 0, brace)
        head = os.path.abspath(part[:cut] if cut > 0 else "/" if cut == 0 else ".")
        parts.append(head.rstrip("/") + "/" + part[cut + 1:])
    return "::".join(parts)


def ref_reader(kind: str) -> RefReader:
    """A reader of images by their (source, member) meta columns, for a store of ``kind``."""
    _load_builtin()
    if kind not in SOURCES:
        raise SourceError(f"unknown source kind {kind!r} recorded in the store")
    return SOURCES[kind].ref_reader()


def open_source(spec: str | Path, *, labels: bool = True, kind: str | None = None) -> ImageSource:
    """Open an image source. ``kind`` forces one registered kind; else it is detected."""
    _load_builtin()
    spec = str(spec)
    if kind is not None:
        if kind not in SOURCES:
            raise SourceError(f"unknown source kind {kind!r}",
                              f"choose one of: {', '.join(sorted(SOURCES))}")
        return SOURCES[kind].open(spec, labels)
    # brace patterns and "::"-joined shard lists name several paths: their kind checks them
    if "{" not in spec and "::" not in spec and not Path(spec).exists():
        raise SourceError(f"source {spec} does not exist", "check the path")
    for candidate in SOURCES.values():
        if candidate.detect(spec):
            return candidate.open(spec, labels)
    raise SourceError(f"cannot tell what kind of image source {spec} is",
                      "give an image folder, a .txt/.csv/.parquet file list, .tar shards, "
                      "or a CIFAR/STL-10 folder")
