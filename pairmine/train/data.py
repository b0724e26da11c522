"""Training data: reader → two views. The items a MoCo epoch iterates over.

DATA is either
- an image source (any spec ``pairmine.sources.open_source`` accepts): vanilla MoCo-v2, one
  *instance* item per image, whose two views are two augmentations of it; or
- a ``--combined`` export (``format: pairmine/export``, WebDataset tar shards), read through
  the export store's reader ``pairmine.stores.open_export`` as ``pairmine.datasets`` reads it:
  SePP-ID's merged dataset. A single-image sample (``image.<ext>``) is an instance item; a
  pair sample (``anchor.<ext>``, ``positive.<ext>``) is a *semantic* item whose views are
  aug(anchor) and aug(positive). A pair relates both images, so by default it gives two
  items, anchor→positive and positive→anchor (Eq. 2 counts ``ℓ(u, v_m)`` for every image
  that has a positive; Algorithm 1 lists both orders). ``pair_directions=1`` uses each
  stored pair once.

The export's own shard index gives every member's offset and size (no tar is scanned); members
are read by seek + read with file handles opened lazily in each process, so the dataset pickles
into DataLoader workers.
``random_duplicates`` adds the control of the paper's Table 6: that many randomly chosen images
(seeded) as extra items made of two augmentations of the same image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import ConfigError, SourceError, StoreError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from pairmine.sources import ImageSource
    from pairmine.train.augment import AugmentConfig


INSTANCE, SEMANTIC, DUPLICATE = 0, 1, 2  # item kinds; SEMANTIC and DUPLICATE weigh λ
KIND_NAMES = {INSTANCE: "instance", SEMANTIC: "semantic", DUPLICATE: "duplicate"}


class Reader:
    """Image bytes by reference number; picklable."""

    def read(self, ref: int) -> bytes:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError


class SourceReader(Reader):
    """Reference i = image i of an ImageSource."""

    def __init__(self, source: ImageSource, spec: str) -> None:
        self.source = source
        self.spec = spec

    def read(self, ref: int) -> bytes:
        return self.source.read(ref)

    def describe(self) -> dict[str, Any]:
        return {"kind": "source", "spec": self.spec, "source": self.source.describe()}


class TarReader(Reader):
    """Reference i = one tar member (shard number, data offset, size), read by seek + read."""

    def __init__(self, root: Path, tars: list[str], shard: np.ndarray, offset: np.ndarray,
                 size: np.ndarray) -> None:
        self.root = root
        self.tars = tars
        self.shard, self.offset, self.size = shard, offset, size
        self._handles: dict[int, Any] = {}
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = {}, -1  # handles never travel to workers
        return state

    def read(self, ref: int) -> bytes:
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        s = int(self.shard[ref])
        fh = self._handles.get(s)
        if fh is None:
            fh = self._handles[s] = open(self.root / self.tars[s], "rb")  # noqa: SIM115
        fh.seek(int(self.offset[ref]))
        data: bytes = fh.read(int(self.size[ref]))
        if len(data) != int(self.size[ref]):
            raise StoreError(f"{self.root / self.tars[s]} is truncated",
                             "re-run the export, then `pairmine verify` it")
        return data

    def describe(self) -> dict[str, Any]:
        return {"kind": "export", "spec": str(self.root), "shards": len(self.tars)}


@dataclass
class TrainData:
    """Items of one epoch: ``kind[i]`` and the references ``a[i]`` (query view) and ``b[i]``
    (key view; equal to ``a[i]`` for instance and duplicate items)."""

    reader: Reader
    kind: np.ndarray  # (n,) int8
    a: np.ndarray  # (n,) int64
    b: np.ndarray  # (n,) int64
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    def counts(self) -> dict[str, int]:
        import numpy as np

        return {name: int(np.count_nonzero(self.kind == k)) for k, name in KIND_NAMES.items()}

    def describe(self) -> dict[str, Any]:
        return {**self.reader.describe(), **self.info, "items": len(self), **self.counts()}


def open_train_data(spec: str | Path, *, pair_directions: int = 2, random_duplicates: int = 0,
                    seed: int = 0) -> TrainData:
    """DATA → items: an export directory (by its manifest) or any image source."""
    if pair_directions not in (1, 2):
        raise ConfigError(f"pair_directions must be 1 or 2, not {pair_directions}")
    if random_duplicates < 0:
        raise ConfigError("--random-duplicates must be >= 0")
    path = Path(spec)
    if path.is_dir() and (path / "manifest.json").exists():
        data = _open_export(path, pair_directions)
    else:
        data = _open_source(str(spec))
    if random_duplicates:
        data = _add_duplicates(data, random_duplicates, seed)
    if len(data) == 0:
        raise SourceError(f"no training images in {spec}")
    return data


def _open_source(spec: str) -> TrainData:
    import numpy as np

    from pairmine.sources import open_source

    source = open_source(spec, labels=False)
    n = int(source.refs().num_rows)
    refs = np.arange(n, dtype=np.int64)
    return TrainData(SourceReader(source, spec), np.zeros(n, dtype=np.int8), refs, refs.copy())


def _open_export(root: Path, pair_directions: int) -> TrainData:
    """A ``--combined`` export through the export store's one reader: its shard index (from
    the export's own Parquet index files) gives every member's offset and size, in tar order,
    so no tar is scanned and the items are the samples ``pairmine.datasets`` reads."""
    import numpy as np

    from pairmine.stores import open_export
    from pairmine.stores.export import KIND_PAIR

    export = open_export(root)
    if not export.has_shards:
        raise StoreError(f"export {root} lists no tar shards",
                         "export with --format webdataset --combined")
    index = export.index
    is_pair = np.asarray([kind == KIND_PAIR for kind in index.values("kind")], dtype=bool)
    shard = index.numbers("shard")  # (n,)
    # one reference per image member in tar order: a sample's first member (image or
    # anchor), then a pair's positive; anchor.* sorts before positive.* in the tar
    members = 1 + is_pair.astype(np.int64)  # (n,)
    first = np.cumsum(members) - members  # (n,) reference of each sample's first member
    total = int(members.sum())
    ref_shard = np.empty(total, dtype=np.int32)
    ref_offset = np.empty(total, dtype=np.int64)
    ref_size = np.empty(total, dtype=np.int64)
    second = first[is_pair] + 1  # (pairs,) reference of each positive
    ref_shard[first], ref_offset[first], ref_size[first] = (
        shard, index.numbers("offset_a"), index.numbers("size_a"))
    ref_shard[second], ref_offset[second], ref_size[second] = (
        shard[is_pair], index.numbers("offset_b")[is_pair], index.numbers("size_b")[is_pair])
    images = first[~is_pair]  # (images,)
    anchors, positives = first[is_pair], second  # (pairs,) each
    if images.shape[0] == 0:
        raise ConfigError(f"export {root} has pair samples only ({anchors.shape[0]} pairs)",
                          "SePP-ID trains on the merged dataset: export with --combined")
    # instance items, then anchor→positive, then (both directions) positive→anchor
    kinds = [np.zeros(len(images), dtype=np.int8), np.ones(len(anchors), dtype=np.int8)]
    a_parts, b_parts = [images, anchors], [images, positives]
    if pair_directions == 2:
        kinds.append(np.ones(len(anchors), dtype=np.int8))
        a_parts.append(positives)
        b_parts.append(anchors)
    reader = TarReader(root.resolve(), list(index.tars), ref_shard, ref_offset, ref_size)
    info = {"images": int(images.shape[0]), "pairs": int(anchors.shape[0]),
            "pair_directions": pair_directions}
    return TrainData(reader, np.concatenate(kinds), np.concatenate(a_parts),
                     np.concatenate(b_parts), info)


def _add_duplicates(data: TrainData, count: int, seed: int) -> TrainData:
    import numpy as np

    pool = data.a[data.kind == INSTANCE]
    if count > len(pool):
        raise ConfigError(f"--random-duplicates {count} exceeds the {len(pool)} images")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(pool, size=count, replace=False))
    info = {**data.info, "random_duplicates": count}
    return TrainData(data.reader, np.concatenate([data.kind, np.full(count, DUPLICATE, np.int8)]),
                     np.concatenate([data.a, chosen]), np.concatenate([data.b, chosen]), info)


# ---------------------------------------------------------------------------------------------
# the torch dataset: (epoch, item) → two uint8 views


class ImageViews:
    """Map-style dataset over ``(epoch, item)`` keys → the item's views and its kind.

    ``crop=True``: stage 1 of the augmentation (random resized crop + flip) here, views
    (3, S, S) uint8. ``crop=False``: the images only decoded and resized (short side) and
    centre-cropped to ``load_size``, for the batched on-device crop. The epoch travels in the
    key, so persistent workers need no notice of a new epoch.
    """

    def __init__(self, data: TrainData, cfg: AugmentConfig, seed: int, *, crop: bool = True,
                 load_size: int | None = None) -> None:
        self.data = data
        self.cfg = cfg
        self.seed = seed
        self.crop = crop
        self.load_size = load_size or cfg.size

    def __len__(self) -> int:
        return len(self.data)

    def _decode(self, ref: int) -> Image.Image:
        from pairmine.images import ImageDecodeError, decode_rgb

        data = self.data.reader.read(ref)
        try:
            return decode_rgb(data)
        except ImageDecodeError as exc:
            raise SourceError(f"training image {ref} of {self.data.reader.describe()['spec']} "
                              f"cannot be decoded: {exc}", "remove or fix the image") from None


class TwoViews(ImageViews):
    """MoCo-v2's views: ``(epoch, item)`` → (view_q, view_k, kind)."""

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        from pairmine.train.augment import crop_flip, generator

        epoch, i = key
        a, b = int(self.data.a[i]), int(self.data.b[i])
        img_a = self._decode(a)
        img_b = img_a if b == a else self._decode(b)
        kind = int(self.data.kind[i])
        if not self.crop:
            return _fixed(img_a, self.load_size), _fixed(img_b, self.load_size), kind
        gen = generator(self.seed, "views", epoch, i)
        return crop_flip(img_a, self.cfg, gen), crop_flip(img_b, self.cfg, gen), kind


class OriginalAndCrops(ImageViews):
    """LeOCLR's views: ``(epoch, item)`` → (original, crop 1, crop 2, kind). The original is
    the query image ``a`` resized whole to (S, S) (never cropped, flipped at random); the two
    random resized crops come from the key image ``b`` (``a`` itself for an instance item, the
    pair's other image for a semantic one). Colour, grayscale and blur follow, batched, on
    all three views."""

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor,
                                                         torch.Tensor, int]:
        from pairmine.train.augment import crop_flip, generator, resize_flip

        epoch, i = key
        a, b = int(self.data.a[i]), int(self.data.b[i])
        img_a = self._decode(a)
        img_b = img_a if b == a else self._decode(b)
        gen = generator(self.seed, "views", epoch, i)
        original = resize_flip(img_a, self.cfg, gen)
        return (original, crop_flip(img_b, self.cfg, gen), crop_flip(img_b, self.cfg, gen),
                int(self.data.kind[i]))


def _fixed(img: Image.Image, size: int) -> torch.Tensor:
    """Short side to ``size`` then centre crop: equal-size uint8 (3, size, size), the geometry
    embed and eval use."""
    from pairmine.transforms import resize_center_crop

    return resize_center_crop(img, size, size)


class EpochBatches:
    """Batch sampler: a seeded permutation per epoch, cut into full batches (drop_last, as
    MoCo), keys ``(epoch, item)``. Under torch.distributed each process takes its slice."""

    def __init__(self, n: int, batch_size: int, seed: int, *, rank: int = 0,
                 world: int = 1) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world = rank, world
        self.epoch = 0

    def __len__(self) -> int:
        return self.n // self.batch_size

    def order(self, epoch: int) -> torch.Tensor:
        import torch

        from pairmine.train.augment import generator

        return torch.randperm(self.n, generator=generator(self.seed, "order", epoch))

    def __iter__(self) -> Any:
        perm = self.order(self.epoch).tolist()
        b = self.batch_size
        for start in range(0, len(self) * b, b):
            batch = perm[start:start + b][self.rank::self.world]
            yield [(self.epoch, i) for i in batch]
