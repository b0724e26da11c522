"""Datasets for external trainers: an SPPS export in the shape SSL libraries expect.

Every item is ``(views, target)``: ``views = [view1, view2]``, where for a pair
``view1 = aug(anchor)`` and ``view2 = aug(positive)`` (SePP-ID: the two images of a semantic
positive pair are each other's positive), and for a single image of a combined export two
augmentations of that same image (plain instance discrimination). ``target`` is the anchor's
label, ``-1`` when unknown; SSL losses ignore it, linear probes and kNN monitors use it.
This is what lightly's and solo-learn's training loops unpack, so an export plugs into them
(and into any MoCo/SimCLR-style loop) unchanged.

- :class:`SPPSDataset`: map-style, random access. Reads a shard export through its indexes
  (one ``pread`` per image, no tar scan) or a parquet export through the original files.
- :func:`spps_webdataset`: an iterable WebDataset pipeline over the shards, for streaming,
  multi-node (``split_by_node``) and resampled training.

Exports are read through the export store's one reader, ``pairmine.stores.open_export``
(its typed manifest and its shard index, from the export's own Parquet index files): the
reference trainer (``pairmine.train``) reads its ``--combined`` exports through it too. An
export format's ``open`` (``pairmine.export.formats``, a light module) gives the items of its
exports, so a plugin format's exports load here as well.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from torch.utils.data import Dataset

from pairmine import stores
from pairmine.errors import StoreError
from pairmine.export.formats import export_format
from pairmine.images import decode_rgb
from pairmine.stores.export import (
    ANCHOR,
    IMAGE,
    JSON,
    POSITIVE,
    SAMPLE_KINDS,
    SHARDS_DIR,
    Export,
)

if TYPE_CHECKING:
    import webdataset as wds
    from PIL import Image

Transform = Callable[["Image.Image"], Any]
Item = tuple[list[Any], int]

KINDS = SAMPLE_KINDS  # "pair", "image"


def two_views(first: Image.Image, second: Image.Image, transform: Transform | None,
              transform2: Transform | None = None) -> list[Any]:
    """``[t1(first), t2(second)]``; ``t2`` defaults to ``t1`` (asymmetric pipelines such as
    BYOL's pass both)."""
    t1 = transform or _identity
    t2 = transform2 or t1
    return [t1(first), t2(second)]


def _identity(img: Image.Image) -> Image.Image:
    return img


def _target(label: Any) -> int:
    return -1 if label is None else int(label)


# ---------------------------------------------------------------------------------------------
# map-style


class SPPSDataset(Dataset[Item]):
    """Random access over an export: ``dataset[i] -> (views, target)``.

    ``kinds`` picks pairs, single images (combined exports) or both. Item order: shard
    exports in shard order (already shuffled when exported with ``--shuffle``/``--combined``);
    parquet exports pairs by id, then images by id. Let the DataLoader shuffle.

    Safe in DataLoader workers (fork or spawn): files are opened lazily per process.
    """

    def __init__(self, export: str | Path, transform: Transform | None = None, *,
                 transform2: Transform | None = None,
                 kinds: Sequence[str] = KINDS) -> None:
        self.path = Path(export)
        self.export = stores.open_export(self.path)
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise StoreError(f"unknown sample kinds {sorted(unknown)}",
                             f"choose from {', '.join(KINDS)}")
        manifest = self.export.manifest.to_json()  # the format registry's currency
        layout = export_format(manifest, self.path)
        self.manifest = manifest
        self.transform = transform
        self.transform2 = transform2
        self._items = layout.open(self.path, manifest, tuple(kinds))

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> Item:
        first, second = self.images(index)
        return two_views(first, second, self.transform, self.transform2), self.target(index)

    def images(self, index: int) -> tuple[Image.Image, Image.Image]:
        """The two decoded images (the same image twice for a single-image sample)."""
        data_a, data_b = self.raw(index)
        first = decode_rgb(data_a)
        return first, first if data_b is None else decode_rgb(data_b)

    def raw(self, index: int) -> tuple[bytes, bytes | None]:
        """The original encoded bytes (``None`` second for a single-image sample)."""
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self._items.read(index % len(self))

    def target(self, index: int) -> int:
        return _target(self._items.labels[index])

    def info(self, index: int) -> dict[str, Any]:
        """Kind, ids and keys of item ``index`` (for logging and debugging)."""
        return self._items.info(index)


class ShardItems:
    """Items of a shard export, located by its shard index: one pread per image."""

    def __init__(self, export: Export, kinds: tuple[str, ...]) -> None:
        index = export.index.of_kinds(kinds)
        self.tars = [str(path) for path in export.tar_paths()]
        self.shard: list[int] = index.values("shard")
        self.keys: list[str] = index.values("key")
        self.kinds: list[str] = index.values("kind")
        self.a: list[int] = index.values("a")
        self.b: list[int | None] = index.values("b")
        self.labels: list[int | None] = index.values("label_a")
        self.spans: list[tuple[int, int, int | None, int | None]] = list(zip(
            index.values("offset_a"), index.values("size_a"), index.values("offset_b"),
            index.values("size_b"), strict=True))
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.keys)

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # a forked worker: descriptors are the parent's
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            fd = os.open(self.tars[shard], os.O_RDONLY)
            self._fds[shard] = fd
        return fd

    def read(self, index: int) -> tuple[bytes, bytes | None]:
        # pread: no shared file position, so forked workers can never interfere
        fd = self._fd(self.shard[index])
        off_a, size_a, off_b, size_b = self.spans[index]
        data_a = os.pread(fd, size_a, off_a)
        data_b = None if off_b is None or size_b is None else os.pread(fd, size_b, off_b)
        if len(data_a) != size_a or (size_b is not None and data_b is not None
                                     and len(data_b) != size_b):
            raise StoreError(f"{self.tars[self.shard[index]]} ends early",
                             "the export is damaged; check it with pairmine verify")
        return data_a, data_b

    def info(self, index: int) -> dict[str, Any]:
        return {"key": self.keys[index], "kind": self.kinds[index], "a": self.a[index],
                "b": self.b[index], "shard": self.tars[self.shard[index]]}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    # os's functions bound at definition: at interpreter exit the module may be torn down first
    def __del__(self, _getpid: Callable[[], int] = os.getpid,
                _close: Callable[[int], None] = os.close) -> None:
        if getattr(self, "_pid", None) == _getpid():
            for fd in getattr(self, "_fds", {}).values():
                _close(fd)


class TableItems:
    """Items of a parquet export: pairs (then images) read from the original files."""

    def __init__(self, export: Export, kinds: tuple[str, ...]) -> None:
        self.source_kind = export.manifest.source_kind
        self.refs: list[tuple[str, str | None, str | None, str | None]] = []
        # where each image lies in its tar (exports of WebDataset sources), else None
        self.places: list[tuple[tuple[int, int] | None, tuple[int, int] | None]] = []
        self.labels: list[int | None] = []
        self.kinds: list[str] = []
        self.keys: list[str] = []
        images = export.images() if "image" in kinds else None
        if "pair" in kinds:
            t = export.pairs().to_pydict()
            self.refs += list(zip(t["source_a"], t["member_a"], t["source_b"], t["member_b"],
                                  strict=True))
            self.places += list(zip(stores.table_places(t, "_a"), stores.table_places(t, "_b"),
                                   strict=True))
            self.labels += t["label_a"]
            self.keys += [f"pair {a}-{b}" for a, b in zip(t["a"], t["b"], strict=True)]
            self.kinds += ["pair"] * len(t["a"])
        if images is not None:
            t = images.to_pydict()
            self.refs += [(s, m, None, None) for s, m in zip(t["source"], t["member"],
                                                              strict=True)]
            self.places += [(place, None) for place in stores.table_places(t, "")]
            self.labels += t["label"]
            self.keys += t["key"]
            self.kinds += ["image"] * len(t["id"])
        self._reader: Any = None

    def __len__(self) -> int:
        return len(self.refs)

    def read(self, index: int) -> tuple[bytes, bytes | None]:
        if self._reader is None:
            from pairmine.sources import ref_reader

            self._reader = ref_reader(self.source_kind)
        from pairmine.sources import read_ref

        src_a, mem_a, src_b, mem_b = self.refs[index]
        place_a, place_b = self.places[index]
        data_a = read_ref(self._reader, src_a, mem_a, place_a)[0]
        return data_a, None if src_b is None else read_ref(self._reader, src_b, mem_b,
                                                           place_b)[0]

    def info(self, index: int) -> dict[str, Any]:
        src_a, _, src_b, _ = self.refs[index]
        return {"key": self.keys[index], "kind": self.kinds[index], "source_a": src_a,
                "source_b": src_b}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reader"] = None  # readers may hold open files and caches: rebuilt per worker
        return state


class ExportItems(Protocol):
    """What an export format's ``open`` returns: its samples, readable by index."""

    @property
    def labels(self) -> Sequence[int | None]: ...  # the anchor's label per item

    def __len__(self) -> int: ...

    def read(self, index: int) -> tuple[bytes, bytes | None]: ...

    def info(self, index: int) -> dict[str, Any]: ...


# ---------------------------------------------------------------------------------------------
# iterable (WebDataset)


def shard_urls(shards: str | Path | Sequence[str | Path]) -> str | list[str]:
    """The tar shards of an export directory (from its manifest), or ``shards`` as given
    (a brace pattern such as ``spps/shards/spps-{000000..000009}.tar``, or a list)."""
    if isinstance(shards, (str, Path)):
        path = Path(shards)
        if path.is_dir():
            if (path / stores.MANIFEST).exists():
                export = stores.open_export(path)
                if not export.has_shards:
                    raise StoreError(f"{path} is an export without shards",
                                     "export with --format webdataset")
                return [str(tar) for tar in export.tar_paths()]
            tars = sorted(str(p) for p in (path / SHARDS_DIR).glob("*.tar")) or \
                sorted(str(p) for p in path.glob("*.tar"))
            if not tars:
                raise StoreError(f"no .tar shards in {path}")
            return tars
        return str(shards)
    return [str(s) for s in shards]


class ToViews:
    """A WebDataset sample (raw members) → ``(views, target)``; picklable for workers."""

    def __init__(self, transform: Transform | None = None,
                 transform2: Transform | None = None) -> None:
        self.transform = transform
        self.transform2 = transform2

    def __call__(self, sample: dict[str, Any]) -> Item:
        first = second = None
        for name, value in sample.items():
            role = name.split(".", 1)[0]
            if role in (ANCHOR, IMAGE):
                first = value
            elif role == POSITIVE:
                second = value
        if first is None:
            raise ValueError(f"sample {sample.get('__key__')} holds no anchor or image member")
        info = json.loads(sample[JSON])
        label = info.get("label_a", info.get("label"))
        img_a = decode_rgb(first)
        img_b = img_a if second is None else decode_rgb(second)
        return two_views(img_a, img_b, self.transform, self.transform2), _target(label)


def spps_webdataset(
    shards: str | Path | Sequence[str | Path],
    transform: Transform | None = None,
    *,
    transform2: Transform | None = None,
    shuffle: int = 1000,
    shardshuffle: int = 100,
    resampled: bool = False,
    epoch_samples: int | None = None,
    seed: int | None = None,
    split_by_node: bool = True,
) -> wds.WebDataset:
    """A WebDataset pipeline yielding ``(views, target)`` from the shards of an export.

    ``shuffle`` is the sample shuffle buffer (0: keep shard order), ``shardshuffle`` the shard
    shuffle buffer. ``split_by_node`` gives each distributed rank its own shards (rank and
    world size from ``RANK``/``WORLD_SIZE`` or an initialised ``torch.distributed``);
    DataLoader workers always split shards among themselves. With ``resampled`` every rank
    and worker draws shards at random with replacement, forever: give ``epoch_samples``
    (per worker) to make epochs, as DDP needs equal-length epochs on every rank.
    """
    import webdataset as wds

    urls = shard_urls(shards)
    pipeline = wds.WebDataset(
        urls, resampled=resampled, shardshuffle=False if resampled or not shardshuffle
        else shardshuffle, nodesplitter=wds.split_by_node if split_by_node else None,
        seed=seed, empty_check=False)
    if shuffle > 0:
        pipeline = pipeline.shuffle(shuffle, seed=seed)
    pipeline = pipeline.map(ToViews(transform, transform2))
    if epoch_samples is not None:
        pipeline = pipeline.with_epoch(epoch_samples)
    return pipeline


__all__ = ["KINDS", "ExportItems", "Item", "SPPSDataset", "ShardItems", "TableItems", "ToViews",
           "Transform", "shard_urls", "spps_webdataset", "two_views"]
