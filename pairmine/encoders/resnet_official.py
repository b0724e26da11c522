"""ResNet-era official releases: ``simclr:PATH``, ``byol:PATH``, ``barlowtwins:PATH``,
``swav:PATH``. Each finds a torchvision-named trunk (renaming where the release's own ResNet
differs) and its projection head; :mod:`pairmine.encoders.ssl_libs` builds and loads them.

- **SimCLR** (google-research/simclr, TensorFlow), as the two PyTorch converters write it.
  v1, tonylins/simclr-converter: ``{'state_dict': ...}`` of its ``resnet_wider`` ResNet-50
  1x/2x/4x, torchvision's names, ``fc`` the supervised linear classifier (no projection head).
  v2, Separius/SimCLRv2-Pytorch: ``{'resnet': ..., 'head': ...}``, its own ResNet
  (``net.0`` stem, ``net.S.blocks.I.net.J``, ``projection.shortcut``), renamed here, and the
  3-layer ``ContrastiveHead`` (``layers.*``). ResNet-50/101/152 at 1x/2x/3x without selective
  kernels; the ``_sk1`` models (selective kernels, a 3-conv stem, average-pool shortcuts) are
  refused. SimCLR feeds pixels in [0, 1] without mean/std; 256 -> 224 as its evaluation crop
  (0.875), bicubic.
- **BYOL**: sthalles/PyTorch-BYOL ``{'online_network_state_dict': {'encoder.*' (a torchvision
  ResNet as nn.Sequential of its children), 'projetion.net.*' (sic)}, 'target_network_state_dict',
  'optimizer_state_dict'}``, with the ``config.yaml`` it copies next to ``model.pth`` (input
  size; its transforms do not normalise); and a bare torchvision ResNet state dict, as
  lucidrains/byol-pytorch's README saves it (``torch.save(resnet.state_dict())``) and as the
  converters of DeepMind's JAX weights write it (backbone only; ImageNet preprocess).
- **Barlow Twins** (facebookresearch/barlowtwins): the hub's ``resnet50.pth`` (a torchvision
  trunk without ``fc``) and the training ``checkpoint.pth`` ``{'epoch', 'model':
  {'module.backbone.*', 'module.projector.*' (Linear-BN-ReLU ... Linear), 'module.bn.*'},
  'optimizer'}``; head = projector output (``bn`` only normalises the loss' cross-correlation).
- **SwAV** (facebookresearch/swav, also DeepCluster-v2/SeLa-v2 from it): the released
  ``swav_800ep_pretrain.pth.tar`` (a ``module.*`` state dict) or the training
  ``checkpoint.pth.tar`` ``{'epoch', 'state_dict', 'optimizer', 'amp'?}``; ResNet-50 and the
  w2/w4/w5 widths (its extra zero padding + padding-2 stem = torchvision's padding 3). The
  prototypes are dropped; head = ``projection_head`` then L2 normalisation, as its
  ``forward_head``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.encoders.base import (
    Encoder,
    EncoderKind,
    EncoderOptions,
    Preprocess,
    keys_match,
    register_encoder,
)
from pairmine.encoders.ssl_libs import (
    NO_NORMALISATION,
    assemble,
    check_arch,
    imagenet_or_cifar,
    is_sequential_resnet,
    is_tensor_map,
    l2_normalised,
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


def _strip_module(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _tensor_entry(ckpt: Any, *keys: str) -> dict[str, torch.Tensor] | None:
    """The first of ``keys`` that holds a state dict, or the checkpoint itself if it is one."""
    if isinstance(ckpt, Mapping):
        for key in keys:
            if is_tensor_map(ckpt.get(key)):
                return dict(ckpt[key])
    return dict(ckpt) if is_tensor_map(ckpt) else None


# --- SimCLR -----------------------------------------------------------------------------------

# SimCLR's data_util.preprocess_for_eval: central crop of 0.875 (= 256 -> 224), bicubic
# resize, pixels in [0, 1] with no mean/std
SIMCLR_PREPROCESS = Preprocess(resize=256, crop=224, mean=NO_NORMALISATION[0],
                               std=NO_NORMALISATION[1], interpolation="bicubic")

# SimCLRv2-Pytorch's BottleneckBlock.net indices -> torchvision Bottleneck names
_V2_BLOCK = {"0": "conv1", "1.0": "bn1", "2": "conv2", "3.0": "bn2", "4": "conv3", "5.0": "bn3"}


def simclr_v2_to_torchvision(state: Mapping[str, torch.Tensor],
                             path: Path) -> dict[str, torch.Tensor]:
    """SimCLRv2-Pytorch's ResNet keys renamed to torchvision's."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name: str | None = None
        if m := re.fullmatch(r"net\.0\.0\.(weight)", key):
            name = f"conv1.{m.group(1)}"
        elif m := re.fullmatch(r"net\.0\.1\.0\.(\w+)", key):
            name = f"bn1.{m.group(1)}"
        elif m := re.fullmatch(r"net\.([1-4])\.blocks\.(\d+)\.(.+)", key):
            stage, block, rest = m.groups()
            prefix = f"layer{stage}.{block}."
            if rest == "projection.shortcut.weight":
                name = prefix + "downsample.0.weight"
            elif mb := re.fullmatch(r"projection\.bn\.0\.(\w+)", rest):
                name = prefix + f"downsample.1.{mb.group(1)}"
            elif mb := re.fullmatch(r"net\.(\d+(?:\.0)?)\.(\w+)", rest):
                part = _V2_BLOCK.get(mb.group(1))
                name = prefix + f"{part}.{mb.group(2)}" if part else None
        elif key.startswith("fc."):
            name = key
        if name is None:
            raise CheckpointError(f"{path}: unexpected SimCLRv2 key {key!r}",
                                  "only the ResNets without selective kernels load")
        out[name] = value
    return out


def load_simclr(args: str, opts: EncoderOptions) -> Encoder:
    check_arch(opts.arch)  # before reading a possibly large file
    path = Path(args)
    ckpt = load_foreign_checkpoint(path)
    expected = ("{'resnet', 'head'} (SimCLRv2-Pytorch) or {'state_dict'} with conv1.weight "
                "(simclr-converter)")
    v2 = isinstance(ckpt, Mapping) and is_tensor_map(ckpt.get("resnet"))
    head_state: dict[str, torch.Tensor] = {}
    if v2:
        resnet = dict(ckpt["resnet"])
        stem = resnet.get("net.0.0.weight")
        if any(".mixing_conv." in k for k in resnet) or (stem is not None
                                                           and stem.shape[-1] == 3):
            raise CheckpointError(f"{path} is a SimCLRv2 model with selective kernels (_sk1)",
                                  "use a SimCLRv2 model without selective kernels (_sk0)")
        trunk = simclr_v2_to_torchvision(resnet, path)
        if is_tensor_map(ckpt.get("head")):
            head_state = under(ckpt["head"], "layers.")
        reason = "this checkpoint has no contrastive head"
    else:
        state = _tensor_entry(ckpt, "state_dict")
        if state is None or "conv1.weight" not in _strip_module(state):
            raise not_this_layout(path, "simclr", ckpt, expected)
        trunk = _strip_module(state)
        reason = ("the converted SimCLR v1 weights hold the linear-evaluation classifier, not "
                  "the projection head")

    def head() -> tuple[nn.Module, int]:
        return mlp_from_state(head_state, path, "SimCLRv2 contrastive head")

    return assemble(kind="simclr", spec_args=args, path=path, trunk=trunk, opts=opts,
                    default_features="backbone", head=head if head_state else None,
                    no_head_reason=reason, preprocess=SIMCLR_PREPROCESS,
                    info={"simclr_version": "v2" if v2 else "v1"})


# --- BYOL -------------------------------------------------------------------------------------


def _sthalles_preprocess(path: Path) -> Preprocess:
    """From the config.yaml PyTorch-BYOL copies next to model.pth: its input_shape (STL-10,
    96 px, by default); its transforms are ToTensor only (no mean/std)."""
    side = 96
    config = path.parent / "config.yaml"
    if config.is_file():
        m = re.search(r"input_shape:\s*['\"]?\(\s*(\d+)", config.read_text(encoding="utf-8"))
        side = int(m.group(1)) if m else side
    return Preprocess(resize=side, crop=side, mean=NO_NORMALISATION[0], std=NO_NORMALISATION[1])


def load_byol(args: str, opts: EncoderOptions) -> Encoder:
    check_arch(opts.arch)  # before reading a possibly large file
    path = Path(args)
    ckpt = load_foreign_checkpoint(path)
    online = _tensor_entry(ckpt, "online_network_state_dict")
    if online is not None and any(k.startswith("encoder.") for k in online):
        encoder = under(online, "encoder.")
        if not is_sequential_resnet(encoder):
            raise not_this_layout(path, "byol", ckpt, "encoder.* as nn.Sequential of a ResNet")
        head_state = under(online, "projetion.net.") or under(online, "projection.net.")

        def head() -> tuple[nn.Module, int]:
            return mlp_from_state(head_state, path, "BYOL projection MLP")

        return assemble(kind="byol", spec_args=args, path=path,
                        trunk=sequential_to_torchvision(encoder), opts=opts,
                        default_features="backbone", head=head if head_state else None,
                        no_head_reason="this checkpoint has no projection MLP",
                        preprocess=_sthalles_preprocess(path),
                        info={"layout": "PyTorch-BYOL online network"})
    state = _strip_module(online) if online is not None else None
    if state is None or "conv1.weight" not in state:
        raise not_this_layout(path, "byol", ckpt, "{'online_network_state_dict'} "
                              "(PyTorch-BYOL) or a torchvision ResNet state dict")
    return assemble(kind="byol", spec_args=args, path=path, trunk=state, opts=opts,
                    default_features="backbone", head=None,
                    no_head_reason="a torchvision ResNet file holds no BYOL projector",
                    preprocess=imagenet_or_cifar, info={"layout": "torchvision ResNet"})


# --- Barlow Twins -----------------------------------------------------------------------------


def load_barlowtwins(args: str, opts: EncoderOptions) -> Encoder:
    check_arch(opts.arch)  # before reading a possibly large file
    path = Path(args)
    ckpt = load_foreign_checkpoint(path)
    state = _tensor_entry(ckpt, "model", "state_dict")
    state = _strip_module(state) if state is not None else None
    expected = "resnet50.pth (a torchvision trunk) or checkpoint.pth {'model': module.backbone.*}"
    if state is None:
        raise not_this_layout(path, "barlowtwins", ckpt, expected)
    trunk = under(state, "backbone.") or state
    if "conv1.weight" not in trunk:
        raise not_this_layout(path, "barlowtwins", ckpt, expected)
    projector = under(state, "projector.")

    def head() -> tuple[nn.Module, int]:
        return mlp_from_state(projector, path, "Barlow Twins projector")

    return assemble(kind="barlowtwins", spec_args=args, path=path, trunk=trunk, opts=opts,
                    default_features="backbone", head=head if projector else None,
                    no_head_reason="the published resnet50.pth holds the backbone only",
                    preprocess=imagenet_or_cifar,
                    info={"epoch": ckpt.get("epoch") if isinstance(ckpt, Mapping) else None})


# --- SwAV -------------------------------------------------------------------------------------


def load_swav(args: str, opts: EncoderOptions) -> Encoder:
    check_arch(opts.arch)  # before reading a possibly large file
    path = Path(args)
    ckpt = load_foreign_checkpoint(path)
    state = _tensor_entry(ckpt, "state_dict")
    state = _strip_module(state) if state is not None else None
    if state is None or "conv1.weight" not in state:
        raise not_this_layout(path, "swav", ckpt, "a state dict of module.conv1.weight, ..., "
                              "module.projection_head.*, module.prototypes.*")
    trunk = {k: v for k, v in state.items()
             if not k.startswith(("projection_head.", "prototypes."))}
    projection = under(state, "projection_head.")  # a Sequential, or one Linear (hidden_mlp=0)

    def head() -> tuple[nn.Module, int]:
        mlp, dim = mlp_from_state(projection, path, "SwAV projection head")
        return l2_normalised(mlp), dim

    return assemble(kind="swav", spec_args=args, path=path, trunk=trunk, opts=opts,
                    default_features="backbone", head=head if projection else None,
                    no_head_reason="this checkpoint has no projection_head",
                    preprocess=imagenet_or_cifar,
                    info={"epoch": ckpt.get("epoch") if isinstance(ckpt, Mapping) else None,
                          "prototypes_dropped": any(k.startswith("prototypes.") for k in state)})


register_encoder(EncoderKind(
    name="simclr", load=load_simclr, usage="simclr:PATH", features=("backbone", "head"),
    help="SimCLR v1 (simclr-converter: ResNet-50 1x/2x/4x) or v2 (SimCLRv2-Pytorch: "
         "ResNet-50/101/152 1x/2x/3x, no selective kernels) converted weights. backbone = "
         "pooled trunk (default; 2048 x width), head = v2's contrastive head (128-D). "
         "Pixels in [0, 1], 256 -> 224."))
register_encoder(EncoderKind(
    name="byol", load=load_byol, usage="byol:PATH", features=("backbone", "head"),
    help="BYOL: PyTorch-BYOL model.pth (online_network_state_dict: encoder.*, projetion.*) "
         "or a torchvision ResNet state dict (byol-pytorch, converted JAX weights). "
         "backbone = pooled trunk (default), head = projection MLP (PyTorch-BYOL only)."))
register_encoder(EncoderKind(
    name="barlowtwins", load=load_barlowtwins, usage="barlowtwins:PATH",
    features=("backbone", "head"),
    help="Barlow Twins: the published resnet50.pth or a training checkpoint.pth "
         "(module.backbone.*, module.projector.*). backbone = pooled trunk (default; 2048-D), "
         "head = projector output (8192-D; training checkpoint only)."))
register_encoder(EncoderKind(
    recognises=keys_match(r"(^|\.)prototypes\.weight$"),
    name="swav", load=load_swav, usage="swav:PATH", features=("backbone", "head"),
    help="SwAV / DeepCluster-v2 (facebookresearch/swav): released or training checkpoint "
         "(module.*), ResNet-50 and w2/w4/w5. backbone = pooled trunk (default), head = "
         "projection head + L2 normalisation (128-D); prototypes dropped."))
