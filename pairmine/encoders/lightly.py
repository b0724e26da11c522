"""``lightly:PATH``: ResNet models as lightly's (lightly-ai/lightly) examples build and save them.

The examples wrap a torchvision ResNet without its classifier,
``backbone = nn.Sequential(*list(resnet.children())[:-1])`` (keys ``backbone.0.weight`` =
conv1, ``backbone.1.*`` = bn1, ``backbone.4.*``..``backbone.7.*`` = layer1..4), and a
``projection_head`` (``lightly.models.modules.heads.ProjectionHead``: ``layers`` =
``nn.Sequential`` of Linear, BatchNorm1d, ReLU). Momentum methods add ``backbone_momentum.*``/
``projection_head_momentum.*``, BYOL/SimSiam a ``prediction_head``; those are not used. Found:

- a PyTorch Lightning checkpoint of such a module (``state_dict``, the examples' and benchmarks'
  ``ModelCheckpoint``), or ``torch.save(model.state_dict())``;
- the benchmarks' modules, whose ``backbone`` is the torchvision ResNet itself with ``fc`` an
  Identity (keys ``backbone.conv1.weight``);
- the tutorials' ``torch.save({"resnet18_parameters": model.backbone.state_dict()})``: the
  Sequential backbone alone, under any single name.

Heads: ReLU between the layers, as every ResNet-era lightly head has; DINO-style heads
(``last_layer``, GELU) are refused. lightly's own CIFAR ``ResNetGenerator`` is not supported.
lightly's transforms normalise with ImageNet's mean/std; the resolution is not recorded:
ImageNet 256 -> 224 (32 px for a CIFAR stem).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.encoders.base import Encoder, EncoderKind, EncoderOptions, register_encoder
from pairmine.encoders.ssl_libs import (
    assemble,
    check_arch,
    imagenet_or_cifar,
    is_sequential_resnet,
    is_tensor_map,
    load_foreign_checkpoint,
    mlp_from_state,
    not_this_layout,
    sequential_to_torchvision,
    under,
)
from pairmine.errors import CheckpointError

if TYPE_CHECKING:
    import torch
    from torch import nn


def _model_state(ckpt: Any) -> dict[str, torch.Tensor] | None:
    if not isinstance(ckpt, Mapping):
        return None
    for key in ("state_dict", "model"):
        if is_tensor_map(ckpt.get(key)):
            return dict(ckpt[key])
    if is_tensor_map(ckpt):
        return dict(ckpt)
    if len(ckpt) == 1 and is_tensor_map(next(iter(ckpt.values()))):  # {"resnet18_parameters"}
        return dict(next(iter(ckpt.values())))
    return None


def load(args: str, opts: EncoderOptions) -> Encoder:
    check_arch(opts.arch)  # before reading a possibly large file
    path = Path(args)
    ckpt = load_foreign_checkpoint(path)
    state = _model_state(ckpt)
    expected = "backbone.* keys (a torchvision ResNet as nn.Sequential, or itself)"
    if state is None:
        raise not_this_layout(path, "lightly", ckpt, expected)
    trunk = under(state, "backbone.") or state  # the backbone saved alone has no prefix
    layout = "sequential" if is_sequential_resnet(trunk) else "torchvision"
    if layout == "sequential":
        trunk = sequential_to_torchvision(trunk)
    if "conv1.weight" not in trunk:
        if any(k.startswith("2.0.shortcut.") for k in trunk):
            raise CheckpointError(f"{path} is a lightly ResNetGenerator backbone, which "
                                  "pairmine does not build", "use a torchvision ResNet backbone")
        raise not_this_layout(path, "lightly", ckpt, expected)
    head_state = under(state, "projection_head.layers.")
    reason = "this checkpoint has no projection_head.layers.* keys"
    if any(k.startswith("projection_head.last_layer") for k in state):
        head_state, reason = {}, ("its projection head is a DINO-style head (GELU, weight-"
                                  "normalised last_layer), not a ReLU MLP")

    def head() -> tuple[nn.Module, int]:
        return mlp_from_state(head_state, path, "projection head")

    return assemble(kind="lightly", spec_args=args, path=path, trunk=trunk, opts=opts,
                    default_features="backbone", head=head if head_state else None,
                    no_head_reason=reason, preprocess=imagenet_or_cifar,
                    info={"layout": layout, "epoch": ckpt.get("epoch")})


register_encoder(EncoderKind(
    name="lightly", load=load, usage="lightly:PATH", features=("backbone", "head"),
    help="lightly model with a torchvision ResNet backbone (backbone.* as nn.Sequential of "
         "its children, or the ResNet itself; Lightning .ckpt or state dict). backbone = "
         "pooled trunk (default), head = projection_head output (ReLU MLP heads)."))
