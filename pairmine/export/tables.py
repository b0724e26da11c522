"""``spps.parquet`` (one row per pair) and ``images.parquet`` (one row per image, combined).

Both are ordered by id and carry where each image lives (as the embeddings store recorded
it), its label and hash, and, for shard exports, the shard and sample key it landed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pairmine.export import layout as lay
from pairmine.export.plan import Plan

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa


def pairs_table(plan: Plan, pair_ids: np.ndarray, shard: Sequence[str | None],
                sample_key: Sequence[str | None]) -> pa.Table:
    """Rows for ``pair_ids`` (ascending), with where each landed (``None``: no shards)."""
    import pyarrow as pa

    img = plan.images
    a = plan.pair_a[pair_ids].tolist()
    b = plan.pair_b[pair_ids].tolist()
    columns = {
        "pair_id": pair_ids.tolist(),
        "a": a,
        "b": b,
        "score": plan.pair_score[pair_ids],
        "key_a": [img.keys[i] for i in a],
        "key_b": [img.keys[i] for i in b],
        "source_a": [img.sources[i] for i in a],
        "source_b": [img.sources[i] for i in b],
        "member_a": [img.members[i] for i in a],
        "member_b": [img.members[i] for i in b],
        "label_a": [img.labels[i] for i in a],
        "label_b": [img.labels[i] for i in b],
        "sha256_a": [img.sha256[i] for i in a],
        "sha256_b": [img.sha256[i] for i in b],
        "shard": list(shard),
        "sample_key": list(sample_key),
    }
    return pa.table(columns, schema=lay.SPPS_SCHEMA())


def images_table(plan: Plan, image_ids: np.ndarray, shard: Sequence[str | None],
                 sample_key: Sequence[str | None]) -> pa.Table:
    import pyarrow as pa

    img = plan.images
    ids = image_ids.tolist()
    columns = {
        "id": ids,
        "key": [img.keys[i] for i in ids],
        "source": [img.sources[i] for i in ids],
        "member": [img.members[i] for i in ids],
        "label": [img.labels[i] for i in ids],
        "sha256": [img.sha256[i] for i in ids],
        "shard": list(shard),
        "sample_key": list(sample_key),
    }
    return pa.table(columns, schema=lay.IMAGES_SCHEMA())
