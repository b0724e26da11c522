"""Reader → mapper for encoders: original bytes → hash → RGB → resize/crop → uint8 tensor.

Runs inside DataLoader workers. The float conversion and normalisation happen later, batched,
on the device: moving uint8 is 4× fewer bytes than float32 through pinned memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pairmine.images import ImageDecodeError, decode_rgb

if TYPE_CHECKING:
    import torch

    from pairmine.encoders import Preprocess
    from pairmine.sources import ImageSource


@dataclass
class LoadedItem:
    index: int  # position in the source's refs
    pixels: torch.Tensor | None  # (3, crop, crop) uint8, None when the image failed
    sha256: str | None
    error: str | None


@dataclass
class LoadedBatch:
    indices: list[int]  # every item of the batch, in order
    pixels: torch.Tensor  # (n_ok, 3, crop, crop) uint8: the items that decoded
    ok: list[bool]
    sha256: list[str | None]
    errors: list[str | None]

    def pin_memory(self) -> LoadedBatch:  # DataLoader(pin_memory=True) calls this
        self.pixels = self.pixels.pin_memory()
        return self


class ImageDataset:
    """Map-style dataset over a source: item i → LoadedItem, never raising for a bad image."""

    def __init__(self, source: ImageSource, preprocess: Preprocess, *, draft: bool = True) -> None:
        self.source = source
        self.resize = preprocess.resize
        self.crop = preprocess.crop
        self.draft = draft

    def __len__(self) -> int:
        return int(self.source.refs().num_rows)

    def __getitem__(self, index: int) -> LoadedItem:
        try:
            data = self.source.read(index)
        except Exception as exc:
            return LoadedItem(index, None, None, f"unreadable: {_one_line(exc)}")
        digest = hashlib.sha256(data).hexdigest()
        try:
            img = decode_rgb(data, draft_size=self.resize if self.draft else None)
            pixels = self._resize_crop(img)
        except ImageDecodeError as exc:
            return LoadedItem(index, None, digest, str(exc))
        except Exception as exc:
            return LoadedItem(index, None, digest, f"cannot decode: {_one_line(exc)}")
        return LoadedItem(index, pixels, digest, None)

    def _resize_crop(self, img: object) -> torch.Tensor:
        import numpy as np
        import torch
        from PIL import Image

        assert isinstance(img, Image.Image)
        w, h = img.size
        if min(w, h) != self.resize:
            # resize the short side to `resize` (torchvision's Resize(int) rule), antialiased
            if w <= h:
                size = (self.resize, max(1, int(self.resize * h / w)))
            else:
                size = (max(1, int(self.resize * w / h)), self.resize)
            img = img.resize(size, Image.Resampling.BILINEAR)
            w, h = img.size
        if (w, h) != (self.crop, self.crop):
            # centre crop with torchvision's rounding
            top = round((h - self.crop) / 2.0)
            left = round((w - self.crop) / 2.0)
            img = img.crop((left, top, left + self.crop, top + self.crop))
        arr = np.asarray(img, dtype=np.uint8)  # (crop, crop, 3)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def collate(items: list[LoadedItem]) -> LoadedBatch:
    import torch

    good = [it.pixels for it in items if it.pixels is not None]
    pixels = torch.stack(good) if good else torch.empty((0, 3, 1, 1), dtype=torch.uint8)
    return LoadedBatch(
        indices=[it.index for it in items],
        pixels=pixels,
        ok=[it.pixels is not None for it in items],
        sha256=[it.sha256 for it in items],
        errors=[it.error for it in items],
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
