"""``moco:PATH``: MoCo v1/v2 checkpoints as facebookresearch/moco saves them.

Layout: ``{'epoch', 'arch', 'state_dict': {'module.encoder_q.conv1.weight', ...,
'module.encoder_k.*', 'module.queue', ...}, 'optimizer'}``; the query encoder is used.
v2's head is ``fc.0``/``fc.2`` (Linear-ReLU-Linear), v1's is ``fc`` (Linear); the version is
read from the keys. The paper's Semantic Sampler uses the head output (128-D for MoCo-v2).
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

PREFIXES = ("module.encoder_q.", "encoder_q.")


def load(args: str, opts: EncoderOptions) -> Encoder:
    from pairmine.encoders.heads import moco_head, moco_version

    check_arch(opts.arch)
    state = load_trunk_state(args, PREFIXES)
    return build_encoder(kind="moco", path=args, state=state, opts=opts,
                         features=opts.features or "head", head=moco_head,
                         info={"moco_version": moco_version(state)})


register_encoder(EncoderKind(
    recognises=keys_match(r"(^|\.)encoder_q\.conv1\.weight$", unless=(r"^format$",)),
    name="moco", load=load, usage="moco:PATH",
    help="MoCo v1/v2 checkpoint (keys module.encoder_q.*). head = projection output "
         "(default; 128-D for v2), backbone = pooled trunk (2048-D for resnet50). --arch: any "
         "ResNet trunk, default from the keys (resnet50 for the official checkpoints)."))
