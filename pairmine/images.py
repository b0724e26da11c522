"""Decoding image bytes into RGB, the one way every stage does it."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image


class ImageDecodeError(ValueError):
    """The bytes are empty, truncated, or not an image Pillow can read."""


def decode_rgb(data: bytes, *, draft_size: int | None = None) -> Image.Image:
    """Decode encoded image bytes to an RGB image.

    Grayscale, palette, alpha (composited on black), CMYK and 16-bit images become 8-bit RGB.
    ``draft_size`` lets JPEG decoding scale down by a power of two (DCT scaling) while
    keeping both sides at least ``draft_size`` pixels: same result for a later resize to
    that size, far less decoding work for large photos.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageDecodeError("empty file")
    try:
        img = Image.open(io.BytesIO(data))
        if draft_size is not None and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        img.load()
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image Pillow can identify") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise ImageDecodeError(f"corrupt image: {exc}") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"refused: {exc}") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grayscale: scale the full range to 8 bits instead of clipping it
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr * (255.0 / hi), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")
