"""The one resize + centre crop every stage uses (embed on the CPU and on the device, eval,
train): torchvision's ``Resize(int)`` then ``CenterCrop``, through its functional ops.

The short side goes to ``resize`` (the long side to ``int(resize * long / short)``), bilinear
and antialiased; the crop's corner rounds as torchvision's ``center_crop`` does. A PIL image is
resized by Pillow (what torchvision does for PIL input), a uint8 tensor batch by
``torch.nn.functional.interpolate`` on its own device, so the two paths differ only by
resampling details (a few grey levels), never by geometry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image


def resize_center_crop(image: Image.Image, resize: int, crop: int) -> torch.Tensor:
    """A decoded RGB image → uint8 (3, crop, crop), contiguous."""
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode

    resized = F.resize(image, [resize], interpolation=InterpolationMode.BILINEAR,
                       antialias=True)
    cropped = F.center_crop(resized, [crop, crop])
    pixels: torch.Tensor = F.pil_to_tensor(cropped).contiguous()
    return pixels


def resize_center_crop_batch(images: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """Equal-size uint8 images (n, 3, h, w) on any device → uint8 (n, 3, crop, crop)."""
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode

    # torchvision resizes a uint8 tensor in float32 and rounds back to uint8
    resized = F.resize(images, [resize], interpolation=InterpolationMode.BILINEAR,
                       antialias=True)
    cropped: torch.Tensor = F.center_crop(resized, [crop, crop])
    return cropped
