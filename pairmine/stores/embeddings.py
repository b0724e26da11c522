"""The embeddings store: ``emb/emb-NNNNN.npy`` (L2-normalised rows) row-aligned with
``meta/meta-NNNNN.parquet``, unreadable images in ``errors.parquet``, ``manifest.json`` last."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import StoreError
from pairmine.stores.run import damaged, read_manifest

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

EMBEDDINGS_FORMAT = "pairmine/embeddings"
EMB_DIR = "emb"
META_DIR = "meta"
ERRORS_FILE = "errors.parquet"


@dataclass(frozen=True)
class EmbeddingShard:
    """One shard of the manifest: the matrix and metadata files, their rows, the first id."""

    emb: str
    meta: str
    rows: int
    id_start: int

    def to_json(self) -> dict[str, Any]:
        return {"emb": self.emb, "meta": self.meta, "rows": self.rows, "id_start": self.id_start}


@dataclass(frozen=True)
class EmbeddingsManifest:
    """The typed part of an embeddings manifest that readers rely on, validated on open."""

    count: int
    dim: int
    dtype: str
    shards: tuple[EmbeddingShard, ...]

    @classmethod
    def from_json(cls, obj: dict[str, Any], store: Path) -> EmbeddingsManifest:
        def bad(reason: str) -> StoreError:
            return damaged(store, "manifest.json", reason, EMBEDDINGS_FORMAT)

        for key, kind in (("count", int), ("dim", int), ("dtype", str), ("shards", list)):
            if not isinstance(obj.get(key), kind) or isinstance(obj.get(key), bool):
                raise bad(f"{key!r} is missing or not {kind.__name__}")
        if obj["dtype"] not in ("float16", "float32"):
            raise bad(f"unknown dtype {obj['dtype']!r}")
        shards = []
        start = 0
        for i, rec in enumerate(obj["shards"]):
            try:
                shard = EmbeddingShard(emb=str(rec["emb"]), meta=str(rec["meta"]),
                                       rows=int(rec["rows"]), id_start=int(rec["id_start"]))
            except (KeyError, TypeError, ValueError):
                raise bad(f"shard record {i} is not {{emb, meta, rows, id_start}}") from None
            if shard.id_start != start or shard.rows < 0:
                raise bad(f"shard record {i} does not continue the ids ({shard.id_start} "
                          f"after {start})")
            start += shard.rows
            shards.append(shard)
        if start != obj["count"]:
            raise bad(f"the shards hold {start} rows, the manifest counts {obj['count']}")
        return cls(count=obj["count"], dim=obj["dim"], dtype=obj["dtype"],
                   shards=tuple(shards))


@dataclass(frozen=True)
class Embeddings:
    """A complete embeddings store opened for reading.

    ``vectors`` is a read-only memory map of all rows (shape ``(n, dim)``, float16 or float32)
    when the store has one shard, else the rows concatenated in memory.
    ``meta`` is the row-aligned metadata table (id, key, source, member, label, sha256).
    ``manifest`` is the whole manifest as written; ``info`` its validated, typed core.
    """

    path: Path
    manifest: dict[str, Any]
    info: EmbeddingsManifest
    vectors: np.ndarray
    meta: pa.Table

    @property
    def dim(self) -> int:
        return self.info.dim

    def __len__(self) -> int:
        return self.info.count


def embedding_shards(store: Path, manifest: dict[str, Any]) -> list[tuple[Path, Path]]:
    info = EmbeddingsManifest.from_json(manifest, store)
    return [(store / s.emb, store / s.meta) for s in info.shards]


def read_vectors(store: Path, shard: EmbeddingShard, dim: int, dtype: str,
                 mmap: bool = True) -> np.ndarray:
    """One shard's matrix, checked against the manifest (shape, dtype, no pickle)."""
    import numpy as np

    path = store / shard.emb
    if not path.is_file():
        raise damaged(store, shard.emb, "missing", EMBEDDINGS_FORMAT)
    reason = _npy_problem(path)
    if reason is not None:
        raise damaged(store, shard.emb, reason, EMBEDDINGS_FORMAT)
    try:
        mat: np.ndarray = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise damaged(store, shard.emb, f"not a .npy matrix ({str(exc)[:80]})",
                      EMBEDDINGS_FORMAT) from None
    if mat.ndim != 2 or mat.shape != (shard.rows, dim) or mat.dtype != np.dtype(dtype):
        raise damaged(store, shard.emb, f"{mat.dtype} {mat.shape}, the manifest says {dtype} "
                      f"({shard.rows}, {dim})", EMBEDDINGS_FORMAT)
    return mat


def _npy_problem(path: Path) -> str | None:
    """Why ``path`` is not a plain ``.npy`` matrix, read from its header alone (nothing is
    unpickled), or None."""
    import numpy as np

    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                _, _, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                _, _, dtype = np.lib.format.read_array_header_2_0(fh)
    except (ValueError, OSError, EOFError, SyntaxError):
        return "not a .npy file"
    if dtype.hasobject:
        return "an object array (pickle), not a matrix"
    return None


def read_meta(store: Path, shard: EmbeddingShard) -> pa.Table:
    """One shard's metadata, checked against the schema and the manifest's row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = store / shard.meta
    if not path.is_file():
        raise damaged(store, shard.meta, "missing", EMBEDDINGS_FORMAT)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise damaged(store, shard.meta, f"not a Parquet file ({str(exc)[:80]})",
                      EMBEDDINGS_FORMAT) from None
    missing = [f.name for f in META_SCHEMA() if f.name not in table.schema.names]
    if missing:
        raise damaged(store, shard.meta, f"no column {', '.join(missing)}", EMBEDDINGS_FORMAT)
    if table.num_rows != shard.rows:
        raise damaged(store, shard.meta, f"{table.num_rows} rows, the manifest says "
                      f"{shard.rows}", EMBEDDINGS_FORMAT)
    return table


def open_embeddings(path: str | os.PathLike[str], *, mmap: bool = True) -> Embeddings:
    """Open an embeddings store: a memory-mapped matrix and its metadata table."""
    import numpy as np
    import pyarrow as pa

    store = Path(path)
    manifest = read_manifest(store, EMBEDDINGS_FORMAT)
    info = EmbeddingsManifest.from_json(manifest, store)
    mats = [read_vectors(store, s, info.dim, info.dtype, mmap) for s in info.shards]
    metas = [read_meta(store, s) for s in info.shards]
    if not mats:
        vectors = np.zeros((0, info.dim), dtype=np.dtype(info.dtype))
        meta = pa.Table.from_pylist([], schema=META_SCHEMA())
    else:
        vectors = mats[0] if len(mats) == 1 else np.concatenate(mats, axis=0)
        meta = pa.concat_tables(metas)
    return Embeddings(path=store, manifest=manifest, info=info, vectors=vectors, meta=meta)


def META_SCHEMA() -> pa.Schema:
    """Schema of ``meta/meta-NNNNN.parquet``.

    ``source`` is the absolute path of the file that holds the image (an image file, a tar
    shard, a CIFAR batch); ``member`` says where inside it (tar member name, array row) and is
    null for plain image files.
    """
    import pyarrow as pa

    return pa.schema([
        ("id", pa.int64()),
        ("key", pa.string()),
        ("source", pa.string()),
        ("member", pa.string()),
        ("label", pa.int64()),
        ("sha256", pa.string()),
    ])


def ERRORS_SCHEMA() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([("key", pa.string()), ("source", pa.string()),
                      ("member", pa.string()), ("error", pa.string())])




def content_codes(meta: pa.Table) -> tuple[np.ndarray, str | None]:
    """One int64 code per row of an embeddings store's metadata, equal exactly when the content
    hashes (``sha256``, else ``md5``) are equal: equal codes are exact duplicates, never pairs.
    Rows without a hash get a code of their own (``n + row``), so they duplicate nothing.
    Returns the codes and the hash column used (None when the store has none)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = meta.num_rows
    column = next((c for c in ("sha256", "md5") if c in meta.column_names), None)
    if column is None:
        return np.arange(n, dtype=np.int64), None
    col = meta.column(column)
    encoded = pc.dictionary_encode(col.combine_chunks() if isinstance(col, pa.ChunkedArray)
                                   else col)
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    valid = encoded.indices.is_valid().to_numpy(zero_copy_only=False)
    codes = np.where(valid, np.nan_to_num(codes, nan=0).astype(np.int64),
                     n + np.arange(n, dtype=np.int64))
    return codes.astype(np.int64), column
