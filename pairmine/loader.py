"""Reader → mapper for encoders: original bytes → hash → RGB → resize/crop → uint8 tensor.

Runs inside DataLoader workers. The float conversion and normalisation happen later, batched,
on the device: moving uint8 is 4× fewer bytes than float32 through pinned memory. With
``decode="device"`` the workers only read and hash JPEGs and hand over their bytes; the main
process decodes them on the device (device_decode.py).
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
    """Map-style dataset over a source: item i → LoadedItem, never raising for a bad image."""

    def __init__(self, source: ImageSource, preprocess: Preprocess, *, draft: bool = True,
                 decode: str = "cpu") -> None:
        self.source = source
        self.resize = preprocess.resize
        self.crop = preprocess.crop
        self.draft = draft
        self.defer_jpeg = decode == "device"

    def __len__(self) -> int:
        return int(self.source.refs().num_rows)

    def __getitem__(self, index: int) -> LoadedItem:
        try:
            data = self.source.read(index)
        except Exception as exc:
            return LoadedItem(index, None, None, f"unreadable: {_one_line(exc)}")
        digest = hashlib.sha256(data).hexdigest()
        if self.defer_jpeg and _device_decodable(data):
            import torch

            return LoadedItem(index, None, digest, None,
                              encoded=torch.frombuffer(bytearray(data), dtype=torch.uint8))
        return self.decode_bytes(index, data, digest)

    def decode_bytes(self, index: int, data: bytes, digest: str | None) -> LoadedItem:
        """The CPU path: decode, convert to RGB, resize, crop (never raises for bad bytes)."""
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
        ok=[it.pixels is not None or it.encoded is not None for it in items],
        sha256=[it.sha256 for it in items],
        errors=[it.error for it in items],
        encoded=[it.encoded for it in items],
    )


def _device_decodable(data: bytes) -> bool:
    """A complete JPEG in a colour space nvJPEG turns into RGB (grayscale or YCbCr, 8-bit).
    CMYK/YCCK, truncated files and anything Pillow cannot identify stay on the CPU path, which
    handles or reports them. Reads the header only."""
    import io

    if data[:3] != b"\xff\xd8\xff":
        return False
    # no end-of-image marker: truncated. Pillow reports it; a GPU decoder might not
    if data.rstrip(b"\x00\r\n")[-2:] != b"\xff\xd9":
        return False
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format == "JPEG" and img.mode in ("RGB", "L")
    except Exception:  # unreadable header: let the CPU path say why
        return False


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
