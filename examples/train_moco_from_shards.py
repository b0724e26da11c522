"""Train a MoCo-v2-style model on SPPS WebDataset shards, the way an external trainer would.

Plain torch + webdataset: nothing from pairmine. Each sample of a pairmine export is either a
semantic positive pair (``anchor.*`` + ``positive.*``) or, in a combined export, one original
image (``image.*``). Asking WebDataset for ``anchor.jpg;image.jpg`` and
``positive.jpg;image.jpg`` gives both kinds the same shape: two images that are positives
of each other (for a single image, the same image twice). Two augmentations then make the
two views, and the loss is MoCo's InfoNCE against a queue of negatives (SePP-ID, Eq. 1-2).

    pairmine export PAIRS spps/ --format webdataset --combined
    python examples/train_moco_from_shards.py spps/ --steps 20

On a 2-core CPU a few steps of the small default encoder take seconds; for real training use
a ResNet backbone, a GPU, many more steps and the paper's settings (batch 256, SGD lr 0.03,
momentum 0.9, weight decay 1e-4, queue 65536, temperature 0.2).
"""

from __future__ import annotations

import argparse
import copy
import glob
import math
import os
import time
from typing import Any

import torch
import torch.nn.functional as F
import webdataset as wds
from torch import nn
from torchvision.transforms import v2 as T

FIRST = "anchor.jpg;anchor.png;anchor.webp;image.jpg;image.png;image.webp"
SECOND = "positive.jpg;positive.png;positive.webp;image.jpg;image.png;image.webp"


def moco_v2_augment(size: int) -> T.Compose:
    """MoCo-v2's augmentations (blur left out: at CIFAR sizes it only destroys the image)."""
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomHorizontalFlip(),
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])


class TwoViews:
    """(first image, second image, json) → (view1, view2); picklable for DataLoader workers."""

    def __init__(self, size: int) -> None:
        self.augment = moco_v2_augment(size)

    def __call__(self, sample: tuple[Any, Any, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        first, second, _info = sample
        return self.augment(first), self.augment(second)


def shard_list(spec: str) -> list[str] | str:
    """An export directory (its shards/*.tar), or a brace pattern / single tar as given."""
    if os.path.isdir(spec):
        tars = sorted(glob.glob(os.path.join(spec, "shards", "*.tar")))
        if not tars:
            raise SystemExit(f"no shards/*.tar under {spec}: export with --format webdataset")
        return tars
    return spec


class Encoder(nn.Module):
    """A small conv net (backbone → 256-d) and MoCo-v2's 2-layer MLP projection head."""

    def __init__(self, dim: int = 128, width: int = 32) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                                 nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))

        self.backbone = nn.Sequential(
            block(3, width, 1), block(width, 2 * width, 2), block(2 * width, 4 * width, 2),
            block(4 * width, 8 * width, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(8 * width, 8 * width), nn.ReLU(inplace=True),
                                  nn.Linear(8 * width, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, dim), unit norm
        return F.normalize(self.head(self.backbone(x)), dim=1)


class MoCo(nn.Module):
    """Query encoder f_q, momentum key encoder f_k, and a queue of K negative keys."""

    queue: torch.Tensor  # (K, dim) buffer
    ptr: torch.Tensor  # () buffer: where the next keys go

    def __init__(self, dim: int = 128, queue: int = 4096, m: float = 0.99,
                 t: float = 0.2) -> None:
        super().__init__()
        self.f_q = Encoder(dim)
        self.f_k = copy.deepcopy(self.f_q)
        for p in self.f_k.parameters():
            p.requires_grad = False
        self.m, self.t = m, t
        self.register_buffer("queue", F.normalize(torch.randn(queue, dim), dim=1))  # (K, dim)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _momentum_update(self) -> None:
        for q, k in zip(self.f_q.parameters(), self.f_k.parameters(), strict=True):
            k.mul_(self.m).add_(q.detach(), alpha=1 - self.m)

    @torch.no_grad()
    def _enqueue(self, k: torch.Tensor) -> None:
        n, size = k.shape[0], self.queue.shape[0]
        start = int(self.ptr)
        self.queue[(torch.arange(n) + start) % size] = k
        self.ptr.fill_((start + n) % size)

    def forward(self, x_q: torch.Tensor, x_k: torch.Tensor) -> torch.Tensor:
        q = self.f_q(x_q)  # (B, dim)
        with torch.no_grad():
            self._momentum_update()
            k = self.f_k(x_k)  # (B, dim)
        l_pos = (q * k).sum(dim=1, keepdim=True)  # (B, 1)
        l_neg = q @ self.queue.clone().T  # (B, K): a copy, as _enqueue writes the queue
        logits = torch.cat([l_pos, l_neg], dim=1) / self.t  # (B, 1 + K)
        labels = torch.zeros(q.shape[0], dtype=torch.long)  # the positive is column 0
        self._enqueue(k)
        return F.cross_entropy(logits, labels)


def main(argv: list[str] | None = None) -> list[float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shards", help="an export directory, or shard tars as a brace pattern")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--size", type=int, default=32, help="crop size in pixels")
    ap.add_argument("--queue", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.03)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)

    # resampled: each worker (and, under DDP, each rank) draws shards at random forever, so
    # every rank sees as many batches as the others; the number of steps ends training.
    # split_by_node is what DDP without resampling needs (default: refuse to run distributed)
    dataset = (wds.WebDataset(shard_list(args.shards), resampled=True, shardshuffle=False,
                              nodesplitter=wds.split_by_node)
               .shuffle(1000)
               .decode("pil")
               .to_tuple(FIRST, SECOND, "json")
               .map(TwoViews(args.size))
               .batched(args.batch_size, partial=False))
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=args.workers)

    model = MoCo(queue=args.queue)
    opt = torch.optim.SGD(model.f_q.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    losses: list[float] = []
    t0 = time.perf_counter()
    for step, (x_q, x_k) in enumerate(loader):  # x_q, x_k: (B, 3, size, size)
        if step == args.steps:
            break
        loss = model(x_q, x_k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        print(f"step {step:4d}  loss {losses[-1]:.4f}")
        if not math.isfinite(losses[-1]):
            raise SystemExit("loss is not finite")
    seconds = time.perf_counter() - t0
    print(f"{len(losses)} steps in {seconds:.1f} s: "
          f"{len(losses) * args.batch_size / seconds:,.0f} samples/s (two views each)")
    return losses


if __name__ == "__main__":
    main()
