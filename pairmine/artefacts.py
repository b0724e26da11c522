"""The artefact contract between stages: store layouts, atomic writes, manifests.

Every store is a directory whose ``manifest.json`` is written last, by atomic rename: a store
without it is incomplete. Every shard is written under a temporary name and renamed when
complete, so an interrupted run resumes by skipping finished shards. Stages share only this
module (and ``errors``/``config``), never each other's code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import StoreError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

MANIFEST = "manifest.json"
EMBEDDINGS_FORMAT = "pairmine/embeddings"
PAIRS_FORMAT = "pairmine/pairs"
EXPORT_FORMAT = "pairmine/export"
FORMAT_VERSION = 1

# embeddings store
EMB_DIR = "emb"
META_DIR = "meta"
ERRORS_FILE = "errors.parquet"
# pairs store
PAIRS_DIR = "pairs"
DUPLICATES_FILE = "duplicates.parquet"
# work in progress that is not part of a finished store (removed when the manifest lands)
PARTIAL_DIR = ".partial"


def shard_name(prefix: str, index: int, suffix: str, width: int = 5) -> str:
    """``shard_name("emb", 3, ".npy") == "emb-00003.npy"``."""
    return f"{prefix}-{index:0{width}d}{suffix}"


def pairmine_version() -> str:
    from pairmine import __version__

    return __version__


# ---------------------------------------------------------------------------------------------
# atomic writes: write a temporary file beside the target, fsync, rename over it


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:  # the data reaches the disk before the name does
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes files owner-only
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(target: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    write_bytes_atomic(target, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_npy_atomic(target: Path, array: np.ndarray) -> None:
    import numpy as np

    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def write_parquet_atomic(target: Path, table: pa.Table) -> None:
    import pyarrow.parquet as pq

    with atomic_path(target) as tmp:
        # fixed writer settings so the same table always gives the same bytes
        pq.write_table(table, tmp, compression="zstd", write_statistics=True,
                       store_schema=True)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# stores


def prepare_output(out: Path, *, overwrite: bool, fmt: str) -> bool:
    """Make ``out`` ready for a run. Returns True when an incomplete run can be resumed there.

    A complete store (one with a manifest) is only replaced with ``overwrite``; a directory
    that holds something other than a pairmine store of this format is never touched.
    """
    if out.exists() and not out.is_dir():
        raise StoreError(f"output {out} exists and is not a directory",
                         "choose another output path")
    if not out.exists():
        out.mkdir(parents=True)
        return False
    manifest = out / MANIFEST
    if overwrite:
        if manifest.exists() or _is_partial_store(out):
            shutil.rmtree(out)
            out.mkdir(parents=True)
            return False
        if any(out.iterdir()):
            raise StoreError(f"output {out} is a non-empty directory that is not a pairmine store",
                             "refusing to delete it even with --overwrite; choose another path")
        return False
    if manifest.exists():
        found = read_json(manifest).get("format")
        raise StoreError(f"output {out} already holds a complete store ({found})",
                         "pass --overwrite to replace it, or choose another path")
    if not any(out.iterdir()):
        return False
    if _is_partial_store(out):
        return True
    raise StoreError(f"output {out} is a non-empty directory that is not a pairmine store",
                     "choose an empty or new directory")


def _is_partial_store(out: Path) -> bool:
    return (out / PARTIAL_DIR).is_dir()


def read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    if not isinstance(obj, dict):
        raise StoreError(f"{path} is not a JSON object")
    return obj


def read_manifest(store: Path, fmt: str) -> dict[str, Any]:
    """The manifest of a complete store of format ``fmt``, or a clear StoreError."""
    store = Path(store)
    if not store.exists():
        raise StoreError(f"store {store} does not exist", "check the path")
    manifest = store / MANIFEST
    if not manifest.exists():
        if _is_partial_store(store):
            raise StoreError(f"store {store} is incomplete (no manifest.json)",
                             "rerun the command that writes it to resume it")
        raise StoreError(f"{store} is not a pairmine store (no manifest.json)",
                         f"expected a {fmt} store")
    obj = read_json(manifest)
    if obj.get("format") != fmt:
        raise StoreError(f"{store} holds a {obj.get('format')!r} store, expected {fmt!r}")
    if int(obj.get("version", -1)) > FORMAT_VERSION:
        raise StoreError(f"{store} was written by a newer pairmine (format version "
                         f"{obj.get('version')})", "upgrade pairmine")
    return obj


def finish_store(out: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest last (atomically) and drop the work-in-progress folder."""
    manifest = {"format": manifest["format"], "version": FORMAT_VERSION,
                "pairmine_version": pairmine_version(), **manifest}
    partial = out / PARTIAL_DIR
    write_json_atomic(out / MANIFEST, manifest)
    if partial.exists():
        shutil.rmtree(partial)


def input_record(store: Path) -> dict[str, str]:
    """How a store names an input store: its path and the sha256 of its manifest."""
    store = Path(store).resolve()
    return {"path": str(store), "manifest_sha256": sha256_file(store / MANIFEST)}


# ---------------------------------------------------------------------------------------------
# readers


@dataclass(frozen=True)
class Embeddings:
    """A complete embeddings store opened for reading.

    ``vectors`` is a read-only memory map of all rows (shape ``(n, dim)``, float16 or float32)
    when the store has one shard, else the rows concatenated in memory.
    ``meta`` is the row-aligned metadata table (id, key, source, member, label, sha256).
    """

    path: Path
    manifest: dict[str, Any]
    vectors: np.ndarray
    meta: pa.Table

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def __len__(self) -> int:
        return int(self.manifest["count"])


def embedding_shards(store: Path, manifest: dict[str, Any]) -> list[tuple[Path, Path]]:
    return [(store / s["emb"], store / s["meta"]) for s in manifest["shards"]]


def open_embeddings(path: str | os.PathLike[str], *, mmap: bool = True) -> Embeddings:
    """Open an embeddings store: a memory-mapped matrix and its metadata table."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = Path(path)
    manifest = read_manifest(store, EMBEDDINGS_FORMAT)
    mats: list[np.ndarray] = []
    metas: list[pa.Table] = []
    for emb_path, meta_path in embedding_shards(store, manifest):
        if not emb_path.exists() or not meta_path.exists():
            raise StoreError(f"store {store} is missing shard {emb_path.name}",
                             "the store is damaged; re-run embed with --overwrite")
        mats.append(np.load(emb_path, mmap_mode="r" if mmap else None, allow_pickle=False))
        metas.append(pq.read_table(meta_path))
    dim = int(manifest["dim"])
    dtype = np.dtype(manifest["dtype"])
    if not mats:
        vectors = np.zeros((0, dim), dtype=dtype)
        meta = pa.Table.from_pylist([], schema=META_SCHEMA())
    else:
        for m in mats:
            if m.ndim != 2 or m.shape[1] != dim:
                raise StoreError(f"store {store} mixes dimensions ({m.shape} vs dim {dim})")
        vectors = mats[0] if len(mats) == 1 else np.concatenate(mats, axis=0)
        meta = pa.concat_tables(metas)
    if vectors.shape[0] != meta.num_rows:
        raise StoreError(f"store {store}: {vectors.shape[0]} vectors but {meta.num_rows} rows "
                         "of metadata")
    return Embeddings(path=store, manifest=manifest, vectors=vectors, meta=meta)


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


def PAIRS_SCHEMA() -> pa.Schema:
    """Schema of ``pairs/pairs-NNNNN.parquet``: unordered pairs stored once with ``a < b``."""
    import pyarrow as pa

    return pa.schema([("a", pa.int64()), ("b", pa.int64()), ("score", pa.float32())])


@dataclass(frozen=True)
class Pairs:
    """A complete pairs store: the pair table (a, b, score) and its manifest."""

    path: Path
    manifest: dict[str, Any]
    table: pa.Table

    @property
    def embeddings_path(self) -> Path:
        return Path(self.manifest["inputs"]["embeddings"]["path"])


def open_pairs(path: str | os.PathLike[str]) -> Pairs:
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = Path(path)
    manifest = read_manifest(store, PAIRS_FORMAT)
    tables = []
    for name in manifest["shards"]:
        shard = store / name
        if not shard.exists():
            raise StoreError(f"pairs store {store} is missing {name}", "re-run match")
        tables.append(pq.read_table(shard))
    table = pa.concat_tables(tables) if tables else PAIRS_SCHEMA().empty_table()
    return Pairs(path=store, manifest=manifest, table=table)


def open_pairs_embeddings(pairs: Pairs) -> Embeddings:
    """The embeddings store a pairs store was made from, or a clear error naming it."""
    emb = pairs.embeddings_path
    if not (emb / MANIFEST).exists():
        raise StoreError(f"the embeddings store {emb} that {pairs.path} was made from is gone",
                         "restore it, or re-run embed and match")
    return open_embeddings(emb)
