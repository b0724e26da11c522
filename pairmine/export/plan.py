"""The ordered list of samples an export writes: pairs, plus every image when combined.

Pairs are numbered by sorting them on ``(a, b)``, so a pair's id does not depend on how the
match stage happened to order its shards. The sample order is that order (pairs only), or
a seeded permutation of images and pairs: it depends only on the inputs and the seed, never
on timing, so an interrupted export resumes into the same shards.

Memory: the plan never holds the embeddings store's metadata. The pairs are three arrays of
P (20 bytes a pair, read shard by shard); the N image samples of a combined export are
positions, computed from the sample number, not lists; only ``--shuffle`` needs the seeded
permutation of all S = N + P samples (4 bytes a sample below 2^31 samples, 8 while it is
drawn). Image metadata (key, path, label, hash) is read when a window of consecutive
positions is first looked at: the ids it uses, sorted, through ``Embeddings.take``
(:class:`StoreCatalogue`), a few windows kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pairmine import stores
from pairmine.errors import StoreError

if TYPE_CHECKING:
    import numpy as np

SAMPLE_PAIR = 0
SAMPLE_IMAGE = 1
META_COLUMNS = ("key", "source", "member", "label", "sha256")
WINDOW = 8192  # sample positions whose image metadata is read at once
WINDOWS_KEPT = 4  # the reader threads work on consecutive positions: a few windows suffice


class Lookup(Protocol):
    def __getitem__(self, image_id: int) -> Any: ...


class Catalogue(Protocol):
    """The images an export uses, by embeddings-store id: ``keys[i]``, ``sources[i]``..."""

    @property
    def keys(self) -> Lookup: ...

    @property
    def sources(self) -> Lookup: ...

    @property
    def members(self) -> Lookup: ...

    @property
    def labels(self) -> Lookup: ...

    @property
    def sha256(self) -> Lookup: ...

    def place(self, image_id: int) -> tuple[int, int] | None:
        """Where the image lies inside its source (``stores.PLACE_COLUMNS``), if recorded."""

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class ListCatalogue:
    """A catalogue held as lists (small ones: a verify of a Parquet export's references)."""

    keys: list[str]
    sources: list[str]
    members: list[str | None]
    labels: list[int | None]
    sha256: list[str]
    places: list[tuple[int, int] | None] | None = None

    def place(self, image_id: int) -> tuple[int, int] | None:
        return None if self.places is None else self.places[image_id]

    def __len__(self) -> int:
        return len(self.keys)


class _Column:
    def __init__(self, catalogue: StoreCatalogue, name: str) -> None:
        self._catalogue, self._name = catalogue, name

    def __getitem__(self, image_id: int) -> Any:
        return self._catalogue.value(self._name, int(image_id))


@dataclass
class _Window:
    columns: dict[str, list[Any]]
    # image id -> its row in columns: a dict, because the reader threads look up several
    # columns of every image under the GIL, and a scalar np.searchsorted costs ~50x more
    rows: dict[int, int]


class StoreCatalogue:
    """The embeddings store's metadata, read a window of sample positions at a time: when a
    position is first looked at (:meth:`touch`), the ids its window uses are read, sorted,
    shard by shard (``Embeddings.take``). An id outside every kept window is read alone.
    Safe to use from several threads."""

    def __init__(self, emb: Any, ids_of: Callable[[int, int], np.ndarray], samples: int) -> None:
        self._emb = emb
        self._ids_of = ids_of
        self._samples = samples
        self._windows: OrderedDict[int, _Window] = OrderedDict()
        self._lock = threading.Lock()
        self.keys = _Column(self, "key")
        self.sources = _Column(self, "source")
        self.members = _Column(self, "member")
        self.labels = _Column(self, "label")
        self.sha256 = _Column(self, "sha256")
        # a store of a source read by offset records where each image lies
        self._columns = META_COLUMNS + tuple(c for c in stores.PLACE_COLUMNS
                                             if c in emb.meta_columns)

    def __len__(self) -> int:
        return len(self._emb)

    def follow(self, ids_of: Callable[[int, int], np.ndarray], count: int) -> None:
        """Read windows of another sequence from now on: ``touch(k)`` reads the ids
        ``ids_of(lo, hi)`` of the window of ``k`` (e.g. every image a parquet export checks)."""
        with self._lock:
            self._ids_of, self._samples = ids_of, count
            self._windows.clear()

    def touch(self, position: int) -> None:
        number = position // WINDOW
        with self._lock:
            if number in self._windows:
                self._windows.move_to_end(number)
                return
            lo = number * WINDOW  # read under the lock: the reader threads wait for it
            window = self._read(self._ids_of(lo, min(lo + WINDOW, self._samples)))
            self._windows[number] = window
            while len(self._windows) > WINDOWS_KEPT:
                self._windows.popitem(last=False)

    def _read(self, ids: np.ndarray) -> _Window:
        import numpy as np

        ids = np.unique(ids)
        table = self._emb.take(ids, list(self._columns))
        return _Window(columns={c: table.column(c).to_pylist() for c in self._columns},
                       rows={i: row for row, i in enumerate(ids.tolist())})

    def place(self, image_id: int) -> tuple[int, int] | None:
        offset_column, size_column = stores.PLACE_COLUMNS
        if size_column not in self._columns:
            return None
        offset, size = self.value(offset_column, image_id), self.value(size_column, image_id)
        return None if offset is None or size is None else (int(offset), int(size))

    def value(self, column: str, image_id: int) -> Any:
        import numpy as np

        with self._lock:
            windows = list(reversed(self._windows.values()))
        for window in windows:
            row = window.rows.get(image_id)
            if row is not None:
                return window.columns[column][row]
        if not 0 <= image_id < len(self._emb):
            raise IndexError(image_id)
        return self._read(np.asarray([image_id], dtype=np.int64)).columns[column][0]


class _OrderView:
    """``plan.kinds`` / ``plan.refs``: ``[p]`` (a number, looking at that window of the
    catalogue) or ``[start:stop]`` (arrays)."""

    def __init__(self, plan: Plan, which: int) -> None:
        self._plan, self._which = plan, which

    def __len__(self) -> int:
        return self._plan.samples

    def __getitem__(self, key: int | slice) -> Any:
        if isinstance(key, slice):
            start, stop, step = key.indices(self._plan.samples)
            if step != 1:
                raise ValueError("sample order views take plain slices")
            return self._plan.kinds_refs(start, stop)[self._which]
        position = int(key)
        if position < 0:
            position += self._plan.samples
        if not 0 <= position < self._plan.samples:
            raise IndexError(key)
        if isinstance(self._plan.images, StoreCatalogue):
            self._plan.images.touch(position)
        return self._plan.kind_ref(position)[self._which]


@dataclass
class Plan:
    pairs_path: Path
    embeddings_path: Path
    source: dict[str, Any]  # the embeddings manifest's source record (kind, spec, ...)
    class_names: list[str] | None
    n_images: int
    combined: bool
    pair_a: np.ndarray  # (P,) int64, a < b, sorted by (a, b): index = pair id
    pair_b: np.ndarray  # (P,) int64
    pair_score: np.ndarray  # (P,) float32
    permutation: np.ndarray | None  # (S,) the shuffled sample order (None: unshuffled)
    images: Catalogue = field(init=False)
    _emb: Any = field(default=None, repr=False)

    def embeddings(self) -> Any:
        """The embeddings store (opened lazily: its manifest)."""
        if self._emb is None:
            self._emb = stores.open_embeddings(self.embeddings_path)
        return self._emb

    def __post_init__(self) -> None:
        self.kinds = _OrderView(self, 0)
        self.refs = _OrderView(self, 1)

    @property
    def source_kind(self) -> str:
        return str(self.source.get("kind", ""))

    @property
    def samples(self) -> int:
        return self.pairs + (self.n_images if self.combined else 0)

    @property
    def pairs(self) -> int:
        return int(self.pair_a.shape[0])

    def kinds_refs(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """The kind (``SAMPLE_PAIR``/``SAMPLE_IMAGE``) and reference (pair id or image id) of
        the samples at positions ``[start, stop)``: unshuffled, a combined export's images come
        first (ids 0..N-1), then the pairs."""
        import numpy as np

        stop = max(start, min(stop, self.samples))
        order = (np.arange(start, stop, dtype=np.int64) if self.permutation is None
                 else self.permutation[start:stop].astype(np.int64))
        if not self.combined:
            return np.full(order.shape[0], SAMPLE_PAIR, np.uint8), order
        image = order < self.n_images
        kinds = np.where(image, SAMPLE_IMAGE, SAMPLE_PAIR).astype(np.uint8)
        return kinds, np.where(image, order, order - self.n_images)

    def kind_ref(self, position: int) -> tuple[int, int]:
        """:meth:`kinds_refs` of one position, without arrays (asked for every sample)."""
        order = position if self.permutation is None else int(self.permutation[position])
        if not self.combined:
            return SAMPLE_PAIR, order
        return (SAMPLE_IMAGE, order) if order < self.n_images else \
            (SAMPLE_PAIR, order - self.n_images)

    def image_ids(self, start: int, stop: int) -> np.ndarray:
        """Every image id the samples at ``[start, stop)`` use (repeats allowed)."""
        import numpy as np

        kinds, refs = self.kinds_refs(start, stop)
        pairs = refs[kinds == SAMPLE_PAIR]
        return np.concatenate([refs[kinds == SAMPLE_IMAGE], self.pair_a[pairs],
                               self.pair_b[pairs]])


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
    n = len(emb)
    _check_ids(emb)

    a, b, score = _read_pairs(pairs)
    # a control store of pairmine.quality's pairs_from_labels pairs images with themselves
    _check_pairs(pairs.path, a, b, n, self_pairs=pairs.manifest.get("self_pairs") is True)
    order = np.lexsort((b, a))
    a, b, score = a[order], b[order], score[order]
    del order

    samples = a.shape[0] + (n if combined else 0)
    permutation = None
    if shuffle:
        drawn = np.random.Generator(np.random.PCG64(seed)).permutation(samples)
        permutation = drawn.astype(np.int32) if samples < 2**31 else drawn
        del drawn

    names = emb.manifest.get("class_names") or emb.manifest.get("source", {}).get("class_names")
    plan = Plan(pairs_path=pairs.path.resolve(), embeddings_path=emb.path.resolve(),
                source=dict(emb.manifest["source"]),
                class_names=list(names) if isinstance(names, list) else None,
                n_images=n, combined=combined, pair_a=a, pair_b=b, pair_score=score,
                permutation=permutation, _emb=emb)
    plan.images = StoreCatalogue(emb, plan.image_ids, plan.samples)
    return plan


def _read_pairs(pairs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pair columns as arrays, shard by shard (no table of all pairs)."""
    import numpy as np

    a: list[np.ndarray] = []
    b: list[np.ndarray] = []
    score: list[np.ndarray] = []
    for table in pairs.iter_shards():
        a.append(table.column("a").to_numpy().astype(np.int64))
        b.append(table.column("b").to_numpy().astype(np.int64))
        score.append(table.column("score").to_numpy().astype(np.float32))
    if not a:
        return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    return np.concatenate(a), np.concatenate(b), np.concatenate(score)


def _check_ids(emb: Any) -> None:
    """Every shard's ids are its rows' positions in the store (0..N-1 in order), shard by
    shard."""
    import numpy as np

    for start, table in emb.iter_meta(["id"]):
        ids = table.column("id").to_numpy()
        if not np.array_equal(ids, np.arange(start, start + ids.shape[0], dtype=ids.dtype)):
            raise StoreError(f"the embeddings store {emb.path} has ids that are not "
                             f"0..{len(emb) - 1} in order",
                             "the store is damaged; re-run embed with --overwrite")


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


