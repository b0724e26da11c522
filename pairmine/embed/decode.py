"""The device decoder of the embed stage: JPEGs decoded on the compute device (nvJPEG on
CUDA), for `embed --decode device`.

On one GPU the CPU decode path, not the model, limits embedding: the performance anchors
measured ~3,000 images/s for 500x375 JPEGs with 16 DataLoader workers against ~12,800 images/s
for ResNet-50 in bf16, and ~19,000 images/s for batched nvJPEG decoding. So in this mode the
DataLoader workers only read and hash the bytes of JPEGs (``ImageDataset(decode="device")``),
and the main process decodes them as a batch with ``torchvision.io.decode_jpeg(list,
device=...)``, resizes (bilinear, antialiased) and centre-crops on the device.

What cannot be decoded there falls back to the CPU path image by image, so the result set is
the one the CPU path gives: non-JPEGs, CMYK/YCCK JPEGs and anything nvJPEG rejects are decoded
by Pillow, and an image Pillow also rejects is an error with Pillow's reason. Pixels differ
from the CPU path by resampling details (Pillow's reducing resize vs torch's antialiased
interpolate, DCT scaling under ``draft``), not by content.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pairmine.embed.reader import ImageDataset, LoadedBatch

if TYPE_CHECKING:
    import torch

    from pairmine.encoders import Preprocess

log = logging.getLogger(__name__)


class DeviceJpegDecoder:
    """LoadedBatch with encoded JPEGs → LoadedBatch whose pixels are all decoded, on ``device``."""

    def __init__(self, preprocess: Preprocess, device: str, fallback: ImageDataset) -> None:
        import torch

        self.resize, self.crop = preprocess.resize, preprocess.crop
        self.interpolation, self.resize_mode = preprocess.interpolation, preprocess.resize_mode
        self.device = torch.device(device)
        self.fallback = fallback  # the CPU path, for what the device cannot decode
        self.fallbacks = 0

    def __call__(self, batch: LoadedBatch) -> LoadedBatch:
        import torch

        if not any(e is not None for e in batch.encoded):
            return batch
        decoded = self._resize_crop_all(
            self._decode_all([e for e in batch.encoded if e is not None]))
        cpu = iter(batch.pixels.to(self.device, non_blocking=True))
        dev = iter(decoded)
        pixels: list[torch.Tensor] = []
        ok, errors = list(batch.ok), list(batch.errors)
        for pos, (index, encoded) in enumerate(zip(batch.indices, batch.encoded, strict=True)):
            if encoded is None:
                if ok[pos]:
                    pixels.append(next(cpu))
                continue
            image = next(dev)
            if image is None:  # the device could not decode it: the CPU path decides
                self.fallbacks += 1
                item = self.fallback.decode_bytes(index, bytes(encoded.numpy()),
                                                  batch.sha256[pos])
                ok[pos], errors[pos] = item.pixels is not None, item.error
                if item.pixels is not None:
                    pixels.append(item.pixels.to(self.device))
                continue
            pixels.append(image)
        stacked = (torch.stack(pixels) if pixels
                   else torch.empty((0, 3, 1, 1), dtype=torch.uint8, device=self.device))
        return LoadedBatch(indices=batch.indices, pixels=stacked, ok=ok, sha256=batch.sha256,
                           errors=errors, encoded=[None] * len(batch.indices))

    def _decode_all(self, encoded: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """One batched call; if it fails, one call per image so one bad file costs only
        itself (None: not decodable on the device)."""
        import warnings

        from torchvision.io import ImageReadMode, decode_jpeg

        with warnings.catch_warnings():
            # torchvision 0.29 announces the move of its decoders to TorchCodec on every call
            # (docs/encoders.md says so once)
            warnings.filterwarnings("ignore", category=DeprecationWarning,
                                    message=".*decoding and encoding capabilities of TorchVision")
            try:
                return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError:
                out: list[torch.Tensor | None] = []
                for e in encoded:
                    try:
                        out.append(decode_jpeg(e, mode=ImageReadMode.RGB, device=self.device))
                    except RuntimeError:
                        out.append(None)
                return out

    def _resize_crop_all(self, images: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """Resize and crop every decoded image, one batched call per distinct size (few on
        real datasets), so the work is a handful of kernels rather than several per image."""
        import torch

        out: list[torch.Tensor | None] = [None] * len(images)
        by_size: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
        for i, image in enumerate(images):
            if image is not None:
                by_size.setdefault(tuple(image.shape), []).append((i, image))
        for members in by_size.values():
            cropped = self._resize_crop(torch.stack([image for _, image in members]))
            for (i, _), image in zip(members, cropped, strict=True):
                out[i] = image
        return out

    def _resize_crop(self, images: torch.Tensor) -> torch.Tensor:
        """(n, 3, h, w) uint8 → (n, 3, crop, crop) uint8 with the CPU path's geometry (one
        ``resize_center_crop``, on the device)."""
        from pairmine.transforms import resize_center_crop_batch

        return resize_center_crop_batch(images, self.resize, self.crop,
                                        interpolation=self.interpolation,
                                        resize_mode=self.resize_mode)
