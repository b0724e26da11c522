"""``spps.parquet`` (one row per pair) and ``images.parquet`` (one row per image, combined).

Both are ordered by id and carry where each image lives (as the embeddings store recorded
it), its label and hash, and, for shard exports, the shard and sample key it landed in.
They are written a row group of ``ROWS_PER_GROUP`` rows at a time: each group's image
metadata is read by sorted id through the embeddings store (``Embeddings.take``), so the
writer holds one group, never a column of every row.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine import stores
from pairmine.export import layout as lay
from pairmine.export.plan import META_COLUMNS, Plan

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

ROWS_PER_GROUP = 65536


def write_pairs_table(target: Path, plan: Plan, keep: np.ndarray,
                      shard: np.ndarray | None) -> int:
    """``spps.parquet`` at ``target``: the pairs where ``keep`` (a bool mask over pair ids),
    with the shard each landed in (``shard[pair_id]``, a shard number; None: no shards).
    Returns the rows written."""
    import numpy as np

    def groups() -> Iterator[pa.Table]:
        ids = np.flatnonzero(keep)
        for lo in range(0, ids.shape[0], ROWS_PER_GROUP):
            yield _pairs_group(plan, ids[lo:lo + ROWS_PER_GROUP], shard)

    return _write_groups(target, lay.SPPS_SCHEMA(_places(plan)), groups())


def write_images_table(target: Path, plan: Plan, keep: Any,
                       shard: np.ndarray | None) -> int:
    """``images.parquet`` at ``target``: the images where ``keep`` (a bool mask over ids, or
    anything whose ``keep[lo:hi]`` gives the mask of those ids)."""
    import numpy as np

    def groups() -> Iterator[pa.Table]:
        for lo in range(0, plan.n_images, ROWS_PER_GROUP):
            ids = lo + np.flatnonzero(keep[lo:min(lo + ROWS_PER_GROUP, plan.n_images)])
            if ids.shape[0]:
                yield _images_group(plan, ids, shard)

    return _write_groups(target, lay.IMAGES_SCHEMA(_places(plan)), groups())


def _write_groups(target: Path, schema: pa.Schema, groups: Iterator[pa.Table]) -> int:
    """The groups as one Parquet file, with the settings of ``stores.write_parquet_atomic``
    (a file of one group holds the bytes that function writes for the same table)."""
    import pyarrow.parquet as pq

    rows = 0
    with stores.atomic_path(target) as tmp, pq.ParquetWriter(
            tmp, schema, compression="zstd", write_statistics=True,
            store_schema=True) as writer:
        wrote = False
        for table in groups:
            writer.write_table(table)
            rows += table.num_rows
            wrote = True
        if not wrote:
            writer.write_table(schema.empty_table())
    return rows


def _places(plan: Plan) -> bool:
    """Does the store record where each image lies (``stores.PLACE_COLUMNS``)? Then the
    tables carry it too: a trainer reads a tar member at its offset, without indexing."""
    return all(c in plan.embeddings().meta_columns for c in stores.PLACE_COLUMNS)


def _meta_columns(plan: Plan) -> tuple[str, ...]:
    return META_COLUMNS + (stores.PLACE_COLUMNS if _places(plan) else ())


def _metadata(plan: Plan, ids: np.ndarray) -> tuple[np.ndarray, pa.Table]:
    """The sorted unique ``ids`` and their metadata rows (key, source, member, label, sha256,
    and the places where the store has them)."""
    import numpy as np

    unique = np.unique(ids)
    return unique, plan.embeddings().take(unique, list(_meta_columns(plan)))


def _shard_names(shard: np.ndarray | None, rows: np.ndarray) -> list[str | None]:
    if shard is None:
        return [None] * int(rows.shape[0])
    names: dict[int, str] = {}
    out: list[str | None] = []
    for s in shard[rows].tolist():
        if s not in names:
            names[s] = lay.shard_tar(s)
        out.append(names[s])
    return out


def _pairs_group(plan: Plan, pair_ids: np.ndarray, shard: np.ndarray | None) -> pa.Table:
    import numpy as np
    import pyarrow as pa

    a, b = plan.pair_a[pair_ids], plan.pair_b[pair_ids]
    unique, meta = _metadata(plan, np.concatenate([a, b]))
    at_a = pa.array(np.searchsorted(unique, a), type=pa.int64())
    at_b = pa.array(np.searchsorted(unique, b), type=pa.int64())
    columns: dict[str, Any] = {"pair_id": pair_ids, "a": a, "b": b,
                               "score": plan.pair_score[pair_ids]}
    for name in _meta_columns(plan):
        column = meta.column(name)
        columns[f"{name}_a"] = column.take(at_a)
        columns[f"{name}_b"] = column.take(at_b)
    columns["shard"] = _shard_names(shard, pair_ids)
    columns["sample_key"] = (None if shard is None else
                             [lay.pair_key(i) for i in pair_ids.tolist()])
    if columns["sample_key"] is None:
        columns["sample_key"] = [None] * int(pair_ids.shape[0])
    schema = lay.SPPS_SCHEMA(_places(plan))
    return pa.table({f.name: _typed(columns[f.name], f.type) for f in schema}, schema=schema)


def _images_group(plan: Plan, image_ids: np.ndarray, shard: np.ndarray | None) -> pa.Table:
    import pyarrow as pa

    _, meta = _metadata(plan, image_ids)  # ids ascending: rows in the same order
    columns: dict[str, Any] = {"id": image_ids}
    for name in _meta_columns(plan):
        columns[name] = meta.column(name)
    columns["shard"] = _shard_names(shard, image_ids)
    columns["sample_key"] = ([None] * int(image_ids.shape[0]) if shard is None else
                             [lay.image_key(i) for i in image_ids.tolist()])
    schema = lay.IMAGES_SCHEMA(_places(plan))
    return pa.table({f.name: _typed(columns[f.name], f.type) for f in schema}, schema=schema)


def _typed(values: Any, type_: pa.DataType) -> Any:
    """A column as the schema's type (the store's label column may be narrower)."""
    import pyarrow as pa

    if isinstance(values, pa.ChunkedArray | pa.Array):
        return values if values.type == type_ else values.cast(type_)
    return pa.array(values, type=type_)
