"""The export store's layout: file names, sample keys, tar members, Parquet schemas.

An export (``format: pairmine/export``) holds ``spps.parquet`` (one row per pair),
``images.parquet`` (combined exports: one row per original image) and, for the webdataset
format, ``shards/spps-NNNNNN.tar`` with one index ``shards/spps-NNNNNN.parquet`` per tar.
docs/export.md describes the format for readers outside pairmine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

SHARDS_DIR = "shards"
SHARD_PREFIX = "spps"
SHARD_WIDTH = 6
SPPS_FILE = "spps.parquet"
IMAGES_FILE = "images.parquet"
PROBLEMS_FILE = "problems.json"  # in .partial/: the full list when bad sources stop an export

KIND_PAIR = "pair"
KIND_IMAGE = "image"

# member names inside a sample (the part after the key's dot)
ANCHOR = "anchor"
POSITIVE = "positive"
IMAGE = "image"
JSON = "json"

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


def shard_stem(index: int) -> str:
    return f"{SHARDS_DIR}/{SHARD_PREFIX}-{index:0{SHARD_WIDTH}d}"


def shard_tar(index: int) -> str:
    """``shard_tar(3) == "shards/spps-000003.tar"`` (relative to the export)."""
    return shard_stem(index) + ".tar"


def shard_index(index: int) -> str:
    return shard_stem(index) + ".parquet"


def pair_key(pair_id: int) -> str:
    """The ``__key__`` of a pair sample. Keys never hold dots: WebDataset splits the member
    name at the first dot of its base name."""
    return f"pair-{pair_id:09d}"


def image_key(image_id: int) -> str:
    return f"image-{image_id:09d}"


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


# ---------------------------------------------------------------------------------------------
# schemas


def INDEX_SCHEMA() -> pa.Schema:  # a constant, built lazily to keep pyarrow lazy
    """One row per sample of a shard, in tar order.

    ``a``/``b`` are embeddings-store ids (``b`` null for image samples); ``name_*``,
    ``offset_*``, ``size_*`` and ``sha256_*`` locate and check each member's data in the tar.
    """
    import pyarrow as pa

    return pa.schema([
        ("key", pa.string()),
        ("kind", pa.string()),
        ("position", pa.int64()),
        ("pair_id", pa.int64()),
        ("a", pa.int64()),
        ("b", pa.int64()),
        ("score", pa.float32()),
        ("key_a", pa.string()),
        ("key_b", pa.string()),
        ("label_a", pa.int64()),
        ("label_b", pa.int64()),
        ("offset", pa.int64()),
        ("size", pa.int64()),
        ("name_a", pa.string()),
        ("offset_a", pa.int64()),
        ("size_a", pa.int64()),
        ("sha256_a", pa.string()),
        ("name_b", pa.string()),
        ("offset_b", pa.int64()),
        ("size_b", pa.int64()),
        ("sha256_b", pa.string()),
        ("offset_json", pa.int64()),
        ("size_json", pa.int64()),
        ("sha256_json", pa.string()),
    ])


def SPPS_SCHEMA() -> pa.Schema:
    """``spps.parquet``: one row per pair, ordered by ``pair_id``.

    ``source_*``/``member_*`` say where the original image lives (as in the embeddings
    store); ``shard``/``sample_key`` where the pair landed (null for the parquet format).
    """
    import pyarrow as pa

    return pa.schema([
        ("pair_id", pa.int64()),
        ("a", pa.int64()),
        ("b", pa.int64()),
        ("score", pa.float32()),
        ("key_a", pa.string()),
        ("key_b", pa.string()),
        ("source_a", pa.string()),
        ("source_b", pa.string()),
        ("member_a", pa.string()),
        ("member_b", pa.string()),
        ("label_a", pa.int64()),
        ("label_b", pa.int64()),
        ("sha256_a", pa.string()),
        ("sha256_b", pa.string()),
        ("shard", pa.string()),
        ("sample_key", pa.string()),
    ])


def IMAGES_SCHEMA() -> pa.Schema:
    """``images.parquet`` (combined exports): one row per original image, ordered by id."""
    import pyarrow as pa

    return pa.schema([
        ("id", pa.int64()),
        ("key", pa.string()),
        ("source", pa.string()),
        ("member", pa.string()),
        ("label", pa.int64()),
        ("sha256", pa.string()),
        ("shard", pa.string()),
        ("sample_key", pa.string()),
    ])
