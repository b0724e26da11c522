"""``vicreg:PATH``: VICReg backbones as facebookresearch/vicreg publishes them.

The published ``resnet50.pth`` is a bare trunk state dict with torchvision's names and no
``fc`` (its extra zero-padding layer has no weights and gives the same 3-pixel padding).
A training checkpoint ``{'epoch', 'model': {'backbone.*', 'projector.*'}, 'optimizer'}``
loads too: its backbone is used. Only backbone features: the projector (8192-D) is a
training device, not a published encoder.
"""

from __future__ import annotations

from pairmine.encoders.base import Encoder, EncoderKind, EncoderOptions, register_encoder
from pairmine.encoders.ssl_resnet import build_encoder, check_arch, load_trunk_state

PREFIXES = ("module.backbone.", "backbone.", "module.", "")


def load(args: str, opts: EncoderOptions) -> Encoder:
    # --features head never arrives here: the kind declares backbone only
    check_arch(opts.arch)
    state = load_trunk_state(args, PREFIXES)
    return build_encoder(kind="vicreg", path=args, state=state, opts=opts,
                         features="backbone", head=None, info={})


register_encoder(EncoderKind(
    name="vicreg", load=load, usage="vicreg:PATH",
    help="VICReg backbone (a plain ResNet state dict, e.g. the published resnet50.pth). "
         "backbone features only (2048-D for resnet50). --arch: any ResNet trunk, default "
         "from the keys.",
    features=("backbone",)))
