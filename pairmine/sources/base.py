"""The source contract and registry.

A source is an ordered, deterministic list of images. ``refs()`` returns one row per image
(columns ``key``, ``source``, ``member``, ``label``), in an order that depends only on the data
(never on worker count or batch size); ``read(i)`` returns image ``i``'s original encoded
bytes. Sources must pickle (they travel to DataLoader workers): open file handles lazily.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import SourceError

if TYPE_CHECKING:
    import pyarrow as pa


def REFS_SCHEMA() -> pa.Schema:  # noqa: N802
    import pyarrow as pa

    return pa.schema([("key", pa.string()), ("source", pa.string()),
                      ("member", pa.string()), ("label", pa.int64())])


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


@dataclass(frozen=True)
class SourceKind:
    name: str
    detect: Callable[[str], bool]  # does this spec look like this kind?
    open: Callable[[str, bool], ImageSource]  # (spec, labels) -> source
    help: str


SOURCES: dict[str, SourceKind] = {}


def register_source(kind: SourceKind) -> SourceKind:
    SOURCES[kind.name] = kind
    return kind


def _load_builtin() -> None:
    # importing the modules registers their kinds; order = detection priority
    from pairmine.sources import arrays, filelist, folder, wds  # noqa: F401


def open_source(spec: str | Path, *, labels: bool = True, kind: str | None = None) -> ImageSource:
    """Open an image source. ``kind`` forces one registered kind; else it is detected."""
    _load_builtin()
    spec = str(spec)
    if kind is not None:
        if kind not in SOURCES:
            raise SourceError(f"unknown source kind {kind!r}",
                              f"choose one of: {', '.join(sorted(SOURCES))}")
        return SOURCES[kind].open(spec, labels)
    if "{" not in spec and not Path(spec).exists():
        raise SourceError(f"source {spec} does not exist", "check the path")
    for candidate in SOURCES.values():
        if candidate.detect(spec):
            return candidate.open(spec, labels)
    raise SourceError(f"cannot tell what kind of image source {spec} is",
                      "give an image folder, a .txt/.csv/.parquet file list, .tar shards, "
                      "or a CIFAR/STL-10 folder")
