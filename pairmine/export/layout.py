"""The export writer's side of the export store's layout: tar header fields, the resume
metadata of a shard index, member names and where members land in a tar.

The store's contract (file names, shard naming, sample kinds, member roles, the Parquet
schemas) lives in ``pairmine.stores.export``, with the typed manifest and the one reader;
its names are imported here so that ``lay.SPPS_FILE`` and the like keep working in the writer.
"""

from __future__ import annotations

from dataclasses import dataclass

from pairmine.stores.export import (  # the store's contract, re-exported for the writer
    ANCHOR,
    IMAGE,
    IMAGES_FILE,
    IMAGES_SCHEMA,
    INDEX_SCHEMA,
    JSON,
    KIND_IMAGE,
    KIND_PAIR,
    PAIRS_VIEW_DIR,
    POSITIVE,
    SHARD_PREFIX,
    SHARD_WIDTH,
    SHARDS_DIR,
    SPPS_FILE,
    SPPS_SCHEMA,
    image_key,
    pair_key,
    shard_index,
    shard_stem,
    shard_tar,
)

PROBLEMS_FILE = "problems.json"  # in .partial/: the full list when bad sources stop an export

# fixed tar header fields: an export is reproducible byte for byte
TAR_MTIME = 0  # an int: a float mtime makes tarfile add a PAX header per member
TAR_MODE = 0o444
TAR_USER = ""
TAR_GROUP = ""
BLOCK = 512
END_OF_ARCHIVE = 2 * BLOCK
# the longest member name one plain USTAR header holds; sample keys stay far below it, so
# every member costs exactly one header block and offsets can be computed, not searched
MAX_MEMBER_NAME = 99

# parquet key-value metadata of a shard index: what a resumed run needs from finished shards
META_NEXT_POSITION = b"pairmine.next_position"
META_TAR_SHA256 = b"pairmine.tar_sha256"
META_TAR_BYTES = b"pairmine.tar_bytes"
META_SKIPPED = b"pairmine.skipped"


_EXT_ALIASES = {"jpeg": "jpg", "jpe": "jpg", "tif": "tiff"}


def normalise_ext(ext: str) -> str:
    """``.JPEG`` → ``jpg``: one spelling per format, so a trainer can ask for ``anchor.jpg``.
    Only the member name changes; the bytes are the original ones."""
    ext = ext.lower().rsplit(".", 1)[-1]  # "cls.jpg"-style WebDataset suffixes: the last part
    if not ext or "/" in ext or len(ext) > 8:  # not an image extension: keep names short
        return "bin"
    return _EXT_ALIASES.get(ext, ext)


def padded(size: int) -> int:
    """Bytes a member's data takes in a tar (rounded up to whole 512-byte blocks)."""
    return -(-size // BLOCK) * BLOCK


@dataclass(frozen=True)
class MemberSpan:
    name: str  # full member name, e.g. "pair-000000007.anchor.jpg"
    offset: int  # where the data starts in the tar
    size: int


def member_spans(key: str, start: int, members: dict[str, int]) -> list[MemberSpan]:
    """Where each member's data lands when a sample starting at byte ``start`` is written.

    WebDataset's TarWriter writes a sample's members sorted by name, each as one header
    block followed by its data padded to whole blocks.
    """
    spans = []
    pos = start
    for suffix in sorted(members):
        name = f"{key}.{suffix}"
        if len(name) > MAX_MEMBER_NAME:
            raise ValueError(f"tar member name too long for one header: {name}")
        size = members[suffix]
        spans.append(MemberSpan(name=name, offset=pos + BLOCK, size=size))
        pos += BLOCK + padded(size)
    return spans


__all__ = [
    "ANCHOR", "BLOCK", "END_OF_ARCHIVE", "IMAGE", "IMAGES_FILE", "IMAGES_SCHEMA", "INDEX_SCHEMA",
    "JSON", "KIND_IMAGE", "KIND_PAIR", "MAX_MEMBER_NAME", "META_NEXT_POSITION", "META_SKIPPED",
    "META_TAR_BYTES", "META_TAR_SHA256", "PAIRS_VIEW_DIR", "POSITIVE", "PROBLEMS_FILE",
    "SHARDS_DIR", "SHARD_PREFIX", "SHARD_WIDTH", "SPPS_FILE", "SPPS_SCHEMA", "TAR_GROUP",
    "TAR_MODE", "TAR_MTIME", "TAR_USER",
    "MemberSpan", "image_key", "member_spans", "normalise_ext", "padded", "pair_key",
    "shard_index", "shard_stem", "shard_tar",
]
