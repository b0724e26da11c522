"""The one resize + centre crop honours each encoder's declared filter and resize mode, on the
CPU (PIL) and batched tensor paths, exactly as torchvision's own transforms do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from pairmine.transforms import resize_center_crop, resize_center_crop_batch


def _image(w: int = 61, h: int = 45) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("resize_mode", ["shortest", "squash"])
def test_pil_path_equals_torchvision(interpolation: str, resize_mode: str) -> None:
    img = _image()
    mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}
    size = 32 if resize_mode == "shortest" else (32, 32)
    want = T.Compose([T.Resize(size, interpolation=mode[interpolation], antialias=True),
                      T.CenterCrop(28), T.PILToTensor()])(img)
    got = resize_center_crop(img, 32, 28, interpolation=interpolation, resize_mode=resize_mode)
    assert got.dtype == torch.uint8 and got.shape == (3, 28, 28)
    assert torch.equal(got, want)


def test_the_options_change_the_pixels() -> None:
    img = _image()
    base = resize_center_crop(img, 32, 28)
    assert not torch.equal(base, resize_center_crop(img, 32, 28, interpolation="bicubic"))
    assert not torch.equal(base, resize_center_crop(img, 32, 28, resize_mode="squash"))


@pytest.mark.parametrize("resize_mode", ["shortest", "squash"])
def test_batch_path_has_the_same_geometry(resize_mode: str) -> None:
    img = _image()
    pixels = torch.from_numpy(np.asarray(img)).permute(2, 0, 1).unsqueeze(0).contiguous()
    got = resize_center_crop_batch(pixels, 32, 28, interpolation="bicubic",
                                   resize_mode=resize_mode)
    want = resize_center_crop(img, 32, 28, interpolation="bicubic", resize_mode=resize_mode)
    assert got.shape == (1, 3, 28, 28)
    # Pillow and torch resample slightly differently; the geometry is the same
    assert (got[0].int() - want.int()).abs().float().mean() < 3.0


def test_unknown_options_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown resize"):
        resize_center_crop(_image(), 32, 28, interpolation="lanczos")


def test_embed_loader_uses_the_encoders_declared_transform(tmp_path: object) -> None:
    from pathlib import Path

    from pairmine.embed.reader import ImageDataset
    from pairmine.encoders.base import Preprocess
    from pairmine.sources import open_source

    root = Path(str(tmp_path)) / "imgs"
    root.mkdir()
    img = _image()
    img.save(root / "a.png")
    source = open_source(root)
    pre = Preprocess(resize=32, crop=28, interpolation="bicubic", resize_mode="squash")
    item = ImageDataset(source, pre, draft=False)[0]
    assert item.pixels is not None
    assert torch.equal(item.pixels, resize_center_crop(img, 32, 28, interpolation="bicubic",
                                                       resize_mode="squash"))
