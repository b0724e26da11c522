"""`embed --decode device`: JPEGs decoded by torchvision on the compute device, everything else
through the CPU path. Run here on the CPU (libjpeg): the same pairmine code as on CUDA, where
torchvision uses nvJPEG; `pytest -m gpu` runs the CUDA comparison."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_image

import pairmine
from pairmine.embed.decode import DeviceJpegDecoder
from pairmine.embed.reader import ImageDataset, collate
from pairmine.encoders.base import Preprocess
from pairmine.sources import open_source


def smooth_jpeg(path: Path, seed: int, size: tuple[int, int], mode: str = "RGB") -> None:
    """Photo-like content (an upscaled random field), so resampling differences stay small."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(max(2, size[1] // 8), max(2, size[0] // 8), 3),
                        dtype=np.uint8)
    img = Image.fromarray(base).resize(size, Image.Resampling.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.convert(mode).save(path, format="JPEG", quality=92)


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    root = tmp_path / "mixed"
    smooth_jpeg(root / "a" / "wide.jpg", 1, (300, 200))
    smooth_jpeg(root / "a" / "tall.jpg", 2, (120, 170))
    smooth_jpeg(root / "a" / "gray.jpg", 3, (90, 90), mode="L")
    smooth_jpeg(root / "a" / "exact.jpg", 4, (64, 64))
    write_image(root / "b" / "cmyk.jpg", 5, size=(80, 60), mode="CMYK")
    write_image(root / "b" / "png.png", 6, size=(70, 50), fmt="PNG")
    full = (root / "a" / "wide.jpg").read_bytes()
    (root / "b" / "truncated.jpg").write_bytes(full[: len(full) // 2])
    # a JPEG header, then garbage, then an end marker: looks complete, does not decode
    (root / "b" / "garbage.jpg").write_bytes(full[:600] + b"\x13\x37" * 400 + b"\xff\xd9")
    (root / "b" / "empty.jpg").write_bytes(b"")
    return root


def decoded(folder: Path, decode: str, preprocess: Preprocess, draft: bool,
            device: str = "cpu") -> tuple[list[int], torch.Tensor, list[str | None]]:
    ds = ImageDataset(open_source(folder), preprocess, draft=draft, decode=decode)
    batch = collate([ds[i] for i in range(len(ds))])
    if decode == "device":
        assert any(e is not None for e in batch.encoded)
        batch = DeviceJpegDecoder(preprocess, device, ImageDataset(open_source(folder),
                                                                   preprocess, draft=draft))(batch)
    assert all(e is None for e in batch.encoded)
    return [i for i, ok in zip(batch.indices, batch.ok, strict=True) if ok], \
        batch.pixels.cpu(), batch.errors


@pytest.mark.parametrize("draft", [False, True])
def test_device_pixels_match_the_cpu_path(mixed_folder: Path, draft: bool) -> None:
    pre = Preprocess(resize=64, crop=56)
    ok_cpu, px_cpu, err_cpu = decoded(mixed_folder, "cpu", pre, draft)
    ok_dev, px_dev, err_dev = decoded(mixed_folder, "device", pre, draft)
    assert ok_dev == ok_cpu and len(ok_cpu) == 6  # 4 JPEGs, CMYK, PNG
    assert err_dev == err_cpu  # the same reasons, from the same (CPU) decoder
    assert px_dev.shape == px_cpu.shape == (6, 3, 56, 56) and px_dev.dtype == torch.uint8
    diff = (px_dev.int() - px_cpu.int()).abs().float()
    per_image = diff.mean(dim=(1, 2, 3))
    # resampling differs (Pillow's reducing resize vs antialiased interpolate; DCT scaling
    # under draft): measured 0.18 grey levels on average at most, 1.8 with draft
    assert per_image.max() <= (2.5 if draft else 0.5), per_image
    exact = ok_cpu.index(next(i for i in ok_cpu
                              if open_source(mixed_folder).refs().column("key")[i].as_py()
                              == "a/exact.jpg"))
    assert per_image[exact] == 0.0  # no resize there: the same libjpeg, the same crop


def test_embed_decode_device_gives_the_same_store(mixed_folder: Path, tmp_path: Path) -> None:
    stores = {}
    for decode in ("cpu", "device"):
        pairmine.embed(mixed_folder, tmp_path / decode, encoder="toy:0", device="cpu",
                       decode=decode, workers=0, batch_size=4)
        stores[decode] = pairmine.open_embeddings(tmp_path / decode)
    cpu, dev = stores["cpu"], stores["device"]
    for column in ("id", "key", "label", "sha256"):
        assert cpu.meta.column(column).equals(dev.meta.column(column)), column
    import pyarrow.parquet as pq

    e_cpu = pq.read_table(tmp_path / "cpu" / "errors.parquet")
    e_dev = pq.read_table(tmp_path / "device" / "errors.parquet")
    assert e_cpu.equals(e_dev) and e_cpu.num_rows == 3
    cos = (cpu.vectors.astype(np.float32) * dev.vectors.astype(np.float32)).sum(1)
    assert cos.min() > 0.98, cos
    assert dev.manifest["config"]["decode"] == "device"


def test_cifar_jpegs_decode_identically(cifar_test_folder: Path) -> None:
    """32-px CIFAR JPEGs need no resize: torchvision's libjpeg gives Pillow's pixels."""
    pre = Preprocess.cifar()
    sub = cifar_test_folder / "cat"
    ok_cpu, px_cpu, _ = decoded(sub, "cpu", pre, True)
    ok_dev, px_dev, _ = decoded(sub, "device", pre, True)
    assert ok_cpu == ok_dev and torch.equal(px_cpu, px_dev)


def test_only_complete_rgb_or_gray_jpegs_are_deferred(mixed_folder: Path) -> None:
    from pairmine.embed.reader import _device_decodable

    verdict = {p.name: _device_decodable(p.read_bytes()) for p in mixed_folder.rglob("*.*")}
    assert verdict == {"wide.jpg": True, "tall.jpg": True, "gray.jpg": True, "exact.jpg": True,
                       "cmyk.jpg": False, "png.png": False, "truncated.jpg": False,
                       "garbage.jpg": True, "empty.jpg": False}
    buf = io.BytesIO()
    assert not _device_decodable(buf.getvalue())


def test_unknown_decode_is_a_config_error(mixed_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(pairmine.ConfigError, match="--decode"):
        pairmine.embed(mixed_folder, tmp_path / "x", encoder="toy:0", decode="gpu")
    assert not (tmp_path / "x").exists()


@pytest.mark.gpu
def test_nvjpeg_pixels_match_the_cpu_path(mixed_folder: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    pre = Preprocess(resize=64, crop=56)
    ok_cpu, px_cpu, err_cpu = decoded(mixed_folder, "cpu", pre, False)
    ok_dev, px_dev, err_dev = decoded(mixed_folder, "device", pre, False, device="cuda")
    assert ok_dev == ok_cpu and err_dev == err_cpu
    diff = (px_dev.int() - px_cpu.int()).abs().float().mean(dim=(1, 2, 3))
    assert diff.max() <= 3.0, diff  # nvJPEG's IDCT and upsampling differ from libjpeg's
