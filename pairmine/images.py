"""Decoding image bytes into RGB, the one way every stage does it."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image


class ImageDecodeError(ValueError):
    """The bytes are empty, truncated, not an image Pillow can read, or too many pixels."""


# Pillow's own MAX_IMAGE_PIXELS (it warns above it and refuses above twice it): 89,478,485
# pixels, about 9459 x 9459, is 256 MiB decoded as 8-bit RGB, which is what one DataLoader
# worker then holds for one image. Far above any photo a dataset is made of (ImageNet's
# largest are ~25 M pixels); the usual sign of more is a decompression bomb: a few KB of PNG
# that would decode to gigabytes.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485


def decode_rgb(data: bytes, *, draft_size: int | None = None,
               max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode encoded image bytes to an RGB image.

    Grayscale, palette, alpha (composited on black), CMYK and 16-bit images become 8-bit RGB.
    ``draft_size`` lets JPEG decoding scale down by a power of two (DCT scaling) while
    keeping both sides at least ``draft_size`` pixels: same result for a later resize to
    that size, far less decoding work for large photos. An image whose header declares more
    than ``max_pixels`` pixels is refused before any pixel is decoded.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageDecodeError("empty file")
    _let_pillow_open(max_pixels)
    try:
        with warnings.catch_warnings():
            # Pillow's warning level is ours to decide (the check below), not a log line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
        check_pixels(img.size, max_pixels)
        if draft_size is not None and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        img.load()
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image Pillow can identify") from None
    except Image.DecompressionBombError as exc:  # before OSError/ValueError: not "corrupt"
        raise ImageDecodeError(f"refused as a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        if isinstance(exc, ImageDecodeError):
            raise
        raise ImageDecodeError(f"corrupt image: {exc}") from None
    return to_rgb(img)


def check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    """Refuse an image of ``size`` (w, h) with more than ``max_pixels`` pixels."""
    pixels = max(1, size[0]) * max(1, size[1])
    if pixels > max_pixels:
        raise ImageDecodeError(f"refused: {size[0]}x{size[1]} = {pixels:,} pixels, over the "
                               f"--max-image-pixels limit of {max_pixels:,} (a decompression "
                               f"bomb, or raise the limit)")


def _let_pillow_open(max_pixels: int) -> None:
    """Pillow refuses, at open, images over twice its global MAX_IMAGE_PIXELS. A higher limit
    asked of us must hold, so the global is raised (never lowered) to stay out of its way;
    check_pixels is the limit that counts."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > 2 * Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


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
