"""The reader of the embed stage: source item → original bytes → hash → RGB → resize/crop →
uint8 tensor, in DataLoader workers, batched so that no batch crosses a shard.

The float conversion and normalisation happen later, batched, on the device (``runner``):
moving uint8 is 4× fewer bytes than float32 through pinned memory. With ``decode="device"``
the workers only read and hash JPEGs and hand over their bytes; the main process decodes them
on the device (``decode``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pairmine.errors import PairmineError
from pairmine.images import DEFAULT_MAX_IMAGE_PIXELS, ImageDecodeError, decode_rgb

if TYPE_CHECKING:
    import torch

    from pairmine.encoders import Encoder, Preprocess
    from pairmine.sources import ImageSource


@dataclass
class LoadedItem:
    index: int  # position in the source's refs
    pixels: torch.Tensor | None  # (3, crop, crop) uint8, None when the image failed
    sha256: str | None
    error: str | None
    encoded: torch.Tensor | None = None  # (bytes,) uint8: a JPEG left for the device to decode


@dataclass
class LoadedBatch:
    indices: list[int]  # every item of the batch, in order
    pixels: torch.Tensor  # (n, 3, crop, crop) uint8: the items decoded here, in item order
    ok: list[bool]  # decoded here, or encoded for the device (which may still fail)
    sha256: list[str | None]
    errors: list[str | None]
    encoded: list[torch.Tensor | None]  # per item: JPEG bytes still to decode, else None

    def pin_memory(self) -> LoadedBatch:  # DataLoader(pin_memory=True) calls this
        self.pixels = self.pixels.pin_memory()
        self.encoded = [None if e is None else e.pin_memory() for e in self.encoded]
        return self


class ImageDataset:
    """Map-style dataset over a source: item i → LoadedItem, never raising for a bad image.
    Images declaring more than ``max_pixels`` pixels are errors, on either decode path."""

    def __init__(self, source: ImageSource, preprocess: Preprocess, *, draft: bool = True,
                 decode: str = "cpu", max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        self.source = source
        self.resize = preprocess.resize
        self.crop = preprocess.crop
        self.interpolation = preprocess.interpolation
        self.resize_mode = preprocess.resize_mode
        self.draft = draft
        self.defer_jpeg = decode == "device"
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> LoadedItem:
        try:
            data = self.source.read(index)
        except PairmineError as exc:  # a known refusal (missing, not a file, over the cap)
            return LoadedItem(index, None, None, f"unreadable: {_first_line(str(exc))}")
        except Exception as exc:
            return LoadedItem(index, None, None, f"unreadable: {_one_line(exc)}")
        digest = hashlib.sha256(data).hexdigest()
        if self.defer_jpeg and _device_decodable(data, self.max_pixels):
            import torch

            return LoadedItem(index, None, digest, None,
                              encoded=torch.frombuffer(bytearray(data), dtype=torch.uint8))
        return self.decode_bytes(index, data, digest)

    def decode_bytes(self, index: int, data: bytes, digest: str | None) -> LoadedItem:
        """The CPU path: decode, convert to RGB, resize, crop (never raises for bad bytes)."""
        try:
            img = decode_rgb(data, draft_size=self.resize if self.draft else None,
                             max_pixels=self.max_pixels)
            pixels = self._resize_crop(img)
        except ImageDecodeError as exc:
            return LoadedItem(index, None, digest, str(exc))
        except Exception as exc:
            return LoadedItem(index, None, digest, f"cannot decode: {_one_line(exc)}")
        return LoadedItem(index, pixels, digest, None)

    def _resize_crop(self, img: object) -> torch.Tensor:
        from PIL import Image

        from pairmine.transforms import resize_center_crop

        assert isinstance(img, Image.Image)
        return resize_center_crop(img, self.resize, self.crop,
                                  interpolation=self.interpolation, resize_mode=self.resize_mode)


def collate(items: list[LoadedItem]) -> LoadedBatch:
    import torch

    good = [it.pixels for it in items if it.pixels is not None]
    pixels = torch.stack(good) if good else torch.empty((0, 3, 1, 1), dtype=torch.uint8)
    return LoadedBatch(
        indices=[it.index for it in items],
        pixels=pixels,
        ok=[it.pixels is not None or it.encoded is not None for it in items],
        sha256=[it.sha256 for it in items],
        errors=[it.error for it in items],
        encoded=[it.encoded for it in items],
    )


def _device_decodable(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> bool:
    """A complete JPEG in a colour space nvJPEG turns into RGB (grayscale or YCbCr, 8-bit),
    within the pixel limit. CMYK/YCCK, truncated files, images over the limit and anything
    Pillow cannot identify stay on the CPU path, which handles or reports them. Reads the
    header only."""
    import io

    if data[:3] != b"\xff\xd8\xff":
        return False
    # no end-of-image marker: truncated. Pillow reports it; a GPU decoder might not
    if data.rstrip(b"\x00\r\n")[-2:] != b"\xff\xd9":
        return False
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        with img:
            w, h = img.size
            return (img.format == "JPEG" and img.mode in ("RGB", "L")
                    and max(1, w) * max(1, h) <= max_pixels)
    except Exception:  # unreadable header (or a bomb Pillow refuses): the CPU path says why
        return False


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0][:300] if lines else "no reason given"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# batches that never cross a shard boundary


def shard_items(k: int, shard_size: int, n_items: int) -> int:
    """The number of source items in shard ``k``."""
    return min(shard_size, n_items - k * shard_size)


def shard_batches(src: ImageSource, enc: Encoder, todo: list[int], shard_size: int,
                  n_items: int, batch_size: int, workers: int, device: str,
                  draft: bool, decode: str,
                  max_pixels: int) -> Iterator[tuple[int, Iterator[LoadedBatch]]]:
    """For each shard to do: (shard index, its batches). One DataLoader serves all shards so
    decode workers stay busy across shard boundaries."""
    from torch.utils.data import DataLoader

    batches: list[list[int]] = []
    per_shard: list[tuple[int, int]] = []  # (shard, number of batches)
    for k in todo:
        lo, hi = k * shard_size, min((k + 1) * shard_size, n_items)
        of_shard = [list(range(s, min(s + batch_size, hi))) for s in range(lo, hi, batch_size)]
        batches.extend(of_shard)
        per_shard.append((k, len(of_shard)))
    if not batches:
        return
    dataset = ImageDataset(src, enc.preprocess, draft=draft, decode=decode,
                           max_pixels=max_pixels)
    loader: DataLoader[LoadedItem] = DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.startswith("cuda"),
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
    )
    stream = iter(loader)
    for k, count in per_shard:
        yield k, (next(stream) for _ in range(count))
