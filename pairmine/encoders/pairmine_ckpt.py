"""``pairmine:PATH``: a checkpoint written by ``pairmine train`` (MoCo-v2 / SePP-ID).

PATH is ``OUT/checkpoint-last.pt``, a numbered ``checkpoint-EEEE.pt``, or the training OUT
directory itself (its last checkpoint). The query encoder ``encoder_q.*`` is used: a ResNet
trunk of the recorded arch whose ``fc`` is the MoCo-v2 head (``fc.0`` Linear, ReLU, ``fc.2``
Linear). ``head`` (default: the paper's Semantic Sampler keeps the projection, 128-D) or
``backbone`` (pooled trunk: 512-D for resnet18, 2048-D for resnet50). The preprocessing is the
one the run trained with (recorded in the checkpoint: 32 px for the -cifar archs, 256/224 for
the ImageNet ones, and the normalisation of the augmentations), so pairmine can train its own
Semantic Sampler and embed with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pairmine.encoders.base import (
    Encoder,
    EncoderKind,
    EncoderOptions,
    Preprocess,
    build_empty,
    keys_match,
    load_state_strict,
    register_encoder,
    select_prefix,
)
from pairmine.errors import EncoderError


def load(args: str, opts: EncoderOptions) -> Encoder:
    from pairmine.encoders.archs import build_backbone
    from pairmine.encoders.heads import moco_head
    from pairmine.stores.checkpoint import read_training_checkpoint

    checkpoint = read_training_checkpoint(Path(args))  # the reader training resumes with
    path, ckpt, arch = checkpoint.path, checkpoint.state, checkpoint.arch
    if opts.arch is not None and opts.arch != arch:
        raise EncoderError(f"{path} was trained with --arch {arch}, not {opts.arch}",
                           "leave --arch out: pairmine checkpoints record their arch")
    features = opts.features or "head"
    state = select_prefix(ckpt["state_dict"], ("encoder_q.",), path)
    net, feat_dim = build_empty(lambda: build_backbone(arch), lambda built: built[0])
    if features == "head":
        net.fc, out_dim = moco_head(state, str(path))
        load_state_strict(net, state, path)
    else:
        load_state_strict(net, state, path, ignore=("fc.",))
        out_dim = feat_dim
    pre = ckpt["preprocess"]
    preprocess = Preprocess(resize=int(pre["resize"]), crop=int(pre["crop"]),
                            mean=_triple(pre["mean"]), std=_triple(pre["std"]))
    info: dict[str, Any] = {"kind": "pairmine", "epoch": int(ckpt["epoch"]),
                            "epochs": int(ckpt["epochs"]), "data": ckpt.get("data", {}),
                            "lambda": ckpt["config"].get("lam")}
    return Encoder(spec=f"pairmine:{args}", model=net, dim=out_dim, preprocess=preprocess,
                   arch=arch, features=features, info=info)


def _triple(values: Any) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c


register_encoder(EncoderKind(
    recognises=keys_match(r"^format$", r"^state_dict\.encoder_q\."),
    name="pairmine", load=load, usage="pairmine:PATH",
    help="checkpoint of `pairmine train` (OUT/checkpoint-last.pt, or OUT). head = MoCo-v2 "
         "projection output (default, 128-D), backbone = pooled trunk; preprocessing as "
         "trained (32 px for -cifar archs)."))
