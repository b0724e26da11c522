"""The writer of the embed stage: per shard an ``emb`` array, an errors part and a ``meta``
table (written last: its presence marks the shard complete); at the end the global ids, the
merged errors and the manifest (written by the run, last of all)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine import stores
from pairmine.embed.record import EmbedRecord
from pairmine.errors import SourceError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from pairmine.encoders import Encoder
    from pairmine.sources import ImageSource

RUN_LOG = "runs.jsonl"  # one line per invocation (timings); the only file that differs on resume


def write_shard(out: Path, k: int, vectors: np.ndarray, ok_rows: list[tuple[int, str]],
                bad_rows: list[tuple[int, str]], refs: pa.Table, src: ImageSource) -> None:
    """Shard ``k``: ``vectors`` (rows, dim) for the items ``ok_rows`` (item, sha256), and the
    items ``bad_rows`` (item, reason) that gave no vector. Where the source says where its
    images lie inside their files, the metadata records it (``stores.PLACE_COLUMNS``). The
    errors part comes first: the store's shard writer writes the metadata last, which marks
    the shard complete."""
    import pyarrow as pa

    errors = refs.take(pa.array([i for i, _ in bad_rows], type=pa.int64()))
    errors_table = pa.table({
        "key": errors.column("key"), "source": errors.column("source"),
        "member": errors.column("member"),
        "error": pa.array([reason for _, reason in bad_rows], type=pa.string()),
    }, schema=stores.ERRORS_SCHEMA())
    stores.write_parquet_atomic(errors_part(out, k), errors_table)
    rows = refs.take(pa.array([i for i, _ in ok_rows], type=pa.int64()))
    meta = pa.table({
        # ids are filled in when the manifest is assembled (they depend on earlier shards);
        # until then the shard holds its local row numbers
        "id": pa.array(range(len(ok_rows)), type=pa.int64()),
        "key": rows.column("key"), "source": rows.column("source"),
        "member": rows.column("member"), "label": rows.column("label"),
        "sha256": pa.array([d for _, d in ok_rows], type=pa.string()),
    }, schema=stores.META_SCHEMA())
    places = src.places([i for i, _ in ok_rows])
    if places is not None:
        for name in stores.PLACE_COLUMNS:
            meta = meta.append_column(pa.field(name, pa.int64()), places.column(name))
    stores.write_embedding_shard(out, k, vectors, meta)


def shard_paths(out: Path, k: int) -> tuple[Path, Path, Path]:
    """The ``emb``, ``meta`` and ``codes`` files of shard ``k``."""
    emb, meta, codes = stores.embedding_shard_files(k)
    return out / emb, out / meta, out / codes


def errors_part(out: Path, k: int) -> Path:
    """Shard ``k``'s errors, merged into ``errors.parquet`` when the store is complete."""
    return out / stores.PARTIAL_DIR / stores.shard_name("errors", k, ".parquet")


def completed_shards(out: Path, n_shards: int) -> set[int]:
    """The shards whose four files are all in place (the ones a resumed run skips)."""
    done = set()
    for k in range(n_shards):
        emb_path, meta_path, codes_path = shard_paths(out, k)
        if meta_path.exists() and emb_path.exists() and codes_path.exists() \
                and errors_part(out, k).exists():
            done.add(k)
    return done


def assemble_manifest(out: Path, n_shards: int, record: EmbedRecord, enc: Encoder,
                      src: ImageSource, refs: pa.Table) -> dict[str, Any]:
    """Give every row its global id, merge the errors, and describe the store."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    shards = []
    id_start = 0
    errors = []
    for k in range(n_shards):
        emb_path, meta_path, codes_path = shard_paths(out, k)
        meta = pq.read_table(meta_path)
        rows = meta.num_rows
        ids = pa.array(range(id_start, id_start + rows), type=pa.int64())
        if meta.column("id").to_pylist()[:1] != ids.to_pylist()[:1]:
            stores.write_parquet_atomic(meta_path, meta.set_column(0, "id", ids))
        shards.append(stores.EmbeddingShard(
            emb=f"{stores.EMB_DIR}/{emb_path.name}", meta=f"{stores.META_DIR}/{meta_path.name}",
            rows=rows, id_start=id_start, codes=f"{stores.CODES_DIR}/{codes_path.name}",
        ).to_json())
        id_start += rows
        errors.append(pq.read_table(errors_part(out, k)))
    error_table = pa.concat_tables(errors) if errors else stores.ERRORS_SCHEMA().empty_table()
    stores.write_parquet_atomic(out / stores.ERRORS_FILE, error_table)
    if id_start == 0:
        raise SourceError(f"none of the {refs.num_rows} images of {record.source} could be read",
                          f"see {out / stores.ERRORS_FILE} for the reasons")
    labelled = pc.sum(pc.is_valid(refs.column("label"))).as_py() or 0
    return {
        "format": stores.EMBEDDINGS_FORMAT,
        "count": id_start,
        "dim": enc.dim,
        "dtype": record.dtype,
        "normalized": True,
        "errors": error_table.num_rows,
        "items": refs.num_rows,
        "shards": shards,
        "source": {"kind": record.source_kind, "spec": record.source, **src.describe(),
                   "labelled_items": labelled, "class_names": src.class_names()},
        "encoder": enc.describe(),
        "config": asdict(record),
    }
