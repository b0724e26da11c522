"""The one resize + centre crop every stage uses (embed on the CPU and on the device, eval,
train): torchvision's ``Resize(int)`` then ``CenterCrop``, through its functional ops.

The short side goes to ``resize`` (the long side to ``int(resize * long / short)``), or, with
``resize_mode="squash"``, both sides (SigLIP's transform); then the centre crop, whose corner
rounds as torchvision's ``center_crop`` does. The filter is the encoder's (``bilinear``, the
torchvision default, or ``bicubic``, DINO's and CLIP's), always antialiased. A PIL image is
resized by Pillow (what torchvision does for PIL input), a uint8 tensor batch by
``torch.nn.functional.interpolate`` on its own device, so the two paths differ only by
resampling details (a few grey levels), never by geometry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from PIL import Image

INTERPOLATIONS = ("bilinear", "bicubic")
RESIZE_MODES = ("shortest", "squash")


def _resize_args(resize: int, interpolation: str, resize_mode: str) -> tuple[list[int], Any]:
    from torchvision.transforms import InterpolationMode

    if interpolation not in INTERPOLATIONS or resize_mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize {interpolation!r}/{resize_mode!r}")
    size = [resize] if resize_mode == "shortest" else [resize, resize]
    mode = InterpolationMode.BILINEAR if interpolation == "bilinear" else InterpolationMode.BICUBIC
    return size, mode


def resize_center_crop(image: Image.Image, resize: int, crop: int, *,
                       interpolation: str = "bilinear",
                       resize_mode: str = "shortest") -> torch.Tensor:
    """A decoded RGB image → uint8 (3, crop, crop), contiguous."""
    import torchvision.transforms.functional as F

    size, mode = _resize_args(resize, interpolation, resize_mode)
    resized = F.resize(image, size, interpolation=mode, antialias=True)
    cropped = F.center_crop(resized, [crop, crop])
    pixels: torch.Tensor = F.pil_to_tensor(cropped).contiguous()
    return pixels


def resize_center_crop_batch(images: torch.Tensor, resize: int, crop: int, *,
                             interpolation: str = "bilinear",
                             resize_mode: str = "shortest") -> torch.Tensor:
    """Equal-size uint8 images (n, 3, h, w) on any device → uint8 (n, 3, crop, crop)."""
    import torchvision.transforms.functional as F

    size, mode = _resize_args(resize, interpolation, resize_mode)
    # torchvision resizes a uint8 tensor in float32 and rounds back to uint8
    resized = F.resize(images, size, interpolation=mode, antialias=True)
    cropped: torch.Tensor = F.center_crop(resized, [crop, crop])
    return cropped
