"""The CIFAR ResNet of He et al. 2016, section 4.2 (ResNet-20/32/44/56/110).

Stem 3x3 conv (3→16), three stages of n basic blocks at 16/32/64 channels (depth = 6n + 2),
global average pool, linear 64→classes. The shortcut is the parameter-free "option A": where
the shape changes it subsamples ``x[:, :, ::2, ::2]`` and zero-pads the channels, planes/4
*before and after* (16→32: 8 + 8). The split matters: the published akamaster checkpoint gives
81.03% on the JPEG CIFAR-10 test set with it and 13.60% with all padding at the end
(shared/data/PROVENANCE.md). Parameter names follow that checkpoint (``conv1``, ``bn1``,
``layer{1,2,3}.{i}.{conv,bn}{1,2}``, ``linear``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pairmine.errors import EncoderError


class PadShortcut(nn.Module):
    """Option A: subsample by 2 and pad the channels with ``before`` + ``after`` zeros."""

    def __init__(self, before: int, after: int) -> None:
        super().__init__()
        self.before, self.after = before, after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C, H, W) -> (N, before + C + after, H/2, W/2)
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.before, self.after))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, split_pad: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            extra = planes - in_planes  # planes/2 when the channels double: planes/4 a side
            before = extra // 2 if split_pad else 0
            self.shortcut = PadShortcut(before, extra - before)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """``forward`` gives the 64-D pooled features, or the class logits when ``logits``.

    ``split_pad=False`` puts all the shortcut's zero channels at the end: a *different* network
    for the same weights, kept only so a test can show that the split matters."""

    def __init__(self, depth: int, num_classes: int = 10, *, logits: bool = False,
                 split_pad: bool = True) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise EncoderError(f"CIFAR ResNet depth {depth} is not 6n + 2",
                               "use resnet20, resnet32, resnet44, resnet56 or resnet110")
        n = (depth - 2) // 6
        self.depth, self.logits = depth, logits
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, 1, n, split_pad)
        self.layer2 = self._stage(16, 32, 2, n, split_pad)
        self.layer3 = self._stage(32, 64, 2, n, split_pad)
        self.linear = nn.Linear(64, num_classes)

    @staticmethod
    def _stage(in_planes: int, planes: int, stride: int, n: int,
               split_pad: bool) -> nn.Sequential:
        return nn.Sequential(*(BasicBlock(in_planes if i == 0 else planes, planes,
                                          stride if i == 0 else 1, split_pad)
                               for i in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # (N, 16, 32, 32)
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, 64, 8, 8)
        feats = x.mean(dim=(2, 3))  # (N, 64)
        out: torch.Tensor = self.linear(feats) if self.logits else feats
        return out  # (N, classes) | (N, 64)
