"""Exact duplicates: images with the same content hash are never a pair; they are listed in
``duplicates.parquet`` instead (the pairs among the images the search considers).

Found without every hash in memory: the store's 64-bit content codes are read shard by shard
(``Embeddings.iter_codes``) in passes over ranges of the code space, each pass keeping only
the rows whose code falls in its range (memory O(N / passes)); rows with equal codes are
confirmed on their full hash, so a collision of codes is never taken for a duplicate. Groups
are written in the order of their first row in the store, which is the order the earlier
whole-table code (dictionary codes) wrote them in, so the file's bytes are unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pairmine.stores import Embeddings

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

# rows' codes a pass keeps, on average: 16 bytes each plus the sort's temporaries, ~200 MiB
# at most; each pass reads every shard's codes (8 bytes a row), so 100M rows take 24 passes
PASS_ROWS = 1 << 22


def hash_column(store: Embeddings) -> str | None:
    """The store's content hash column (None, with a warning, when it has none)."""
    column = store.hash_column
    if column is None:
        log.warning("embeddings store %s has no content hash column: duplicates are not "
                    "detected", store.path)
    return column


def code_passes(n: int, pass_rows: int = PASS_ROWS) -> int:
    return max(1, -(-n // pass_rows))


def duplicate_groups(store: Embeddings, column: str, passes: int
                     ) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, sorted ids)`` of every group of 2 or more rows with equal full hashes,
    pass by pass (not in first-row order)."""
    import numpy as np

    step = (1 << 64) // passes
    for p in range(passes):
        lo = np.uint64(p * step)
        hi = np.uint64(min((p + 1) * step, (1 << 64) - 1))
        last = p == passes - 1
        ids_parts, code_parts = [], []
        for start, codes in store.iter_codes():
            inside = (codes != 0) & (codes >= lo) & ((codes <= hi) if last else (codes < hi))
            local = np.flatnonzero(inside)
            ids_parts.append(local.astype(np.int64) + start)
            code_parts.append(codes[local])
        if not ids_parts:
            continue
        ids, codes = np.concatenate(ids_parts), np.concatenate(code_parts)
        order = np.lexsort((ids, codes))
        ids, codes = ids[order], codes[order]
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        ends = np.r_[starts[1:], len(ids)]
        multi = (ends - starts) > 1
        if not multi.any():
            continue
        # equal codes: confirm on the full hash (a code collision splits a group)
        cand = np.concatenate([ids[s:e] for s, e in zip(starts[multi], ends[multi],
                                                          strict=True)])
        cand.sort()
        hashes = store.take(cand, [column]).column(0).to_pylist()
        by_hash: dict[str, list[int]] = {}
        for i, h in zip(cand.tolist(), hashes, strict=True):
            if h is not None:
                by_hash.setdefault(h, []).append(i)
        for members in by_hash.values():
            if len(members) > 1:
                yield members[0], np.asarray(members, dtype=np.int64)


def write_duplicates(path: Path, store: Embeddings, anchors: np.ndarray | None,
                     against: str, column: str | None,
                     pass_rows: int = PASS_ROWS) -> tuple[int, int]:
    """``duplicates.parquet`` (a, b, sha256; a < b): every pair with equal content hash among
    the pairs the search considers (both in the subset, or one of them with --against all).
    ``anchors`` None: every image. Streamed in batches so that one huge group of identical
    images cannot exhaust memory."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pairmine.stores import atomic_path

    schema = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("sha256", pa.string())])
    groups: list[tuple[int, np.ndarray]] = []
    if column is not None:
        groups = sorted(duplicate_groups(store, column, code_passes(len(store), pass_rows)),
                        key=lambda g: g[0])

    def is_anchor(ids: np.ndarray) -> np.ndarray:
        if anchors is None:
            return np.ones(len(ids), dtype=bool)
        pos = np.minimum(np.searchsorted(anchors, ids), max(len(anchors) - 1, 0))
        return anchors[pos] == ids if len(anchors) else np.zeros(len(ids), dtype=bool)

    total = n_groups = 0
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
                    assert column is not None
                    h = store.take(a, [column]).column(0)
                    writer.write_table(pa.table({"a": a, "b": b, "sha256": h}, schema=schema))
                batch, batch_rows = [], 0

            for _, ids in groups:
                if against == "subset":  # members: the anchors only
                    ids = ids[is_anchor(ids)]
                if len(ids) < 2:
                    continue
                ia, ib = np.triu_indices(len(ids), k=1)
                a, b = ids[ia], ids[ib]
                if against == "all":  # only pairs the search would have considered
                    keep = is_anchor(a) | is_anchor(b)
                    a, b = a[keep], b[keep]
                if len(a) == 0:
                    continue
                n_groups += 1
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
    return total, n_groups
