"""ResNet trunks shared by the encoders and the trainer.

``build_backbone(arch)`` returns a torchvision ResNet whose classifier ``fc`` is an
``Identity``, so ``forward`` gives the pooled features ``(N, feat_dim)``. The parameter
names stay torchvision's (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...) so official
ImageNet, MoCo, SimSiam and VICReg checkpoints load without renaming.

The ``-cifar`` variants swap the 7x7 stride-2 stem and the max-pool for a 3x3 stride-1 conv
and no pooling: on 32 px images the ImageNet stem would shrink the map to 8x8 before the first
block, and this is the variant MoCo/SePP-ID use for CIFAR.

``resnet20-cifar`` and ``resnet20x2-cifar`` are the much cheaper CIFAR ResNet of He et al.
2016 (section 4.2): a 3x3 stem, three stages of 3 basic blocks at 16/32/64 channels (x2:
32/64/128), the parameter-free option-A shortcut of ``he_resnet``, global average pooling and
an ``fc`` (Identity) the trainer replaces by its MoCo head, as on the torchvision trunks. At
~1/20 of ``resnet18-cifar``'s cost per image they are what a 2-core CPU can train for tens of
epochs (docs/training.md, "the backbone budget for issue 21").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pairmine.errors import EncoderError

if TYPE_CHECKING:
    from torch import nn

# arch -> (torchvision constructor name, CIFAR stem?)
_ARCHS: dict[str, tuple[str, bool]] = {
    "resnet18": ("resnet18", False),
    "resnet34": ("resnet34", False),
    "resnet50": ("resnet50", False),
    "resnet101": ("resnet101", False),
    "resnet152": ("resnet152", False),
    "resnet18-cifar": ("resnet18", True),
    "resnet50-cifar": ("resnet50", True),
}

# arch -> (blocks per stage, width multiplier) of the He et al. CIFAR ResNet (depth 6n + 2)
_CIFAR_RESNETS: dict[str, tuple[int, int]] = {
    "resnet20-cifar": (3, 1),
    "resnet20x2-cifar": (3, 2),
}

BACKBONES: list[str] = [*_ARCHS, *_CIFAR_RESNETS]


def build_backbone(arch: str) -> tuple[nn.Module, int]:
    """A randomly initialised ResNet trunk and its pooled feature size (64 to 2048)."""
    from torch import nn
    from torchvision import models

    if arch in _CIFAR_RESNETS:
        blocks, width = _CIFAR_RESNETS[arch]
        trunk = _cifar_resnet_trunk(blocks, width)
        return trunk, 64 * width
    if arch not in _ARCHS:
        raise EncoderError(f"unknown backbone architecture {arch!r}",
                           f"choose one of: {', '.join(BACKBONES)}")
    tv_name, cifar = _ARCHS[arch]
    ctor: Callable[..., models.ResNet] = getattr(models, tv_name)
    net = ctor(weights=None)
    feat_dim = net.fc.in_features  # the classifier's input = the pooled width
    if cifar:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()  # forward: (N, 3, H, W) -> (N, feat_dim) pooled
    return net, feat_dim


def _cifar_resnet_trunk(blocks: int, width: int) -> nn.Module:
    """He et al.'s CIFAR ResNet (depth 6 * blocks + 2) at ``width`` times 16/32/64 channels,
    without its classifier: ``forward`` gives the pooled (N, 64 * width) features through
    ``fc``."""
    import torch
    from torch import nn

    from pairmine.encoders.he_resnet import BasicBlock

    class CifarResNetTrunk(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            planes = [16 * width, 32 * width, 64 * width]
            self.conv1 = nn.Conv2d(3, planes[0], 3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes[0])
            stages: list[nn.Sequential] = []
            in_planes = planes[0]
            for stage, out_planes in enumerate(planes):
                stride = 1 if stage == 0 else 2
                stages.append(nn.Sequential(*(
                    BasicBlock(in_planes if i == 0 else out_planes, out_planes,
                               stride if i == 0 else 1, True) for i in range(blocks))))
                in_planes = out_planes
            self.layer1, self.layer2, self.layer3 = stages
            self.fc: nn.Module = nn.Identity()  # the trainer puts its MoCo head here
            for m in self.modules():  # He init, as torchvision's ResNets do
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # (N, 3, 32, 32) -> (N, 64 * width) pooled -> fc
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.layer3(self.layer2(self.layer1(out)))
            out = torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)
            return self.fc(out)  # type: ignore[no-any-return]

    return CifarResNetTrunk()


# (blocks per stage, bottleneck?) -> torchvision depth name
_LAYOUTS: dict[tuple[tuple[int, ...], bool], str] = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}


def detect_backbone(state: Mapping[str, Any]) -> str | None:
    """The entry of BACKBONES whose parameter names and stem fit ``state``, or None.

    Reads the number of blocks per stage (``layerK.i.``), whether blocks are bottlenecks
    (``conv3``) and the stem kernel (3x3 = CIFAR variant, 7x7 = ImageNet); three stages are
    the CIFAR ResNet-20 trunks, their width from the stem's output channels."""
    blocks = [0, 0, 0, 0]
    for key in state:
        m = re.match(r"layer([1-4])\.(\d+)\.", key)
        if m:
            stage = int(m.group(1)) - 1
            blocks[stage] = max(blocks[stage], int(m.group(2)) + 1)
    stem = state.get("conv1.weight")
    if stem is None or not hasattr(stem, "shape") or len(stem.shape) != 4:
        return None
    if blocks[3] == 0 and "layer3.0.conv1.weight" in state:  # He et al.'s three stages
        width = int(stem.shape[0]) // 16  # the stem's output channels: 16 x the multiplier
        return next((name for name, layout in _CIFAR_RESNETS.items()
                     if layout == (blocks[0], width) and blocks[1] == blocks[2] == blocks[0]),
                    None)
    depth = _LAYOUTS.get((tuple(blocks), "layer1.0.conv3.weight" in state))
    if depth is None:
        return None
    name = depth + ("-cifar" if stem.shape[-1] == 3 else "")
    return name if name in _ARCHS else None
