"""Load a ResNet trunk, and optionally its projection head, from a self-supervised checkpoint.

The MoCo, SimSiam and VICReg kinds differ only in where the trunk's keys live and in the head;
this module does the rest: pick the keys, choose the architecture (``--arch``, else what the
keys show, else resnet50), build the trunk with the head as its ``fc`` (or an Identity for
backbone features), and load strictly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pairmine.encoders.base import (
    Encoder,
    EncoderOptions,
    Preprocess,
    build_empty,
    find_state_dict,
    load_checkpoint,
    load_state_strict,
    select_prefix,
)
from pairmine.errors import EncoderError

if TYPE_CHECKING:
    import torch
    from torch import nn

# (trunk state without prefix, path) -> (head module, head output dim)
HeadBuilder = Callable[["Mapping[str, torch.Tensor]", str], "tuple[nn.Module, int]"]

DEFAULT_ARCH = "resnet50"


def check_arch(arch: str | None) -> None:
    """Reject an unknown --arch before reading a (possibly large) checkpoint."""
    from pairmine.encoders.archs import BACKBONES

    if arch is not None and arch not in BACKBONES:
        raise EncoderError(f"unknown --arch {arch!r}", f"choose one of: {', '.join(BACKBONES)}")


def load_trunk_state(path: str, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The trunk's keys (prefix stripped) from the checkpoint at ``path``."""
    return select_prefix(find_state_dict(load_checkpoint(path), path), prefixes, path)


def build_encoder(*, kind: str, path: str, state: Mapping[str, torch.Tensor],
                  opts: EncoderOptions, features: str, head: HeadBuilder | None,
                  info: dict[str, Any]) -> Encoder:
    """A trunk (+ head when ``features == 'head'``) holding ``state``'s weights."""
    from pairmine.encoders.archs import build_backbone, detect_backbone

    detected = detect_backbone(state)
    arch = opts.arch or detected or DEFAULT_ARCH
    net, feat_dim = build_empty(lambda: build_backbone(arch), lambda built: built[0])
    if features == "head":
        if head is None:
            raise EncoderError(f"{kind} checkpoints have no projection head to use",
                               "use --features backbone")
        net.fc, dim = head(state, path)  # the head is the trunk's fc, as in the original code
        load_state_strict(net, state, path)
    else:
        dim = feat_dim
        load_state_strict(net, state, path, ignore=("fc.",))
    preprocess = Preprocess.cifar() if arch.endswith("-cifar") else Preprocess.imagenet()
    return Encoder(spec=f"{kind}:{path}", model=net, dim=dim, preprocess=preprocess,
                   arch=arch, features=features,
                   info={"kind": kind, "arch_detected": detected, **info})
