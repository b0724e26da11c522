"""``simsiam:PATH``: SimSiam checkpoints as facebookresearch/simsiam saves them.

Layout: ``{'epoch', 'arch', 'state_dict': {'module.encoder.*', 'module.predictor.*'},
'optimizer'}``. The encoder's ``fc`` is the 3-layer projector
(Linear-BN-ReLU-Linear-BN-ReLU-Linear-BN); the predictor is not used.
"""

from __future__ import annotations

from pairmine.encoders.base import (
    Encoder,
    EncoderKind,
    EncoderOptions,
    keys_match,
    register_encoder,
)
from pairmine.encoders.ssl_resnet import build_encoder, check_arch, load_trunk_state

PREFIXES = ("module.encoder.", "encoder.")


def load(args: str, opts: EncoderOptions) -> Encoder:
    from pairmine.encoders.heads import simsiam_projector

    check_arch(opts.arch)
    state = load_trunk_state(args, PREFIXES)
    return build_encoder(kind="simsiam", path=args, state=state, opts=opts,
                         features=opts.features or "backbone", head=simsiam_projector, info={})


register_encoder(EncoderKind(
    recognises=keys_match(r"(^|\.)encoder\.layer4\.", r"(^|\.)predictor\."),
    name="simsiam", load=load, usage="simsiam:PATH",
    help="SimSiam checkpoint (keys module.encoder.*). backbone = pooled trunk (default; "
         "2048-D for resnet50), head = projector output (2048-D). --arch: any ResNet trunk, "
         "default from the keys.",
    features=("backbone", "head")))
