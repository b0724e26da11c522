"""MoCo-v2 augmentations (Chen et al. 2020, "Improved Baselines"), split in two stages.

1. Geometric, per image (DataLoader workers, CPU): RandomResizedCrop (scale 0.2–1, aspect
   3/4–4/3) and horizontal flip, on the decoded PIL image, giving uint8 (3, S, S). Variable-size
   photos can only be cropped one by one, and uint8 moves to the device 4× cheaper than floats.
   :func:`batched_crop_flip` is the same stage for a batch of equal-size images on the device.
2. Photometric, batched (on the training device): colour jitter 0.4/0.4/0.4/0.1 in random order
   with p 0.8, grayscale p 0.2, Gaussian blur σ ∈ [0.1, 2] with p 0.5, then normalisation.
   Per-image augmentation on a GPU runs ~30× slower than the model (performance anchors), so
   these run on whole batches with per-sample random factors.

The 32-px variant (CIFAR) skips the blur, as is usual for CIFAR: at 32 px a σ of 1–2 px wipes out
most of the image. Every random draw comes from an explicit ``torch.Generator``, seeded by
(seed, epoch, sample) or (seed, epoch, step): the views are the same whatever the number of
workers, and a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class AugmentConfig:
    size: int  # output side S
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # b, c, s, hue
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def describe(self) -> dict[str, object]:
        return {"size": self.size, "scale": list(self.scale), "ratio": list(self.ratio),
                "flip_p": self.flip_p, "jitter": list(self.jitter), "jitter_p": self.jitter_p,
                "gray_p": self.gray_p, "blur_p": self.blur_p,
                "blur_sigma": list(self.blur_sigma), "mean": list(self.mean),
                "std": list(self.std)}


def moco_v2(size: int) -> AugmentConfig:
    """MoCo-v2's recipe at ``size`` px; no blur at CIFAR scale (≤ 64 px)."""
    return AugmentConfig(size=size, blur_p=0.0 if size <= 64 else 0.5)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from (seed, epoch, index, ...): stable across processes and runs."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def generator(*parts: object) -> torch.Generator:
    import torch

    return torch.Generator().manual_seed(derive_seed(*parts))


# ---------------------------------------------------------------------------------------------
# stage 1: geometric


def crop_box(gen: torch.Generator, width: int, height: int,
             scale: tuple[float, float], ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (left, top, w, h): area ∈ scale·W·H, log-uniform aspect, up to
    10 tries, else the largest centred box within the aspect range."""
    import torch

    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(3, generator=gen).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def crop_flip(img: Image.Image, cfg: AugmentConfig, gen: torch.Generator) -> Tensor:
    """Stage 1 on one PIL image → uint8 (3, S, S)."""
    import numpy as np
    import torch
    from PIL import Image

    left, top, w, h = crop_box(gen, img.width, img.height, cfg.scale, cfg.ratio)
    flip = bool(torch.rand(1, generator=gen).item() < cfg.flip_p)
    # resize with a box = crop then resize in one pass; PIL's bilinear antialiases downscaling
    out = img.resize((cfg.size, cfg.size), Image.Resampling.BILINEAR,
                     box=(left, top, left + w, top + h))
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(out, dtype=np.uint8)  # (S, S, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def resize_flip(img: Image.Image, cfg: AugmentConfig, gen: torch.Generator) -> Tensor:
    """LeOCLR's original view: the whole image resized to (S, S), never cropped, and the same
    random horizontal flip as the crops → uint8 (3, S, S)."""
    import numpy as np
    import torch
    from PIL import Image

    flip = bool(torch.rand(1, generator=gen).item() < cfg.flip_p)
    out = img.resize((cfg.size, cfg.size), Image.Resampling.BILINEAR)
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(out, dtype=np.uint8)  # (S, S, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def batched_crop_flip(x: Tensor, cfg: AugmentConfig, gen: torch.Generator) -> Tensor:
    """Stage 1 on a batch of equal-size images on any device: (N, 3, H, W) uint8 or float in
    [0, 1] → float (N, 3, S, S). roi_align with adaptive sampling averages each output bin
    over the source pixels it covers, so downscaling is antialiased like PIL's."""
    import torch
    from torchvision.ops import roi_align

    n, _, height, width = x.shape
    boxes = torch.empty(n, 5, dtype=torch.float32)
    for i in range(n):
        left, top, w, h = crop_box(gen, width, height, cfg.scale, cfg.ratio)
        boxes[i] = torch.tensor([i, left, top, left + w, top + h], dtype=torch.float32)
    flips = torch.rand(n, generator=gen) < cfg.flip_p
    xf = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    out = roi_align(xf, boxes.to(x.device), output_size=cfg.size, spatial_scale=1.0,
                    sampling_ratio=-1, aligned=True)  # (N, 3, S, S)
    flips = flips.to(x.device).view(n, 1, 1, 1)
    return torch.where(flips, out.flip(-1), out)


# ---------------------------------------------------------------------------------------------
# stage 2: photometric, batched


@dataclass
class Photometric:
    """Per-sample random draws of stage 2, for N samples."""

    jitter: Tensor  # (N,) bool: colour jitter applied
    factors: Tensor  # (N, 4) brightness, contrast, saturation factors and hue shift
    order: Tensor  # (N, 4) a permutation of the four jitter operations per sample
    gray: Tensor  # (N,) bool
    blur: Tensor  # (N,) bool
    sigma: Tensor  # (N,)

    def to(self, device: torch.device | str) -> Photometric:
        return Photometric(*(t.to(device) for t in (self.jitter, self.factors, self.order,
                                                     self.gray, self.blur, self.sigma)))


def sample_photometric(n: int, cfg: AugmentConfig, gen: torch.Generator) -> Photometric:
    import torch

    b, c, s, hue = cfg.jitter
    lo = torch.tensor([max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -hue])
    hi = torch.tensor([1 + b, 1 + c, 1 + s, hue])
    return Photometric(
        jitter=torch.rand(n, generator=gen) < cfg.jitter_p,
        factors=lo + (hi - lo) * torch.rand(n, 4, generator=gen),
        order=torch.argsort(torch.rand(n, 4, generator=gen), dim=1),
        gray=torch.rand(n, generator=gen) < cfg.gray_p,
        blur=torch.rand(n, generator=gen) < cfg.blur_p,
        sigma=cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0])
        * torch.rand(n, generator=gen),
    )


def photometric(x: Tensor, p: Photometric, cfg: AugmentConfig) -> Tensor:
    """Stage 2 on float (N, 3, S, S) in [0, 1] (no normalisation): jitter, gray, blur."""
    import torch

    ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    for pos in range(4):
        for op_id, op in enumerate(ops):
            active = p.jitter & (p.order[:, pos] == op_id)  # (N,)
            # where() rather than indexing: no host sync, the same work every step
            x = torch.where(active.view(-1, 1, 1, 1), op(x, p.factors[:, op_id]), x)
    x = torch.where(p.gray.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)
    if cfg.blur_p > 0:
        x = torch.where(p.blur.view(-1, 1, 1, 1), gaussian_blur(x, p.sigma, cfg), x)
    return x


def normalize(x: Tensor, cfg: AugmentConfig) -> Tensor:
    import torch

    mean = torch.tensor(cfg.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def grayscale(x: Tensor) -> Tensor:
    """(N, 3, H, W) → (N, 1, H, W) luma."""
    r, g, b = x.unbind(1)
    w = GRAY_WEIGHTS
    return (w[0] * r + w[1] * g + w[2] * b).unsqueeze(1)


def _blend(a: Tensor, b: Tensor, ratio: Tensor) -> Tensor:
    return (ratio.view(-1, 1, 1, 1) * a + (1 - ratio.view(-1, 1, 1, 1)) * b).clamp(0, 1)


def adjust_brightness(x: Tensor, f: Tensor) -> Tensor:
    return (x * f.view(-1, 1, 1, 1)).clamp(0, 1)


def adjust_contrast(x: Tensor, f: Tensor) -> Tensor:
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)  # blend towards the mean luma
    return _blend(x, mean, f)


def adjust_saturation(x: Tensor, f: Tensor) -> Tensor:
    return _blend(x, grayscale(x), f)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue by ``shift`` turns (∈ [-0.5, 0.5]) in HSV space."""
    h, s, v = _rgb_to_hsv(x).unbind(1)
    h = (h + shift.view(-1, 1, 1)) % 1.0
    return _hsv_to_rgb(h, s, v)


def _rgb_to_hsv(x: Tensor) -> Tensor:
    import torch

    r, g, b = x.unbind(1)
    maxc = x.amax(1)
    minc = x.amin(1)
    chroma = maxc - minc
    grey = chroma == 0  # hue undefined: 0, as colorsys
    ones = torch.ones_like(maxc)
    s = chroma / torch.where(maxc == 0, ones, maxc)
    c = torch.where(grey, ones, chroma)
    rc, gc, bc = (maxc - r) / c, (maxc - g) / c, (maxc - b) / c
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(grey, torch.zeros_like(h), (h / 6.0) % 1.0)
    return torch.stack((h, s, maxc), dim=1)


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    import torch

    h6 = h * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    sector = sector.long() % 6
    p = (v * (1 - s)).clamp(0, 1)
    q = (v * (1 - s * f)).clamp(0, 1)
    t = (v * (1 - s * (1 - f))).clamp(0, 1)
    # for sectors 0..5 the (r, g, b) are the classic rows (v,t,p) (q,v,p) (p,v,t) ...
    r = torch.stack((v, q, p, p, t, v), dim=1)
    g = torch.stack((t, v, v, q, p, p), dim=1)
    b = torch.stack((p, p, t, v, v, q), dim=1)
    idx = sector.unsqueeze(1)
    return torch.cat([c.gather(1, idx) for c in (r, g, b)], dim=1)


def gaussian_blur(x: Tensor, sigma: Tensor, cfg: AugmentConfig) -> Tensor:
    """Separable Gaussian blur with one σ per sample (grouped convolution), reflect padding."""
    import torch
    import torch.nn.functional as F

    n, ch, height, width = x.shape
    radius = math.ceil(3 * cfg.blur_sigma[1])
    radius = min(radius, (min(height, width) - 1))  # reflect padding needs pad < size
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    sig = sigma.to(device=x.device, dtype=x.dtype).view(-1, 1)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / sig) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (N, 2r+1)
    kernel = kernel.repeat_interleave(ch, dim=0)  # one per (sample, channel)
    size = 2 * radius + 1
    y = x.reshape(1, n * ch, height, width)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"),
                 kernel.view(n * ch, 1, 1, size), groups=n * ch)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"),
                 kernel.view(n * ch, 1, size, 1), groups=n * ch)
    return y.view(n, ch, height, width)


class DeviceAugment:
    """Stage 2 (and, for ``geometric=True``, stage 1 too) for whole batches on the device."""

    def __init__(self, cfg: AugmentConfig, *, geometric: bool = False) -> None:
        self.cfg = cfg
        self.geometric = geometric

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """uint8 (N, 3, H, W) on the device → normalised float (N, 3, S, S)."""
        xf = batched_crop_flip(x, self.cfg, gen) if self.geometric else x.float() / 255.0
        p = sample_photometric(x.shape[0], self.cfg, gen).to(x.device)
        return normalize(photometric(xf, p, self.cfg), self.cfg)
