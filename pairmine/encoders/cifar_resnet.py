"""``cifar-resnet:PATH``: a CIFAR ResNet-20/32/44/56/110 checkpoint (model in he_resnet.py).

Checkpoint: ``{'state_dict': {'module.conv1.weight', ..., 'module.linear.bias'}, 'best_prec1'}``
as akamaster/pytorch_resnet_cifar10 saves it through DataParallel; a bare state dict, with or
without ``module.``, loads too. The depth comes from the number of blocks in ``layer1``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pairmine.encoders.base import (
    Encoder,
    EncoderKind,
    EncoderOptions,
    Preprocess,
    build_empty,
    find_state_dict,
    keys_match,
    load_checkpoint,
    load_state_strict,
    register_encoder,
    select_prefix,
)
from pairmine.errors import CheckpointError, EncoderError

if TYPE_CHECKING:
    from collections.abc import Mapping

    import torch

FEATURE_DIM = 64  # pooled width of the last stage


def detect_depth(state: Mapping[str, torch.Tensor]) -> int | None:
    """Depth from the keys: n = number of blocks in ``layer1``, depth = 6n + 2."""
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"layer1\.(\d+)\.", k))}
    return 6 * (max(blocks) + 1) + 2 if blocks else None


def _parse_arch(arch: str) -> int:
    m = re.fullmatch(r"resnet(\d+)", arch)
    if not m:
        raise EncoderError(f"--arch {arch!r} is not a CIFAR ResNet",
                           "use resnet20, resnet32, resnet44, resnet56 or resnet110")
    return int(m.group(1))


def load(args: str, opts: EncoderOptions) -> Encoder:
    from pairmine.encoders.he_resnet import CifarResNet

    features = opts.features or "backbone"
    depth_override = _parse_arch(opts.arch) if opts.arch else None  # fail before reading
    state = select_prefix(find_state_dict(load_checkpoint(args), args), ("module.", ""), args)
    depth = depth_override or detect_depth(state)
    if depth is None or "linear.weight" not in state:
        raise CheckpointError(f"{args} is not a CIFAR ResNet checkpoint: it has no "
                              "layer1.* or linear.weight keys",
                              "check the encoder kind (see `pairmine encoders`)")
    num_classes = int(state["linear.weight"].shape[0])
    model = build_empty(lambda: CifarResNet(depth, num_classes, logits=features == "head"))
    load_state_strict(model, state, args)
    return Encoder(spec=f"cifar-resnet:{args}", model=model,
                   dim=num_classes if features == "head" else FEATURE_DIM,
                   preprocess=Preprocess.cifar(), arch=f"resnet{depth}", features=features,
                   info={"kind": "cifar-resnet", "num_classes": num_classes})


register_encoder(EncoderKind(
    recognises=keys_match(r"(^|\.)layer3\.\d+\.conv1\.weight$", r"(^|\.)linear\.weight$",
                          unless=(r"(^|\.)layer4\.",)),
    name="cifar-resnet", load=load, usage="cifar-resnet:PATH",
    help="CIFAR ResNet-20/32/44/56/110 (He et al. 2016, option-A shortcut), e.g. akamaster's "
         "checkpoints. Depth from the keys or --arch resnetD. backbone = 64-D pooled "
         "(default), head = class logits. 32 px, ImageNet mean/std.",
    features=("backbone", "head")))
