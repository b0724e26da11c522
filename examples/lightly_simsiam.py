"""Train lightly's SimSiam on a pairmine export: semantic positive pairs in a library's loop.

SePP-ID (Table 7) adds the semantic pairs to SimSiam: a training set that merges the dataset's
images with the pairs (``pairmine export PAIRS spps/ --combined``). Every item gives two views:
of one image (instance discrimination, as the method always does) or of the two images of a pair
(``pairmine.datasets.SPPSDataset`` reads both kinds through the export's shard indexes and
applies the transform to each image). The model, heads, loss and view transform are lightly's
own (``pip install lightly``): ResNetGenerator, SimSiamProjectionHead, SimSiamPredictionHead,
NegativeCosineSimilarity, SimSiamViewTransform.

    pairmine export PAIRS spps/ --format webdataset --combined
    python examples/lightly_simsiam.py spps/ --steps 100

The defaults are small enough for a CPU; for the paper's setting use a ResNet-18 at width 1,
batch 512, SGD lr 0.05 x batch/256, 800 epochs, on a GPU.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class Stats:
    losses: list[float] = field(default_factory=list)
    pair_items: int = 0  # items that were the two images of a semantic pair
    image_items: int = 0  # items that were two views of one image


# --- the loop: docs/training-with-spps.md shows this part; tests/test_lightly_examples.py checks
class Indexed(torch.utils.data.Dataset[Any]):
    """An SPPSDataset whose items also give their index, to count the pairs seen."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], int, int]:
        views, target = self.dataset[i]
        return views, target, i


class SimSiam(nn.Module):
    """lightly's SimSiam: backbone, projection head, prediction head."""

    def __init__(self, width: float = 0.125, out_dim: int = 128) -> None:
        super().__init__()
        from lightly.models import ResNetGenerator
        from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

        resnet = ResNetGenerator("resnet-9", width=width)  # CIFAR-sized ResNet
        self.backbone = nn.Sequential(*list(resnet.children())[:-1], nn.AdaptiveAvgPool2d(1))
        features = int(512 * width)
        self.projection_head = SimSiamProjectionHead(features, out_dim, out_dim)
        self.prediction_head = SimSiamPredictionHead(out_dim, out_dim // 4, out_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projection_head(self.backbone(x).flatten(start_dim=1))
        return z.detach(), self.prediction_head(z)


def train(export: str, *, steps: int = 20, batch_size: int = 32, size: int = 32,
          width: float = 0.125, lr: float = 0.05, workers: int = 2, seed: int = 0) -> Stats:
    from lightly.loss import NegativeCosineSimilarity
    from lightly.transforms import SimSiamViewTransform

    from pairmine.datasets import SPPSDataset

    torch.manual_seed(seed)
    # one view per image: for a pair, view(anchor) and view(positive); for an image, two views
    dataset = SPPSDataset(export, SimSiamViewTransform(input_size=size))
    is_pair = [dataset.info(i)["kind"] == "pair" for i in range(len(dataset))]
    loader = torch.utils.data.DataLoader(Indexed(dataset), batch_size=batch_size, shuffle=True,
                                         drop_last=True, num_workers=workers)
    model = SimSiam(width)
    criterion = NegativeCosineSimilarity()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    stats = Stats()
    while len(stats.losses) < steps:
        for (x0, x1), _target, index in loader:
            z0, p0 = model(x0)
            z1, p1 = model(x1)
            loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            stats.losses.append(loss.item())
            pairs = sum(is_pair[i] for i in index.tolist())
            stats.pair_items += pairs
            stats.image_items += len(index) - pairs
            if not math.isfinite(stats.losses[-1]):
                raise SystemExit(f"step {len(stats.losses)}: the loss is not finite")
            if len(stats.losses) == steps:
                break
    return stats
# --- end of the loop


def main(argv: list[str] | None = None) -> Stats:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export", help="a pairmine export directory (best: --combined)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--size", type=int, default=32, help="crop size in pixels")
    ap.add_argument("--width", type=float, default=0.125, help="ResNet width multiplier")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    stats = train(args.export, steps=args.steps, batch_size=args.batch_size, size=args.size,
                  width=args.width, lr=args.lr, workers=args.workers, seed=args.seed)
    print(f"{len(stats.losses)} steps in {time.perf_counter() - t0:.1f} s, last loss "
          f"{stats.losses[-1]:.4f}; items seen: {stats.pair_items} pairs, "
          f"{stats.image_items} single images")
    return stats


if __name__ == "__main__":
    main()
