"""The source contract and registry.

A source is an ordered, deterministic list of images. ``refs()`` returns one row per image
(columns ``key``, ``source``, ``member``, ``label``), in an order that depends only on the data
(never on worker count or batch size); ``read(i)`` returns image ``i``'s original encoded
bytes. Sources must pickle (they travel to DataLoader workers): open file handles lazily.
"""

from __future__ import annotations

import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pairmine.errors import ConfigError, SourceError
from pairmine.registry import Builtin, Registry
from pairmine.sources.files import (
    DEFAULT_MAX_IMAGE_BYTES,
    ImageFileMissing,
    is_inside,
    read_file,
    read_head,
    real_root,
)

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


class RefReader(Protocol):
    """Fetches one image again from its meta columns: (source, member) -> (original bytes,
    ext). ``place`` is the store's (``member_offset``, ``member_size``) of the row where it has
    them (``stores.PLACE_COLUMNS``), a hint the reader may use instead of looking the member
    up; callers pass it only when it is known, so a two-argument reader serves stores
    without those columns."""

    def __call__(self, source: str, member: str | None, /, *,
                 place: tuple[int, int] | None = None) -> tuple[bytes, str]: ...


def read_ref(read: RefReader, source: Any, member: str | None,
             place: tuple[int, int] | None) -> tuple[bytes, str]:
    """``read(source, member)``, with the place hint only when there is one (a plugin's
    two-argument reader never gets it: its stores have no place columns)."""
    return read(source, member) if place is None else read(source, member, place=place)


class ImageSource(ABC):
    """An ordered collection of images with stable keys."""

    kind: str = ""
    # Read limits (set by open_source / limit()): every kind that reads image files refuses
    # one over max_image_bytes, and with confine_to set one that resolves outside it.
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    confine_to: str | None = None  # --root as a real_root(): absolute, symlinks resolved

    @abstractmethod
    def refs(self) -> pa.Table:
        """One row per image: key (stable, unique), source (absolute path of the file holding
        it), member (where inside that file; null for plain files), label (nullable int)."""

    def refs_listing(self) -> Any:
        """The refs as the embed stage reads them: ``num_rows``, ``take(indices)``,
        ``column(name)``, ``slice(offset, length)``. The refs table itself by default; a
        source of millions of entries returns a listing on disk (``sources.listing``)."""
        return self.refs()

    @abstractmethod
    def read(self, index: int) -> bytes:
        """The original encoded bytes of image ``index`` (array sources: lossless PNG)."""

    def ext(self, index: int) -> str:
        """File extension of the encoded bytes, without dot (``jpg``, ``png``...)."""
        return "png"

    def places(self, indices: Sequence[int]) -> pa.Table | None:
        """Where the images ``indices`` lie inside their ``source`` (``stores.PLACE_COLUMNS``:
        byte offset and size), for kinds read by offset; None for the others. The embed stage
        records them in the store, so that export and show read by offset, never by index."""
        return None

    def describe(self) -> dict[str, Any]:
        """What the manifest records about this source."""
        return {"kind": self.kind}

    def class_names(self) -> list[str] | None:
        """Label index → class name, where the source knows it."""
        return None

    def __len__(self) -> int:
        return int(self.refs().num_rows)

    def limit(self, *, max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
              root: str | os.PathLike[str] | None = None) -> None:
        """Set the read limits. Kinds that hold their images in a few container files
        (tars, arrays) check those against ``root`` here, once."""
        if max_image_bytes < 1:
            raise ConfigError(f"--max-image-bytes must be at least 1, not {max_image_bytes}")
        self.max_image_bytes = max_image_bytes
        self.confine_to = None if root is None else real_root(root)
        if self.confine_to is not None:
            for path in self.container_files():
                real = os.path.realpath(path)
                if not is_inside(real, self.confine_to):
                    raise SourceError(f"{path} resolves to {real}, outside --root "
                                      f"{self.confine_to}",
                                      "give a --root that holds the whole source")

    def container_files(self) -> list[str]:
        """The files that hold many images each (tar shards, array files), read at open time
        already: --root is checked on them once, not image by image."""
        return []

    def ignored(self) -> dict[str, int]:
        """Files (or tar members) the source looked at and did not make images of, counted
        by reason (``{"not an image extension": 3, "hidden": 2}``). Every file a source
        considers is an image, or counted here: nothing is skipped silently."""
        return {}


# File extensions read as images, the one list every reader uses (folder sources pick files
# by them; a WebDataset sample or training pair holding several takes the first; lowercase).
IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff",
                               "ppm", "pgm", "pbm")

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
        head = read_head(path)  # regular files only: a FIFO named in a list must not block
    sniffed = sniff_ext(head)
    return sniffed if sniffed != "bin" or not ext else ext


def plain_file_reader() -> RefReader:
    """The ref reader of sources whose images are plain files (``source`` = the file).
    Regular files only, but no size cap: the file passed embed's cap (whatever it was set to)
    already. A file missing now was there at embed time: it vanished."""

    def read(source: str, member: str | None, /, *,
             place: tuple[int, int] | None = None) -> tuple[bytes, str]:
        try:
            data = read_file(source, max_bytes=sys.maxsize)
        except ImageFileMissing:
            raise SourceError(f"image file {source} no longer exists",
                              "was the source moved or deleted after embedding?") from None
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


def _source_registry() -> Registry[SourceKind]:
    # detection priority: the specific kinds first; `folder` claims any directory, so last
    builtins = [Builtin("cifar", "pairmine.sources.arrays"),
                Builtin("stl10", "pairmine.sources.arrays"),
                Builtin("list", "pairmine.sources.filelist"),
                Builtin("webdataset", "pairmine.sources.wds"),
                Builtin("folder", "pairmine.sources.folder", priority=0),
                # stores made by `pairmine import`: read back, never detected
                Builtin("imported", "pairmine.sources.imported", priority=-1)]
    return Registry("sources", builtins, name_of=lambda k: k.name, help_of=lambda k: k.help,
                    error=SourceError, what="source kind")


SOURCES = _source_registry()


def register_source(kind: SourceKind, *, priority: int | None = None) -> SourceKind:
    """Register a source kind (built-in modules call this when imported; a plugin may instead
    be an entry point in the group ``pairmine.sources``). ``priority`` orders detection."""
    return SOURCES.register(kind, priority=priority)


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
    if kind not in SOURCES:
        raise SourceError(f"unknown source kind {kind!r} recorded in the store",
                          f"known kinds: {', '.join(SOURCES.names())}")
    return SOURCES.get(kind).ref_reader()


def check_root(root: str | os.PathLike[str] | None) -> None:
    """A --root must be an existing folder: a typo must not confine to nothing."""
    if root is not None and not os.path.isdir(root):
        raise ConfigError(f"--root {root} is not an existing folder",
                          "give the folder every listed image must lie in")


def open_source(spec: str | Path, *, labels: bool = True, kind: str | None = None,
                max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                root: str | os.PathLike[str] | None = None) -> ImageSource:
    """Open an image source. ``kind`` forces one registered kind; else it is detected.
    ``max_image_bytes`` caps each image file read; with ``root``, every image file must
    resolve (after symlinks) inside that folder (see ImageSource.limit)."""
    check_root(root)
    if max_image_bytes < 1:
        raise ConfigError(f"--max-image-bytes must be at least 1, not {max_image_bytes}")
    src = _open(str(spec), labels, kind)
    src.limit(max_image_bytes=max_image_bytes, root=root)
    return src


def _open(spec: str, labels: bool, kind: str | None) -> ImageSource:
    if kind is not None:
        return SOURCES.get(kind).open(spec, labels)
    # brace patterns and "::"-joined shard lists name several paths: their kind checks them
    if "{" not in spec and "::" not in spec and not Path(spec).exists():
        raise SourceError(f"source {spec} does not exist", "check the path")
    for candidate in SOURCES.ordered():  # by priority: `folder` comes last
        if candidate.detect(spec):
            return candidate.open(spec, labels)
    raise SourceError(f"cannot tell what kind of image source {spec} is",
                      "give an image folder, a .txt/.csv/.parquet file list, .tar shards, "
                      "or a CIFAR/STL-10 folder")
