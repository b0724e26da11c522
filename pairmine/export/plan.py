"""The ordered list of samples an export writes: pairs, plus every image when combined.

Pairs are numbered by sorting them on ``(a, b)``, so a pair's id does not depend on how the
match stage happened to order its shards. The sample order is that order (pairs only), or
a seeded permutation of images and pairs: it depends only on the inputs and the seed, never
on timing, so an interrupted export resumes into the same shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine import stores
from pairmine.errors import StoreError

if TYPE_CHECKING:
    import numpy as np

SAMPLE_PAIR = 0
SAMPLE_IMAGE = 1


@dataclass(frozen=True)
class Catalogue:
    """The images of the embeddings store, by id (the meta columns as Python lists)."""

    keys: list[str]
    sources: list[str]
    members: list[str | None]
    labels: list[int | None]
    sha256: list[str]

    def __len__(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class Plan:
    pairs_path: Path
    embeddings_path: Path
    source: dict[str, Any]  # the embeddings manifest's source record (kind, spec, ...)
    class_names: list[str] | None
    images: Catalogue
    pair_a: np.ndarray  # (P,) int64, a < b, sorted by (a, b): index = pair id
    pair_b: np.ndarray  # (P,) int64
    pair_score: np.ndarray  # (P,) float32
    kinds: np.ndarray  # (S,) uint8: SAMPLE_PAIR or SAMPLE_IMAGE, in write order
    refs: np.ndarray  # (S,) int64: pair id or image id

    @property
    def source_kind(self) -> str:
        return str(self.source.get("kind", ""))

    @property
    def samples(self) -> int:
        return int(self.kinds.shape[0])

    @property
    def pairs(self) -> int:
        return int(self.pair_a.shape[0])


def make_plan(pairs_path: Path, *, combined: bool, shuffle: bool, seed: int) -> Plan:
    import numpy as np

    pairs = stores.open_pairs(pairs_path)
    emb = stores.open_pairs_embeddings(pairs)
    recorded = pairs.info.embeddings_manifest_sha256
    if recorded and recorded != stores.sha256_file(emb.path / stores.MANIFEST):
        raise StoreError(f"the embeddings store {emb.path} changed after {pairs.path} was made "
                         "from it: the pair ids may point at other images",
                         "re-run match on the current embeddings store")
    if "kind" not in emb.manifest.get("source", {}):
        raise StoreError(f"the embeddings store {emb.path} records no source kind",
                         "re-run embed with this pairmine version")

    meta = emb.meta
    n = meta.num_rows
    ids = meta.column("id").to_numpy()
    if not np.array_equal(ids, np.arange(n, dtype=ids.dtype)):
        raise StoreError(f"the embeddings store {emb.path} has ids that are not 0..{n - 1} in "
                         "order", "the store is damaged; re-run embed with --overwrite")
    images = Catalogue(
        keys=meta.column("key").to_pylist(),
        sources=meta.column("source").to_pylist(),
        members=meta.column("member").to_pylist(),
        labels=meta.column("label").to_pylist(),
        sha256=meta.column("sha256").to_pylist(),
    )

    a = pairs.table.column("a").to_numpy().astype(np.int64, copy=False)
    b = pairs.table.column("b").to_numpy().astype(np.int64, copy=False)
    score = pairs.table.column("score").to_numpy().astype(np.float32, copy=False)
    # a control store of pairmine.quality's pairs_from_labels pairs images with themselves
    _check_pairs(pairs.path, a, b, n, self_pairs=pairs.manifest.get("self_pairs") is True)
    order = np.lexsort((b, a))
    a, b, score = a[order], b[order], score[order]

    p = a.shape[0]
    if combined:
        kinds = np.concatenate([np.full(n, SAMPLE_IMAGE, np.uint8),
                                np.full(p, SAMPLE_PAIR, np.uint8)])
        refs = np.concatenate([np.arange(n, dtype=np.int64), np.arange(p, dtype=np.int64)])
    else:
        kinds = np.full(p, SAMPLE_PAIR, np.uint8)
        refs = np.arange(p, dtype=np.int64)
    if shuffle:
        perm = np.random.Generator(np.random.PCG64(seed)).permutation(kinds.shape[0])
        kinds, refs = kinds[perm], refs[perm]

    names = emb.manifest.get("class_names") or emb.manifest.get("source", {}).get("class_names")
    return Plan(pairs_path=pairs.path.resolve(), embeddings_path=emb.path.resolve(),
                source=dict(emb.manifest["source"]),
                class_names=list(names) if isinstance(names, list) else None,
                images=images, pair_a=a, pair_b=b, pair_score=score, kinds=kinds, refs=refs)


def _check_pairs(store: Path, a: np.ndarray, b: np.ndarray, n: int, *,
                 self_pairs: bool = False) -> None:
    """Pairs ``a < b`` within the store, each once; a store marked ``self_pairs`` (the
    augmented control) holds ``a == b`` pairs instead, an image repeated where its class asks
    for more pairs than it has images."""
    import numpy as np

    if a.shape[0] == 0:
        return
    if self_pairs:
        bad = (a != b) | (a < 0) | (a >= n)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise StoreError(f"control pairs store {store} holds a pair ({int(a[i])}, "
                             f"{int(b[i])}) that is not an image of 0..{n - 1} with itself",
                             "the store is damaged; re-run pairs-from-labels --control")
        return
    bad = (a >= b) | (a < 0) | (b >= n)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise StoreError(f"pairs store {store} holds a pair ({int(a[i])}, {int(b[i])}) that is "
                         f"not a < b within 0..{n - 1}",
                         "the pairs store does not belong to its embeddings store; re-run match")
    packed = a * n + b
    if np.unique(packed).shape[0] != packed.shape[0]:
        raise StoreError(f"pairs store {store} holds the same pair more than once",
                         "the store is damaged; re-run match with --overwrite")
