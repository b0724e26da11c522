"""Shared fixtures: generated image folders, a deterministic toy encoder, the shared data."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR_TEST_TGZ = SHARED_DATA / "cifar10-test-jpeg.tar.gz"
RESNET20 = SHARED_DATA / "resnet20-cifar10.th"


def pytest_configure(config: pytest.Config) -> None:
    _register_toy_encoder()


def _register_toy_encoder() -> None:
    """`toy:SEED` — a tiny convolutional encoder with seeded random weights: deterministic,
    instant on the CPU, 16-D features, 32-px ImageNet-normalised input. Tests only."""
    import torch
    from torch import nn

    from pairmine.encoders.base import Encoder, EncoderKind, Preprocess, register_encoder

    def load(args: str, options: object) -> Encoder:
        seed = int(args)
        gen = torch.Generator().manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        return Encoder(spec=f"toy:{seed}", model=model, dim=16, preprocess=Preprocess.cifar(),
                       arch="toy", features="backbone")

    register_encoder(EncoderKind(name="toy", load=load, usage="toy:SEED",
                                 help="test-only deterministic encoder"))


def write_image(path: Path, seed: int, size: tuple[int, int] = (40, 30), fmt: str = "JPEG",
                mode: str = "RGB") -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """3 classes x 7 images of varied sizes, JPEG and PNG."""
    root = tmp_path / "images"
    for c, name in enumerate(["cat", "dog", "emu"]):
        for i in range(7):
            fmt, ext = ("PNG", "png") if i % 3 == 0 else ("JPEG", "jpg")
            write_image(root / name / f"{i:03d}.{ext}", seed=100 * c + i,
                        size=(32 + 5 * i, 40 - i), fmt=fmt)
    return root


@pytest.fixture(scope="session")
def cifar_test_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The CIFAR-10 test JPEGs from ../shared/data, unpacked once per session."""
    if not CIFAR_TEST_TGZ.exists():
        pytest.skip("../shared/data is not present")
    root = tmp_path_factory.mktemp("cifar10")
    with tarfile.open(CIFAR_TEST_TGZ) as tar:
        tar.extractall(root, filter="data")
    yield root / "cifar10" / "test"
