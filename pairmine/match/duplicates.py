"""Exact duplicates: images with the same content hash are never a pair; they are listed in
``duplicates.parquet`` instead (the pairs among the images the search considers)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pairmine.stores import Embeddings, content_codes

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


def hash_codes(store: Embeddings) -> tuple[np.ndarray, str | None]:
    """Each image's content code (``(N,)`` int64: equal codes, equal hashes) and the hash
    column they come from; without one, every image is its own code (with a warning)."""
    codes, column = content_codes(store.meta)
    if column is None:
        log.warning("embeddings store %s has no content hash column: duplicates are not "
                    "detected", store.path)
    return codes, column


def duplicate_groups(codes: np.ndarray, members: np.ndarray) -> Iterator[np.ndarray]:
    """Sorted ids of each group of ``members`` that share a code, groups of 2 or more."""
    import numpy as np

    order = np.lexsort((members, codes[members]))
    ids, cs = members[order], codes[members][order]
    starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    for s, e in zip(starts, ends, strict=True):
        if e - s > 1:
            yield ids[s:e]


def write_duplicates(path: Path, store: Embeddings, codes: np.ndarray, anchors: np.ndarray,
                      against: str, column: str | None) -> tuple[int, int]:
    """``duplicates.parquet`` (a, b, sha256; a < b): every pair with equal content hash among
    the pairs the search considers (both in the subset, or one of them with --against all).
    Streamed in batches so that one huge group of identical images cannot exhaust memory."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pairmine.stores import atomic_path

    schema = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("sha256", pa.string())])
    n = len(store)
    is_anchor = np.zeros(n, dtype=bool)
    is_anchor[anchors] = True
    members = anchors if against == "subset" else np.arange(n, dtype=np.int64)
    hashes = store.meta.column(column) if column is not None else None
    total = groups = 0
    batch: list[tuple[np.ndarray, np.ndarray]] = []
    batch_rows = 0
    with atomic_path(path) as tmp:
        writer = pq.ParquetWriter(tmp, schema, compression="zstd", write_statistics=True,
                                  store_schema=True)
        try:
            def flush() -> None:
                nonlocal batch, batch_rows
                if batch:
                    a = np.concatenate([x for x, _ in batch])
                    b = np.concatenate([y for _, y in batch])
                    assert hashes is not None
                    h = hashes.take(pa.array(a))
                    writer.write_table(pa.table({"a": a, "b": b, "sha256": h}, schema=schema))
                batch, batch_rows = [], 0

            if hashes is not None:
                for ids in duplicate_groups(codes, members):
                    ia, ib = np.triu_indices(len(ids), k=1)
                    a, b = ids[ia], ids[ib]
                    if against == "all":  # only pairs the search would have considered
                        keep = is_anchor[a] | is_anchor[b]
                        a, b = a[keep], b[keep]
                    if len(a) == 0:
                        continue
                    groups += 1
                    total += len(a)
                    batch.append((a, b))
                    batch_rows += len(a)
                    if batch_rows >= 1 << 20:
                        flush()
                flush()
            if total == 0:
                writer.write_table(schema.empty_table())
        finally:
            writer.close()
    return total, groups
