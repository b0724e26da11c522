"""The embeddings store: ``emb/emb-NNNNN.npy`` (L2-normalised rows) row-aligned with
``meta/meta-NNNNN.parquet`` and ``codes/codes-NNNNN.npy`` (one uint64 content code per row,
format version 2), unreadable images in ``errors.parquet``, ``manifest.json`` last.

A store opens lazily (:func:`open_embeddings` reads the manifest, not the rows), so that what
a process holds does not grow with the store: vectors are read by row range or by id from the
memory-mapped shard that holds them, metadata per shard and per column, content codes per
shard. Each shard is validated (shape, dtype, schema, row count) the first time it is touched,
with the same messages a whole-store open used to give.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import PairmineError, StoreError, is_out_of_memory, memory_step, out_of_memory
from pairmine.stores.run import damaged, read_manifest, shard_name

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

EMBEDDINGS_FORMAT = "pairmine/embeddings"
EMB_DIR = "emb"
META_DIR = "meta"
CODES_DIR = "codes"
ERRORS_FILE = "errors.parquet"
# the content-hash columns, in the order a store's code is taken from
HASH_COLUMNS = ("sha256", "md5")
# memory maps kept open at once: each holds a file descriptor (a 100M-row store has ~1,500
# shards, more than the usual limit of 1,024), none holds memory of its own
OPEN_SHARDS = 64
# shards of a version-1 store whose codes are computed from the hash column and kept
CODE_SHARDS_KEPT = 4
OOM_HINT = ("give the process more memory, or read fewer rows at a time (--block-rows, "
            "--batch-size, fewer workers per node)")


@dataclass(frozen=True)
class EmbeddingShard:
    """One shard of the manifest: the matrix, metadata and content-code files, their rows, the
    first id. ``codes`` is None in a version-1 store (its codes are computed when asked for)."""

    emb: str
    meta: str
    rows: int
    id_start: int
    codes: str | None = None

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"emb": self.emb, "meta": self.meta, "rows": self.rows,
                                  "id_start": self.id_start}
        if self.codes is not None:
            record["codes"] = self.codes
        return record


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
                codes = rec.get("codes")
                if codes is not None and not isinstance(codes, str):
                    raise TypeError("codes")
                shard = EmbeddingShard(emb=str(rec["emb"]), meta=str(rec["meta"]),
                                       rows=int(rec["rows"]), id_start=int(rec["id_start"]),
                                       codes=codes)
            except (KeyError, TypeError, ValueError, AttributeError):
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


class RowView:
    """The rows of a store as a lazy ``(n, dim)`` matrix: ``shape``, ``dtype``, ``len()``,
    ``view[start:stop]``, ``view[i]`` and ``view[int_array]`` return numpy arrays read from
    the memory-mapped shards that hold those rows (a slice inside one shard is a view of its
    memory map, nothing is copied). ``np.asarray(view)`` reads every row: O(N), for small
    stores only."""

    def __init__(self, store: Embeddings) -> None:
        self._store = store

    @property
    def shape(self) -> tuple[int, int]:
        return (self._store.info.count, self._store.info.dim)

    @property
    def dtype(self) -> np.dtype[Any]:
        import numpy as np

        return np.dtype(self._store.info.dtype)

    @property
    def ndim(self) -> int:
        return 2

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    def __len__(self) -> int:
        return self._store.info.count

    def __repr__(self) -> str:
        return f"RowView({self._store.path}, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key: Any) -> np.ndarray:
        import numpy as np

        rest: tuple[Any, ...] = ()
        if isinstance(key, tuple):
            if not key:
                key = slice(None)
            else:
                key, rest = key[0], key[1:]
        if isinstance(key, int | np.integer) and not isinstance(key, bool | np.bool_):
            n = len(self)
            i = int(key) + n if int(key) < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"row {int(key)} is out of range for {n} rows")
            row: np.ndarray = self._store.read_rows(i, i + 1)[0]
            return row[rest] if rest else row
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                rows = self._store.read_rows(start, max(start, stop))
            else:
                rows = self._store.take_rows(np.arange(start, stop, step, dtype=np.int64))
        elif key is Ellipsis:
            rows = self._store.read_rows(0, len(self))
        else:
            rows = self._store.take_rows(key)
        return rows[(slice(None), *rest)] if rest else rows

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        rows = self._store.read_rows(0, len(self))  # a one-shard store: its memory map
        if dtype is not None:
            return rows.astype(dtype, copy=bool(copy))
        return rows.copy() if copy else rows

    def astype(self, dtype: Any, copy: bool = True) -> np.ndarray:
        """Every row as ``dtype`` (O(N): small stores only)."""
        return self._store.read_rows(0, len(self)).astype(dtype, copy=copy)


class Embeddings:
    """A complete embeddings store opened for reading, lazily.

    ``manifest`` is the whole manifest as written; ``info`` its validated, typed core.
    ``vectors`` is a :class:`RowView` (``(n, dim)``, float16 or float32) reading rows from the
    memory-mapped shards. :meth:`take` and :meth:`iter_meta` read metadata columns per shard;
    :meth:`codes`, :meth:`iter_codes` and :meth:`same_content` compare content without every
    hash in memory. ``meta`` is the whole metadata table (O(N): for quality tools on small
    stores; the stages use the per-shard reads). Thread-safe; picklable (as its path and
    manifest: a copy reopens its shards on first use).
    """

    def __init__(self, path: Path, manifest: dict[str, Any], info: EmbeddingsManifest, *,
                 mmap: bool = True) -> None:
        import numpy as np

        self.path = path
        self.manifest = manifest
        self.info = info
        self._mmap = mmap
        self._ends = np.array([s.id_start + s.rows for s in info.shards], dtype=np.int64)
        self._lock = threading.RLock()
        self._matrices: OrderedDict[int, np.ndarray] = OrderedDict()
        self._code_arrays: OrderedDict[int, np.ndarray] = OrderedDict()
        self._meta_checked: set[int] = set()
        self.vectors = RowView(self)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "manifest": self.manifest, "info": self.info,
                "mmap": self._mmap}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["manifest"], state["info"],  # type: ignore[misc]
                      mmap=state["mmap"])

    def __repr__(self) -> str:
        return (f"Embeddings({self.path}, count={self.info.count}, dim={self.info.dim}, "
                f"shards={len(self.info.shards)})")

    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.vectors.dtype

    def __len__(self) -> int:
        return self.info.count

    @property
    def shards(self) -> tuple[EmbeddingShard, ...]:
        return self.info.shards

    # ---- where rows live ------------------------------------------------------------------

    def shard_of(self, ids: np.ndarray) -> np.ndarray:
        """The shard number holding each of ``ids`` (valid ids, int64)."""
        import numpy as np

        return np.searchsorted(self._ends, ids, side="right").astype(np.int64)

    def _ids(self, ids: Any) -> np.ndarray:
        """``ids`` as a 1-D int64 array of valid rows (negative ids count from the end; a bool
        mask selects its True rows), or IndexError."""
        import numpy as np

        arr = np.asarray(ids)
        if arr.dtype == np.bool_:
            if arr.shape != (len(self),):
                raise IndexError(f"a boolean mask of shape {arr.shape} for {len(self)} rows")
            return np.flatnonzero(arr).astype(np.int64)
        if arr.size == 0:
            return np.zeros(0, dtype=np.int64)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise IndexError(f"row ids must be a 1-D integer array, not {arr.dtype} "
                             f"{arr.shape}")
        out = arr.astype(np.int64)
        n = len(self)
        if (out < 0).any():
            out = np.where(out < 0, out + n, out)
        if out.size and (out.min() < 0 or out.max() >= n):
            raise IndexError(f"row ids out of range for {n} rows")
        return out

    def _groups(self, ids: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """``(shard, positions in ids)`` for every shard that holds some of ``ids``."""
        import numpy as np

        shard = self.shard_of(ids)
        order = np.argsort(shard, kind="stable")
        ordered = shard[order]
        cuts = np.flatnonzero(np.diff(ordered)) + 1
        for part in np.split(order, cuts):
            if part.size:
                yield int(shard[part[0]]), part

    # ---- vectors --------------------------------------------------------------------------

    def matrix(self, k: int) -> np.ndarray:
        """Shard ``k``'s matrix (a read-only memory map), validated when first opened; at most
        :data:`OPEN_SHARDS` stay open."""
        with self._lock:
            mat = self._matrices.get(k)
            if mat is not None:
                self._matrices.move_to_end(k)
                return mat
        mat = read_vectors(self.path, self.info.shards[k], self.info.dim, self.info.dtype,
                           self._mmap)
        with self._lock:
            self._matrices[k] = mat
            while len(self._matrices) > OPEN_SHARDS:
                self._matrices.popitem(last=False)
        return mat

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)``: a view of one shard's memory map when they lie in one
        shard, else a copy joined from the shards that hold them."""
        import numpy as np

        n = len(self)
        start, stop = max(0, min(start, n)), max(0, min(stop, n))
        if stop <= start:
            return np.zeros((0, self.info.dim), dtype=np.dtype(self.info.dtype))
        first = int(self.shard_of(np.array([start]))[0])
        last = int(self.shard_of(np.array([stop - 1]))[0])
        shards = self.info.shards
        if first == last:
            base = shards[first].id_start
            return self.matrix(first)[start - base:stop - base]
        with memory_step(f"reading rows {start}:{stop} of {self.path}", OOM_HINT):
            out = np.empty((stop - start, self.info.dim), dtype=np.dtype(self.info.dtype))
            for k in range(first, last + 1):
                s = shards[k]
                lo, hi = max(start, s.id_start), min(stop, s.id_start + s.rows)
                if hi > lo:
                    out[lo - start:hi - start] = self.matrix(k)[lo - s.id_start:hi - s.id_start]
        return out

    def take_rows(self, ids: Any) -> np.ndarray:
        """The rows ``ids`` (any order, repeats allowed), in that order."""
        import numpy as np

        ids = self._ids(ids)
        with memory_step(f"reading {ids.size} rows of {self.path}", OOM_HINT):
            out = np.empty((ids.size, self.info.dim), dtype=np.dtype(self.info.dtype))
            for k, pos in self._groups(ids):
                out[pos] = self.matrix(k)[ids[pos] - self.info.shards[k].id_start]
        return out

    # ---- metadata -------------------------------------------------------------------------

    @cached_property
    def meta_columns(self) -> tuple[str, ...]:
        """The metadata columns (from the first shard's schema; META_SCHEMA when empty)."""
        if not self.info.shards:
            return tuple(META_SCHEMA().names)
        return tuple(self._meta_schema(0).names)

    @cached_property
    def hash_column(self) -> str | None:
        """The content-hash column (``sha256``, else ``md5``), or None when the store has
        none."""
        return next((c for c in HASH_COLUMNS if c in self.meta_columns), None)

    def _meta_schema(self, k: int) -> pa.Schema:
        schema, _ = _read_parquet(self.path, self.info.shards[k], [],
                                  check=k not in self._meta_checked)
        self._meta_checked.add(k)
        return schema

    def read_meta(self, k: int, columns: Sequence[str] | None = None) -> pa.Table:
        """Shard ``k``'s metadata (only ``columns`` when given), validated on first read."""
        if columns is not None and not columns:
            raise ValueError("read_meta: ask for at least one column (or None for all)")
        _, table = _read_parquet(self.path, self.info.shards[k], columns,
                                 check=k not in self._meta_checked)
        self._meta_checked.add(k)
        assert table is not None  # only columns == [] reads no table
        return table

    def iter_meta(self, columns: Sequence[str] | None = None
                  ) -> Iterator[tuple[int, pa.Table]]:
        """``(id_start, table)`` per shard, reading only ``columns`` (all when None)."""
        for k, shard in enumerate(self.info.shards):
            yield shard.id_start, self.read_meta(k, columns)

    def take(self, ids: Any, columns: Sequence[str] | None = None) -> pa.Table:
        """The metadata rows ``ids`` (in that order, repeats allowed), reading only the shards
        that hold them and only ``columns``."""
        import numpy as np
        import pyarrow as pa

        ids = self._ids(ids)
        cols = list(columns) if columns is not None else list(self.meta_columns)
        parts: list[pa.Table] = []
        order: list[np.ndarray] = []
        for k, pos in self._groups(ids):
            table = self.read_meta(k, cols)
            local = ids[pos] - self.info.shards[k].id_start
            parts.append(table.take(pa.array(local, type=pa.int64())))
            order.append(pos)
        if not parts:
            schema = META_SCHEMA()
            fields = [schema.field(c) if c in schema.names
                      else pa.field(c, pa.int64() if c in PLACE_COLUMNS else pa.string())
                      for c in cols]
            return pa.schema(fields).empty_table()
        with memory_step(f"reading the metadata of {ids.size} rows of {self.path}", OOM_HINT):
            joined = pa.concat_tables(parts)
            if len(parts) == 1:
                return joined  # one shard: a group keeps the order of ids
            inverse = np.empty(ids.size, dtype=np.int64)
            inverse[np.concatenate(order)] = np.arange(ids.size, dtype=np.int64)
            return joined.take(pa.array(inverse, type=pa.int64()))

    @cached_property
    def meta(self) -> pa.Table:
        """The whole metadata table, every shard concatenated: O(N) memory. For quality tools
        on small stores; the stages read per shard (:meth:`iter_meta`, :meth:`take`)."""
        import pyarrow as pa

        tables = [t for _, t in self.iter_meta()]
        if not tables:
            return META_SCHEMA().empty_table()
        with memory_step(f"reading the whole metadata table of {self.path}", OOM_HINT):
            return pa.concat_tables(tables, promote_options="default")

    # ---- content codes --------------------------------------------------------------------

    def shard_codes(self, k: int) -> np.ndarray:
        """Shard ``k``'s content codes (uint64): memory-mapped from ``codes/`` (version 2), or
        computed from its hash column (version 1; the last few are kept)."""
        shard = self.info.shards[k]
        with self._lock:
            codes = self._code_arrays.get(k)
            if codes is not None:
                self._code_arrays.move_to_end(k)
                return codes
        if shard.codes is not None:
            codes = read_codes(self.path, shard)
            keep = OPEN_SHARDS
        else:
            column = self.hash_column
            if column is None:
                import numpy as np

                codes = np.zeros(shard.rows, dtype=np.uint64)
            else:
                codes = content_code_array(self.read_meta(k, [column]).column(column))
            keep = CODE_SHARDS_KEPT
        with self._lock:
            self._code_arrays[k] = codes
            while len(self._code_arrays) > keep:
                self._code_arrays.popitem(last=False)
        return codes

    def iter_codes(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(id_start, codes)`` per shard."""
        for k, shard in enumerate(self.info.shards):
            yield shard.id_start, self.shard_codes(k)

    def codes(self, ids: Any) -> np.ndarray:
        """The content codes (uint64) of rows ``ids``: equal hashes give equal codes; 0 means
        the row has no hash."""
        import numpy as np

        ids = self._ids(ids)
        out = np.zeros(ids.size, dtype=np.uint64)
        for k, pos in self._groups(ids):
            out[pos] = self.shard_codes(k)[ids[pos] - self.info.shards[k].id_start]
        return out

    def same_content(self, a: Any, b: Any) -> np.ndarray:
        """For each pair ``(a[i], b[i])``: True exactly when both rows have a content hash and
        the full hashes are equal. Codes decide first; only pairs with equal codes read their
        full hashes (a collision of 64-bit codes is never taken for a duplicate)."""
        import numpy as np

        a_ids, b_ids = self._ids(a), self._ids(b)
        if a_ids.shape != b_ids.shape:
            raise ValueError(f"same_content: {a_ids.size} ids against {b_ids.size}")
        same = np.zeros(a_ids.size, dtype=bool)
        column = self.hash_column
        if column is None or a_ids.size == 0:
            return same
        ca = self.codes(a_ids)
        maybe = np.flatnonzero((ca != 0) & (ca == self.codes(b_ids)))
        if maybe.size:
            ha = self.take(a_ids[maybe], [column]).column(0)
            hb = self.take(b_ids[maybe], [column]).column(0)
            import pyarrow.compute as pc

            equal = pc.fill_null(pc.equal(ha, hb), False).to_numpy(zero_copy_only=False)
            same[maybe] = np.asarray(equal, dtype=bool)
        return same


# ---------------------------------------------------------------------------------------------
# reading one shard


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
        if is_out_of_memory(exc):
            raise out_of_memory(f"reading {path}", OOM_HINT) from None
        raise damaged(store, shard.emb, f"not a .npy matrix ({str(exc)[:80]})",
                      EMBEDDINGS_FORMAT) from None
    except MemoryError:
        raise out_of_memory(f"reading {path}", OOM_HINT) from None
    if mat.ndim != 2 or mat.shape != (shard.rows, dim) or mat.dtype != np.dtype(dtype):
        raise damaged(store, shard.emb, f"{mat.dtype} {mat.shape}, the manifest says {dtype} "
                      f"({shard.rows}, {dim})", EMBEDDINGS_FORMAT)
    return mat


def read_codes(store: Path, shard: EmbeddingShard) -> np.ndarray:
    """One shard's content codes (a read-only memory map), checked against the manifest."""
    import numpy as np

    assert shard.codes is not None
    path = store / shard.codes
    if not path.is_file():
        raise damaged(store, shard.codes, "missing", EMBEDDINGS_FORMAT)
    reason = _npy_problem(path)
    if reason is not None:
        raise damaged(store, shard.codes, reason, EMBEDDINGS_FORMAT)
    try:
        codes: np.ndarray = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        if is_out_of_memory(exc):
            raise out_of_memory(f"reading {path}", OOM_HINT) from None
        raise damaged(store, shard.codes, f"not a .npy array ({str(exc)[:80]})",
                      EMBEDDINGS_FORMAT) from None
    if codes.shape != (shard.rows,) or codes.dtype != np.dtype(np.uint64):
        raise damaged(store, shard.codes, f"{codes.dtype} {codes.shape}, the manifest says "
                      f"uint64 ({shard.rows},)", EMBEDDINGS_FORMAT)
    return codes


def npy_header(path: str | os.PathLike[str]) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """``(shape, fortran_order, dtype)`` of a ``.npy`` file, from its header alone (nothing
    else is read, nothing is unpickled); ``ValueError`` when it is not a ``.npy`` file."""
    import numpy as np

    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise ValueError(f"not a .npy file ({str(exc)[:80]})") from None
    return tuple(int(x) for x in shape), bool(fortran), dtype


def _npy_problem(path: Path) -> str | None:
    """Why ``path`` is not a plain ``.npy`` matrix, read from its header alone (nothing is
    unpickled), or None."""
    try:
        _, _, dtype = npy_header(path)
    except ValueError:
        return "not a .npy file"
    if dtype.hasobject:
        return "an object array (pickle), not a matrix"
    return None


def _parquet_failure(store: Path, name: str, exc: Exception) -> PairmineError:
    """An error reading a Parquet file: out of memory when it is one (never "damaged")."""
    if is_out_of_memory(exc):
        return out_of_memory(f"reading {store / name}", OOM_HINT)
    return damaged(store, name, f"not a Parquet file ({str(exc)[:80]})", EMBEDDINGS_FORMAT)


def _read_parquet(store: Path, shard: EmbeddingShard, columns: Sequence[str] | None,
                  check: bool = True) -> tuple[pa.Schema, pa.Table | None]:
    """A metadata file's schema (validated against META_SCHEMA and the manifest's row count
    when ``check``), and ``columns`` of it (all when None; no rows when ``columns == []``).

    One ``ParquetFile`` opened and closed per call: ``pq.read_metadata`` keeps a few KiB per
    file it has read, which over a store of thousands of shards is memory that grows with N.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = store / shard.meta
    if not path.is_file():
        raise damaged(store, shard.meta, "missing", EMBEDDINGS_FORMAT)
    try:
        with pq.ParquetFile(path) as parquet:
            schema = parquet.schema_arrow
            rows = parquet.metadata.num_rows
            if check:
                _check_meta_schema(store, shard, schema)
                if rows != shard.rows:
                    raise damaged(store, shard.meta, f"{rows} rows, the manifest says "
                                  f"{shard.rows}", EMBEDDINGS_FORMAT)
            if columns is not None:
                unknown = [c for c in columns if c not in schema.names]
                if unknown:
                    raise StoreError(f"store {store} has no metadata column(s) "
                                     f"{', '.join(unknown)} in {shard.meta}",
                                     "ask for one of the columns the store has")
                if not columns:
                    return schema, None
            table = parquet.read(columns=list(columns) if columns is not None else None,
                                 use_threads=False)
    except (pa.ArrowException, OSError, MemoryError) as exc:
        raise _parquet_failure(store, shard.meta, exc) from None
    if table.num_rows != shard.rows:
        raise damaged(store, shard.meta, f"{table.num_rows} rows, the manifest says "
                      f"{shard.rows}", EMBEDDINGS_FORMAT)
    return schema, table


def _check_meta_schema(store: Path, shard: EmbeddingShard, schema: pa.Schema) -> None:
    missing = [f.name for f in META_SCHEMA() if f.name not in schema.names]
    if missing:
        raise damaged(store, shard.meta, f"no column {', '.join(missing)}", EMBEDDINGS_FORMAT)


def read_meta(store: Path, shard: EmbeddingShard) -> pa.Table:
    """One shard's metadata, checked against the schema and the manifest's row count."""
    _, table = _read_parquet(store, shard, None)
    assert table is not None
    return table


def open_embeddings(path: str | os.PathLike[str], *, mmap: bool = True) -> Embeddings:
    """Open an embeddings store: its manifest is read and checked, no row is (each shard is
    validated when first read). ``mmap=False`` loads each shard's matrix into memory when it
    is first read, instead of memory-mapping it."""
    store = Path(path)
    manifest = read_manifest(store, EMBEDDINGS_FORMAT)
    info = EmbeddingsManifest.from_json(manifest, store)
    return Embeddings(store, manifest, info, mmap=mmap)


def META_SCHEMA() -> pa.Schema:
    """Schema of ``meta/meta-NNNNN.parquet``.

    ``source`` is the absolute path of the file that holds the image (an image file, a tar
    shard, a CIFAR batch); ``member`` says where inside it (tar member name, array row) and is
    null for plain image files. Sources read by offset (WebDataset tars) add the optional
    :data:`PLACE_COLUMNS`.
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


# Optional metadata columns (int64): where the image's bytes lie inside ``source``, byte offset
# and size, for sources whose images are members of a container read by offset (WebDataset
# tars). A later reader (export, show) seeks there instead of indexing the container first:
# an index of every tar of a 100M-image source does not fit in memory, and a bounded one,
# read in random order (a pair's positive), would re-index a tar on almost every image.
PLACE_COLUMNS = ("member_offset", "member_size")


def row_place(row: Mapping[str, Any]) -> tuple[int, int] | None:
    """A metadata row's (``member_offset``, ``member_size``), or None when it has none."""
    offset, size = (row.get(name) for name in PLACE_COLUMNS)
    return None if offset is None or size is None else (int(offset), int(size))


def ERRORS_SCHEMA() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([("key", pa.string()), ("source", pa.string()),
                      ("member", pa.string()), ("error", pa.string())])


# ---------------------------------------------------------------------------------------------
# content codes


_HEX = re.compile(r"[0-9a-fA-F]{16}")


def content_code(digest: str | None) -> int:
    """The content code of one hash: its first 8 bytes, big-endian (a hex digest's first 16
    hex digits); a value that is not a hex digest is hashed with sha256 first. 0 means no
    hash, so a digest whose first 8 bytes are zero gets 1 (its full hash still decides)."""
    if digest is None:
        return 0
    head = digest[:16]
    if _HEX.fullmatch(head):
        value = int(head, 16)
    else:
        value = int.from_bytes(hashlib.sha256(digest.encode("utf-8")).digest()[:8], "big")
    return value or 1


def content_code_array(hashes: pa.Array | pa.ChunkedArray | Iterable[str | None]
                       ) -> np.ndarray:
    """:func:`content_code` of every hash (uint64), vectorised for hex digests."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if not isinstance(hashes, pa.Array | pa.ChunkedArray):
        hashes = pa.array(list(hashes), type=pa.string())
    if isinstance(hashes, pa.ChunkedArray):
        hashes = hashes.combine_chunks()
    n = len(hashes)
    codes = np.zeros(n, dtype=np.uint64)
    if n == 0 or hashes.null_count == n:
        return codes
    valid = np.asarray(hashes.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    text = pc.fill_null(hashes.cast(pa.string()), "").to_numpy(zero_copy_only=False)
    # the first 16 characters as UCS-4 code points, shorter ones padded with 0
    points = text.astype("U16").view(np.uint32).reshape(n, 16)
    lut = np.full(128, 255, dtype=np.uint8)
    for i, ch in enumerate("0123456789abcdef"):
        lut[ord(ch)] = i
        lut[ord(ch.upper())] = i
    nibbles = np.where(points < 128, lut[np.minimum(points, 127)], 255).astype(np.uint64)
    hexed = valid & (nibbles != 255).all(axis=1)
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    values = np.bitwise_or.reduce(nibbles[hexed] << shifts, axis=1)
    codes[hexed] = values
    for row in np.flatnonzero(valid & ~hexed):  # not hex digests: rare, one by one
        codes[row] = content_code(str(text[row]))
    codes[hexed & (codes == 0)] = 1
    return codes


def content_codes(meta: pa.Table) -> tuple[np.ndarray, str | None]:
    """One int64 code per row of a whole metadata table, equal exactly when the content
    hashes (``sha256``, else ``md5``) are equal. Rows without a hash get a code of their own
    (``n + row``), so they duplicate nothing. Returns the codes and the hash column used (None
    when the store has none).

    The O(N) path: it needs every hash in memory. The stages use :meth:`Embeddings.codes`,
    :meth:`Embeddings.iter_codes` and :meth:`Embeddings.same_content` instead; this stays
    for the quality tools (and until every stage has moved)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = meta.num_rows
    column = next((c for c in HASH_COLUMNS if c in meta.column_names), None)
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


# ---------------------------------------------------------------------------------------------
# writing one shard (embed and import)


def embedding_shard_files(index: int) -> tuple[str, str, str]:
    """The ``emb``, ``meta`` and ``codes`` files of shard ``index``, relative to the store."""
    return (f"{EMB_DIR}/{shard_name('emb', index, '.npy')}",
            f"{META_DIR}/{shard_name('meta', index, '.parquet')}",
            f"{CODES_DIR}/{shard_name('codes', index, '.npy')}")


def write_embedding_shard(store: Path, index: int, vectors: np.ndarray, meta: pa.Table, *,
                          id_start: int = 0) -> EmbeddingShard:
    """Write shard ``index`` of an embeddings store: the matrix, the content codes (from the
    ``sha256``, else ``md5``, column of ``meta``; 0 where a row has none) and the metadata,
    each atomically, the metadata last (its presence marks the shard complete). ``meta`` has
    the columns of :func:`META_SCHEMA` (and may have more), one row per vector. Returns the
    shard's manifest record (``id_start`` as given)."""
    import numpy as np

    emb, meta_name, codes_name = embedding_shard_files(index)
    if vectors.ndim != 2 or np.dtype(vectors.dtype) not in (np.float16, np.float32):
        raise ValueError(f"a shard's vectors are a float16/float32 matrix, not "
                         f"{vectors.dtype} {vectors.shape}")
    if meta.num_rows != vectors.shape[0]:
        raise ValueError(f"{meta.num_rows} metadata rows for {vectors.shape[0]} vectors")
    missing = [name for name in META_SCHEMA().names if name not in meta.column_names]
    if missing:
        raise ValueError(f"the shard's metadata has no column {', '.join(missing)}")
    from pairmine.stores.atomic import save_npy_atomic, write_parquet_atomic

    column = next((c for c in HASH_COLUMNS if c in meta.column_names), None)
    codes = (content_code_array(meta.column(column)) if column is not None
             else np.zeros(meta.num_rows, dtype=np.uint64))
    save_npy_atomic(store / emb, vectors)
    save_npy_atomic(store / codes_name, codes)
    write_parquet_atomic(store / meta_name, meta)
    return EmbeddingShard(emb=emb, meta=meta_name, rows=meta.num_rows, id_start=id_start,
                          codes=codes_name)
