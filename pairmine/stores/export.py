"""The export store: ``spps.parquet`` (one row per pair), ``images.parquet`` (combined exports),
for the webdataset format ``shards/spps-NNNNNN.tar`` with one index ``shards/spps-NNNNNN.parquet``
per tar, ``manifest.json`` last. docs/export.md describes it for readers outside pairmine.

This module is the store's contract: the layout constants and schemas readers need, the typed
manifest (``ExportManifest``) and the one reader (``open_export``), whose shard index comes from
the export's own Parquet index files (no tar is scanned). The writer-only parts (tar header
fields, resume metadata, member name rules) live with the writer, ``pairmine.export.layout``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from pairmine.errors import StoreError
from pairmine.stores.embeddings import PLACE_COLUMNS
from pairmine.stores.run import MANIFEST, damaged, read_json, read_manifest

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

EXPORT_FORMAT = "pairmine/export"

SHARDS_DIR = "shards"
SHARD_PREFIX = "spps"
SHARD_WIDTH = 6
SPPS_FILE = "spps.parquet"
IMAGES_FILE = "images.parquet"
# a combined shard export also holds its pairs alone, in pair order, as shards of their own
# under this folder (the manifest's ``pairs_view``): pairs and images share the combined
# shards, and a reader that wants the pairs alone (the dataset card's default config, a
# pairs-only trainer) needs files that hold nothing else
PAIRS_VIEW_DIR = "pairs"

# sample kinds (the index's ``kind`` column and the ``kind`` of a sample's json)
KIND_PAIR = "pair"
KIND_IMAGE = "image"
SAMPLE_KINDS = (KIND_PAIR, KIND_IMAGE)

# member roles inside a sample: the part of the member name after the key's dot
ANCHOR = "anchor"
POSITIVE = "positive"
IMAGE = "image"
JSON = "json"


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


# ---------------------------------------------------------------------------------------------
# schemas (constants, built lazily to keep pyarrow lazy)


def INDEX_SCHEMA() -> pa.Schema:
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


def SPPS_SCHEMA(places: bool = False) -> pa.Schema:
    """``spps.parquet``: one row per pair, ordered by ``pair_id``.

    ``source_*``/``member_*`` say where the original image lives (as in the embeddings
    store); ``shard``/``sample_key`` where the pair landed (null for the parquet format).
    With ``places`` (a store that records them: WebDataset sources) the
    ``member_offset_*``/``member_size_*`` columns follow, where the image's bytes lie in its
    tar.
    """
    import pyarrow as pa

    return _with_places(places, ("_a", "_b"), pa.schema([
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
    ]))


def IMAGES_SCHEMA(places: bool = False) -> pa.Schema:
    """``images.parquet`` (combined exports): one row per original image, ordered by id;
    with ``places``, ``member_offset`` and ``member_size`` follow (see :func:`SPPS_SCHEMA`)."""
    import pyarrow as pa

    return _with_places(places, ("",), pa.schema([
        ("id", pa.int64()),
        ("key", pa.string()),
        ("source", pa.string()),
        ("member", pa.string()),
        ("label", pa.int64()),
        ("sha256", pa.string()),
        ("shard", pa.string()),
        ("sample_key", pa.string()),
    ]))


def table_places(columns: Mapping[str, list[Any]], side: str) -> list[tuple[int, int] | None]:
    """Each row's (``member_offset``, ``member_size``) on one side (``""``, ``"_a"``,
    ``"_b"``) of an export table read as lists (``to_pydict()``); Nones when the table has no
    place columns (an export of a source that records none, or of an older store)."""
    offset, size = (f"{name}{side}" for name in PLACE_COLUMNS)
    if offset not in columns or size not in columns:
        return [None] * len(columns[f"source{side}"])
    return [None if o is None or n is None else (int(o), int(n))
            for o, n in zip(columns[offset], columns[size], strict=True)]


def _with_places(places: bool, sides: tuple[str, ...], schema: pa.Schema) -> pa.Schema:
    import pyarrow as pa

    if not places:
        return schema
    return pa.schema(list(schema) + [pa.field(name + side, pa.int64())
                                     for name in PLACE_COLUMNS for side in sides])


# ---------------------------------------------------------------------------------------------
# the manifest
#
# Every record's ``to_json`` lists its keys in the order ``manifest.json`` holds them (the
# store writes JSON with sorted keys), so ``from_json(m).to_json() == m``, key order included.

T = TypeVar("T")


class _Fields:
    """Typed reads of one JSON record; a wrong or missing value is the store's one damage
    error, naming the record (``where``) and the key."""

    def __init__(self, obj: Any, where: str, bad: Callable[[str], StoreError]) -> None:
        if not isinstance(obj, dict):
            raise bad(f"{where} is not a record")
        self.obj: dict[str, Any] = obj
        self.where = where
        self.bad = bad

    def get(self, key: str, kind: type[T], *, optional: bool = False) -> T:
        value = self.obj.get(key)
        if value is None and optional and key in self.obj:
            return value  # type: ignore[return-value]  # an explicit null
        # bool is an int in Python; a flag is never a count and a count never a flag
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.bad(f"{self.where}{key!r} is missing or not {kind.__name__}")
        return value

    def count(self, key: str) -> int:
        value = self.get(key, int)
        if value < 0:
            raise self.bad(f"{self.where}{key!r} is negative ({value})")
        return value

    def relative(self, key: str) -> str:
        """A file path inside the export: relative, never leaving it."""
        value = self.get(key, str)
        parts = PurePosixPath(value).parts
        if not parts or PurePosixPath(value).is_absolute() or ".." in parts:
            raise self.bad(f"{self.where}{key!r} ({value!r}) is not a path inside the export")
        return value


@dataclass(frozen=True)
class ExportOptionsRecord:
    """``config``: the options that determined the export's bytes."""

    combined: bool
    format: str
    max_shard_bytes: int | None
    seed: int
    shard_size: int
    shuffle: bool
    skip_missing: bool

    @classmethod
    def from_json(cls, f: _Fields) -> ExportOptionsRecord:
        return cls(combined=f.get("combined", bool), format=f.get("format", str),
                   max_shard_bytes=f.get("max_shard_bytes", int, optional=True),
                   seed=f.count("seed"), shard_size=f.count("shard_size"),
                   shuffle=f.get("shuffle", bool), skip_missing=f.get("skip_missing", bool))

    def to_json(self) -> dict[str, Any]:
        return {"combined": self.combined, "format": self.format,
                "max_shard_bytes": self.max_shard_bytes, "seed": self.seed,
                "shard_size": self.shard_size, "shuffle": self.shuffle,
                "skip_missing": self.skip_missing}


@dataclass(frozen=True)
class ExportCounts:
    """``counts``: what the export holds and what it left out. ``bytes`` is the tar bytes of a
    shard export, 0 for a parquet export."""

    bytes: int
    images: int
    images_in_store: int
    pairs: int
    pairs_both_orders: int
    pairs_in_store: int
    samples: int
    skipped_images: int
    skipped_pairs: int

    @classmethod
    def from_json(cls, f: _Fields) -> ExportCounts:
        counts = cls(**{name: f.count(name) for name in cls.__dataclass_fields__})
        if counts.samples != counts.pairs + counts.images:
            raise f.bad(f"counts: {counts.samples} samples are not {counts.pairs} pairs + "
                        f"{counts.images} images")
        if counts.pairs_both_orders != 2 * counts.pairs:
            raise f.bad(f"counts: pairs_both_orders {counts.pairs_both_orders} is not twice "
                        f"{counts.pairs} pairs")
        return counts

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class InputRecord:
    """How the export names an input store: its path and the sha256 of its manifest."""

    manifest_sha256: str
    path: str

    @classmethod
    def from_json(cls, f: _Fields) -> InputRecord:
        return cls(manifest_sha256=f.get("manifest_sha256", str), path=f.get("path", str))

    def to_json(self) -> dict[str, Any]:
        return {"manifest_sha256": self.manifest_sha256, "path": self.path}


@dataclass(frozen=True)
class ExportInputs:
    embeddings: InputRecord
    pairs: InputRecord

    def to_json(self) -> dict[str, Any]:
        return {"embeddings": self.embeddings.to_json(), "pairs": self.pairs.to_json()}


@dataclass(frozen=True)
class ExportShard:
    """One tar shard as the manifest lists it: its tar and index (relative to the export),
    what it holds, and the sha256 of both files."""

    bytes: int
    images: int
    index: str
    index_sha256: str
    pairs: int
    samples: int
    sha256: str
    tar: str

    @classmethod
    def from_json(cls, f: _Fields) -> ExportShard:
        shard = cls(bytes=f.count("bytes"), images=f.count("images"), index=f.relative("index"),
                    index_sha256=f.get("index_sha256", str), pairs=f.count("pairs"),
                    samples=f.count("samples"), sha256=f.get("sha256", str),
                    tar=f.relative("tar"))
        if shard.samples != shard.pairs + shard.images:
            raise f.bad(f"{f.where}{shard.samples} samples are not {shard.pairs} pairs + "
                        f"{shard.images} images")
        return shard

    def to_json(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "images": self.images, "index": self.index,
                "index_sha256": self.index_sha256, "pairs": self.pairs,
                "samples": self.samples, "sha256": self.sha256, "tar": self.tar}


@dataclass(frozen=True)
class ExportFile:
    """A table of the export (``spps.parquet``, ``images.parquet``): its rows and sha256."""

    rows: int
    sha256: str

    @classmethod
    def from_json(cls, f: _Fields) -> ExportFile:
        return cls(rows=f.count("rows"), sha256=f.get("sha256", str))

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "sha256": self.sha256}


@dataclass(frozen=True)
class Problem:
    """A source image an export could not use: gone or unreadable (``missing``), or its bytes
    no longer hash to what embed recorded (``changed``). The export stops on the first one,
    or, under --skip-missing, leaves out the samples that use it and lists it in the
    manifest's ``skipped``."""

    detail: str
    id: int
    key: str
    member: str | None
    reason: str
    source: str

    def where(self) -> str:
        if not self.source:  # a row imported without an image file: its key names it
            return f"{self.key} (no image file)"
        return self.source if self.member is None else f"{self.source}::{self.member}"

    @classmethod
    def from_json(cls, f: _Fields) -> Problem:
        return cls(detail=f.get("detail", str), id=f.count("id"), key=f.get("key", str),
                   member=f.get("member", str, optional=True), reason=f.get("reason", str),
                   source=f.get("source", str))

    def to_json(self) -> dict[str, Any]:
        return {"detail": self.detail, "id": self.id, "key": self.key, "member": self.member,
                "reason": self.reason, "source": self.source}


@dataclass(frozen=True)
class ExportManifest:
    """An export's ``manifest.json``, typed and validated (``from_json``), written back
    unchanged (``to_json``).

    ``source`` is the embeddings store's description of its image source, kept as written
    (its keys depend on the source kind; ``kind`` names it). ``extra`` holds top-level keys
    this version does not know, so that reading and writing a manifest loses nothing.
    """

    class_names: tuple[str, ...] | None
    config: ExportOptionsRecord
    counts: ExportCounts
    export_format: str
    files: dict[str, ExportFile]
    inputs: ExportInputs
    pairmine_version: str
    shards: tuple[ExportShard, ...]
    skipped: tuple[Problem, ...]
    source: dict[str, Any]
    version: int
    pairs_view: tuple[ExportShard, ...] = ()  # combined shard exports: the pairs alone
    extra: dict[str, Any] = field(default_factory=dict)

    format = EXPORT_FORMAT

    @property
    def source_kind(self) -> str:
        """The source kind of the original images (how ``member`` references are read)."""
        return str(self.source["kind"])

    @classmethod
    def from_json(cls, obj: dict[str, Any], store: str | os.PathLike[str]) -> ExportManifest:
        """Validate ``obj`` (the manifest of the export at ``store``); a damaged manifest is
        one StoreError naming the file, what is wrong and how to re-create it."""
        def bad(reason: str) -> StoreError:
            return damaged(Path(store), MANIFEST, reason, EXPORT_FORMAT)

        top = _Fields(obj, "", bad)
        if top.get("format", str) != EXPORT_FORMAT:
            raise bad(f"'format' is {obj['format']!r}, not {EXPORT_FORMAT!r}")
        names = top.get("class_names", list, optional=True)
        if names is not None and not all(isinstance(n, str) for n in names):
            raise bad("'class_names' is not a list of names")
        source = top.get("source", dict)
        if not isinstance(source.get("kind"), str):
            raise bad("'source' names no source kind")
        inputs = _Fields(top.get("inputs", dict), "inputs: ", bad)
        files = {name: ExportFile.from_json(_Fields(rec, f"files: {name}: ", bad))
                 for name, rec in top.get("files", dict).items()}
        if SPPS_FILE not in files:
            raise bad(f"'files' lists no {SPPS_FILE}")
        manifest = cls(
            class_names=None if names is None else tuple(names),
            config=ExportOptionsRecord.from_json(_Fields(top.get("config", dict), "config: ",
                                                         bad)),
            counts=ExportCounts.from_json(_Fields(top.get("counts", dict), "counts: ", bad)),
            export_format=top.get("export_format", str),
            files=files,
            inputs=ExportInputs(
                embeddings=InputRecord.from_json(_Fields(inputs.get("embeddings", dict),
                                                         "inputs: embeddings: ", bad)),
                pairs=InputRecord.from_json(_Fields(inputs.get("pairs", dict),
                                                    "inputs: pairs: ", bad))),
            pairmine_version=top.get("pairmine_version", str),
            shards=tuple(ExportShard.from_json(_Fields(rec, f"shard record {i}: ", bad))
                         for i, rec in enumerate(top.get("shards", list))),
            skipped=tuple(Problem.from_json(_Fields(rec, f"skipped record {i}: ", bad))
                          for i, rec in enumerate(top.get("skipped", list))),
            source=source,
            version=top.count("version"),
            pairs_view=tuple(ExportShard.from_json(_Fields(rec, f"pairs view shard {i}: ", bad))
                             for i, rec in enumerate(top.get("pairs_view", list)
                                                     if "pairs_view" in obj else [])),
            extra={k: v for k, v in obj.items() if k not in _KEYS},
        )
        manifest._check_totals(bad)
        return manifest

    def _check_totals(self, bad: Callable[[str], StoreError]) -> None:
        if not self.shards:
            return  # a parquet export: its tables are its data
        for name in ("samples", "pairs", "images", "bytes"):
            total = sum(getattr(s, name) for s in self.shards)
            if total != getattr(self.counts, name):
                raise bad(f"the shard records hold {total} {name}, 'counts' says "
                          f"{getattr(self.counts, name)}")
        if self.pairs_view:
            held = sum(s.pairs for s in self.pairs_view)
            if held != self.counts.pairs or any(s.images for s in self.pairs_view):
                raise bad(f"the pairs view holds {held} pairs and "
                          f"{sum(s.images for s in self.pairs_view)} images, 'counts' says "
                          f"{self.counts.pairs} pairs")

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "class_names": None if self.class_names is None else list(self.class_names),
            "config": self.config.to_json(),
            "counts": self.counts.to_json(),
            "export_format": self.export_format,
            "files": {name: self.files[name].to_json() for name in sorted(self.files)},
            "format": EXPORT_FORMAT,
            "inputs": self.inputs.to_json(),
            "pairmine_version": self.pairmine_version,
            "shards": [s.to_json() for s in self.shards],
            "skipped": [s.to_json() for s in self.skipped],
            "source": self.source,
            "version": self.version,
            **({"pairs_view": [s.to_json() for s in self.pairs_view]} if self.pairs_view
               else {}),
            **self.extra,
        }
        return {key: obj[key] for key in sorted(obj)}


_KEYS = frozenset({"class_names", "config", "counts", "export_format", "files", "format",
                   "inputs", "pairmine_version", "pairs_view", "shards", "skipped", "source",
                   "version"})


# ---------------------------------------------------------------------------------------------
# the reader


@dataclass(frozen=True)
class ShardIndex:
    """Every sample of a shard export, from the shard index files: shards in manifest order,
    samples in tar order.

    ``table`` has the columns of ``INDEX_SCHEMA`` plus ``shard`` (int32, the sample's shard
    number); ``tars[shard]`` is that shard's tar, relative to the export. Per sample: its
    ``kind`` (pair/image), ``key``, ids ``a``/``b``, labels, and where each member's data
    lies in the tar (``offset_a``/``size_a``, ``offset_b``/``size_b``, ``offset_json``/
    ``size_json``): enough to read any image with one ``pread``, without scanning a tar.
    """

    tars: tuple[str, ...]
    table: pa.Table

    def __len__(self) -> int:
        return int(self.table.num_rows)

    def of_kinds(self, kinds: Sequence[str]) -> ShardIndex:
        """The samples of ``kinds`` only, in the same order."""
        import pyarrow as pa
        import pyarrow.compute as pc

        wanted = pa.array(list(kinds), type=pa.string())
        return ShardIndex(self.tars, self.table.filter(pc.is_in(self.table.column("kind"),
                                                                value_set=wanted)))

    def values(self, column: str) -> list[Any]:
        """One column as Python values (null → None)."""
        return list(self.table.column(column).to_pylist())

    def numbers(self, column: str, null: int = -1) -> np.ndarray:
        """An integer column as int64 ``(n,)``, nulls as ``null``."""
        import numpy as np
        import pyarrow.compute as pc

        col = pc.fill_null(self.table.column(column), null)
        return np.asarray(col.to_numpy(), dtype=np.int64)


@dataclass(frozen=True)
class Export:
    """A complete export opened for reading: ``manifest`` (typed), the shard index (shard
    exports) and the tables. Files are read when first asked for."""

    path: Path
    manifest: ExportManifest

    @property
    def has_shards(self) -> bool:
        return bool(self.manifest.shards)

    def tar_paths(self) -> list[Path]:
        return [self.path / s.tar for s in self.manifest.shards]

    @cached_property
    def index(self) -> ShardIndex:
        """The shard index (empty for an export without shards)."""
        import pyarrow as pa

        tables = [read_shard_index(self.path, number, shard)
                  for number, shard in enumerate(self.manifest.shards)]
        table = pa.concat_tables(tables) if tables else \
            INDEX_SCHEMA().append(pa.field("shard", pa.int32())).empty_table()
        return ShardIndex(tuple(s.tar for s in self.manifest.shards), table)

    def pairs(self) -> pa.Table:
        """``spps.parquet``: one row per exported pair, by ``pair_id``."""
        return self._table(SPPS_FILE, SPPS_SCHEMA())

    def images(self) -> pa.Table | None:
        """``images.parquet`` (combined exports), or None."""
        if IMAGES_FILE not in self.manifest.files:
            return None
        return self._table(IMAGES_FILE, IMAGES_SCHEMA())

    def _table(self, name: str, schema: pa.Schema) -> pa.Table:
        table = _read_table(self.path, name, schema)
        rows = self.manifest.files[name].rows
        if table.num_rows != rows:
            raise damaged(self.path, name, f"{table.num_rows} rows, the manifest says {rows}",
                          EXPORT_FORMAT)
        return table


def read_shard_index(store: Path, number: int, shard: ExportShard) -> pa.Table:
    """Shard ``number``'s index file, checked against its record ``shard`` (rows, kinds,
    pairs, the members every sample needs), with the ``shard`` column added. The one reader
    of index files: the export's own tables are built from it, and so is :attr:`Export.index`.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    table = _read_table(store, shard.index, INDEX_SCHEMA())
    if table.num_rows != shard.samples:
        raise damaged(store, shard.index, f"{table.num_rows} samples, the manifest "
                      f"says {shard.samples}", EXPORT_FORMAT)
    kinds = table.column("kind")
    unknown = pc.invert(pc.fill_null(pc.is_in(kinds, value_set=pa.array(SAMPLE_KINDS)),
                                     False))
    if pc.any(unknown).as_py():
        raise damaged(store, shard.index, f"a sample kind other than "
                      f"{' or '.join(SAMPLE_KINDS)}", EXPORT_FORMAT)
    pairs = int(pc.sum(pc.equal(kinds, KIND_PAIR)).as_py() or 0)
    if pairs != shard.pairs:
        raise damaged(store, shard.index, f"{pairs} pair samples, the manifest says "
                      f"{shard.pairs}", EXPORT_FORMAT)
    needed = ["key", "a", "name_a", "offset_a", "size_a", "offset_json", "size_json"]
    if any(table.column(c).null_count for c in needed):
        raise damaged(store, shard.index, "a sample without its first member",
                      EXPORT_FORMAT)
    pair_rows = table.filter(pc.equal(kinds, KIND_PAIR))
    if any(pair_rows.column(c).null_count for c in ("b", "name_b", "offset_b", "size_b")):
        raise damaged(store, shard.index, "a pair sample without its positive",
                      EXPORT_FORMAT)
    table = table.select(INDEX_SCHEMA().names).cast(INDEX_SCHEMA())
    return table.append_column(pa.field("shard", pa.int32()),
                               pa.array(np.full(table.num_rows, number, dtype=np.int32)))


def _read_table(store: Path, name: str, schema: pa.Schema) -> pa.Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = store / name
    if not path.is_file():
        raise damaged(store, name, "missing", EXPORT_FORMAT)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, MemoryError) as exc:
        from pairmine.errors import is_out_of_memory, out_of_memory

        if is_out_of_memory(exc):  # an allocation that failed is not a damaged file
            raise out_of_memory(f"reading {path}", "give the process more memory, or fewer "
                                "workers per node") from None
        raise damaged(store, name, f"not a Parquet file ({str(exc)[:80]})",
                      EXPORT_FORMAT) from None
    missing = [f.name for f in schema if f.name not in table.schema.names]
    if missing:
        raise damaged(store, name, f"no column {', '.join(missing)}", EXPORT_FORMAT)
    return table


def open_export(path: str | os.PathLike[str]) -> Export:
    """Open a complete export: its manifest, checked and typed. The shard index and the tables
    are read (and checked against the manifest) when first used."""
    store = Path(path)
    _check_is_export(store)
    obj = read_manifest(store, EXPORT_FORMAT)
    return Export(path=store, manifest=ExportManifest.from_json(obj, store))


def _check_is_export(store: Path) -> None:
    """Another kind of store given for an export (a pairs or embeddings store: the common slip)
    is named as such; every other problem is ``read_manifest``'s to report."""
    try:
        kind = read_json(store / MANIFEST).get("format") if (store / MANIFEST).is_file() \
            else None
    except StoreError:
        return
    if isinstance(kind, str) and kind != EXPORT_FORMAT:
        raise StoreError(f"{store} holds a {kind!r} store, not an export",
                         "give a folder that `pairmine export` wrote")
