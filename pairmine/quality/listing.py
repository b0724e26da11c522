"""``pairs``: a few pairs of a pairs store as rows a person reads: both keys, both labels (class
names where the store knows them) and the score.

One of three selections: the ``top`` highest scores, a seeded uniform ``sample``, or every
pair that touches the image ``key``. The pair shards are read one at a time
(``Pairs.iter_shards``) and only the selection is kept, so memory is bounded by the selection
and one shard whatever the store's size; the keys and labels of the chosen images are read
with ``Embeddings.take`` (only the metadata shards that hold them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import ConfigError, InputError

if TYPE_CHECKING:
    import numpy as np

    from pairmine.stores import Embeddings, Pairs

log = logging.getLogger(__name__)

DEFAULT_TOP = 20
COLUMNS = ("a", "b", "score", "key_a", "label_a", "key_b", "label_b")


@dataclass(frozen=True)
class PairRow:
    """One pair: embeddings-store ids ``a < b``, its score, and both images' keys and labels
    (the class name where the store knows it, else the integer label, else None)."""

    a: int
    b: int
    score: float
    key_a: str
    label_a: str | int | None
    key_b: str
    label_b: str | int | None

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in COLUMNS}


@dataclass(frozen=True)
class PairListing:
    """The chosen pairs, highest score first, and what was chosen from what."""

    path: Path
    band: tuple[float, float]
    selection: str  # "top 20", "sample 20 (seed 0)", "key cat/0001.jpg"
    total: int  # pairs in the store
    rows: list[PairRow]

    @property
    def columns(self) -> tuple[str, ...]:
        """The fields of every row, in order (CSV header, JSON keys)."""
        return COLUMNS


def list_pairs(pairs: str | Path, *, top: int | None = None, sample: int | None = None,
               seed: int = 0, key: str | None = None) -> PairListing:
    """The ``top`` highest-scoring pairs, ``sample`` pairs drawn uniformly (``seed``), or every
    pair of the image ``key``; at most one of the three (none: the top 20)."""
    from pairmine import stores

    chosen = [name for name, value in (("--top", top), ("--sample", sample), ("--key", key))
              if value is not None]
    if len(chosen) > 1:
        raise ConfigError(f"{' and '.join(chosen)} both given", "choose one selection")
    for name, value in (("--top", top), ("--sample", sample)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ConfigError(f"{name} {value!r} is not a number of pairs >= 1",
                              f"e.g. {name} 20")
    store = stores.open_pairs(pairs)
    emb = stores.open_pairs_embeddings(store)
    shards = _shards(store)
    if key is not None:
        image = _image_id(emb, key)
        a, b, score, total = _touching(shards, image)
        selection = f"key {key}"
    elif sample is not None:
        a, b, score, total = _sample(shards, sample, seed)
        selection = f"sample {sample} (seed {seed})"
    else:
        n = DEFAULT_TOP if top is None else top
        a, b, score, total = _top(shards, n)
        selection = f"top {n}"
    return PairListing(path=store.path, band=(store.info.min, store.info.max),
                       selection=selection, total=total, rows=_rows(emb, a, b, score))


Arrays = tuple["np.ndarray", "np.ndarray", "np.ndarray"]


def _shards(store: Pairs) -> Callable[[], Iterator[Arrays]]:
    def read() -> Iterator[Arrays]:
        import numpy as np

        for table in store.iter_shards():
            yield (np.asarray(table.column("a").to_numpy(), dtype=np.int64),
                   np.asarray(table.column("b").to_numpy(), dtype=np.int64),
                   np.asarray(table.column("score").to_numpy(), dtype=np.float32))
    return read


Kept = tuple["np.ndarray", "np.ndarray", "np.ndarray", "np.ndarray"]  # a, b, score, rank


def _nothing() -> Kept:
    import numpy as np

    return (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32),
            np.empty(0, np.float64))


def _keep_best(keep: Kept, a: np.ndarray, b: np.ndarray, score: np.ndarray, rank: np.ndarray,
               n: int) -> Kept:
    """The ``n`` rows of smallest ``rank`` among those kept and a new shard's (ties by a, b:
    the same rows however the pairs fall into shards)."""
    import numpy as np

    if rank.size > n:  # the shard's own n best first (and every tie of the n-th): a cheap cut
        cut = np.partition(rank, n - 1)[n - 1]
        few = rank <= cut
        a, b, score, rank = a[few], b[few], score[few], rank[few]
    a, b = np.concatenate([keep[0], a]), np.concatenate([keep[1], b])
    score, rank = np.concatenate([keep[2], score]), np.concatenate([keep[3], rank])
    order = np.lexsort((b, a, rank))[:n]
    return a[order], b[order], score[order], rank[order]


def _top(shards: Callable[[], Iterator[Arrays]], n: int) -> tuple[Any, Any, Any, int]:
    keep, total = _nothing(), 0
    for a, b, score in shards():
        total += a.size
        keep = _keep_best(keep, a, b, score, -score.astype("float64"), n)
    return keep[0], keep[1], keep[2], total


def _sample(shards: Callable[[], Iterator[Arrays]], n: int,
            seed: int) -> tuple[Any, Any, Any, int]:
    """A uniform sample without replacement: every pair gets a seeded random priority and the
    ``n`` smallest win (a reservoir: one shard and ``n`` pairs in memory)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    keep, total = _nothing(), 0
    for a, b, score in shards():
        total += a.size
        keep = _keep_best(keep, a, b, score, rng.random(a.size), n)
    order = np.lexsort((keep[1], keep[0], -keep[2]))  # shown highest score first
    return keep[0][order], keep[1][order], keep[2][order], total


def _touching(shards: Callable[[], Iterator[Arrays]],
              image: int) -> tuple[Any, Any, Any, int]:
    import numpy as np

    parts: list[Arrays] = []
    total = 0
    for a, b, score in shards():
        total += a.size
        hit = (a == image) | (b == image)
        parts.append((a[hit], b[hit], score[hit]))
    a = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64)
    b = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.int64)
    score = np.concatenate([p[2] for p in parts]) if parts else np.empty(0, np.float32)
    order = np.lexsort((b, a, -score))
    return a[order], b[order], score[order], total


def _image_id(emb: Embeddings, key: str) -> int:
    """The id of the image whose key is ``key``, reading the key column shard by shard."""
    import pyarrow.compute as pc

    for id_start, table in emb.iter_meta(["key"]):
        found = pc.index(table.column("key"), key).as_py()
        if found is not None and found >= 0:
            return int(id_start + found)
    raise InputError(f"no image with key {key!r} in {emb.path}",
                     "give a key as the embeddings store recorded it, e.g. cat/0001.jpg; "
                     "`pairmine pairs PAIRS` lists some")


def _rows(emb: Embeddings, a: np.ndarray, b: np.ndarray, score: np.ndarray) -> list[PairRow]:
    import numpy as np

    if a.size == 0:
        return []
    ids = np.unique(np.concatenate([a, b]))
    meta = emb.take(ids, ["key", "label"]).to_pydict()
    names = emb.manifest.get("source", {}).get("class_names")
    if not (isinstance(names, list) and all(isinstance(x, str) for x in names)):
        names = None

    def label(value: Any) -> str | int | None:
        if value is None:
            return None
        if names is not None and 0 <= int(value) < len(names):
            return str(names[int(value)])
        return int(value)

    info = {int(i): (str(k), label(v))
            for i, k, v in zip(ids.tolist(), meta["key"], meta["label"], strict=True)}
    # a float32 score as its shortest decimal (0.9712346, not 0.9712345600128174)
    return [PairRow(a=int(x), b=int(y), score=float(str(s)), key_a=info[int(x)][0],
                    label_a=info[int(x)][1], key_b=info[int(y)][0], label_b=info[int(y)][1])
            for x, y, s in zip(a.tolist(), b.tolist(), score.astype(np.float32), strict=True)]
