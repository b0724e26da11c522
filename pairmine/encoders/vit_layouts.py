"""Official ViT-era checkpoints: ``dino:PATH``, ``dinov2:PATH``, ``mocov3:PATH``, ``ibot:PATH``,
``mae:PATH``, each in the layout its repository writes, onto our ViT
(:mod:`pairmine.encoders.vit`).

The architecture is read from the tensors, never from the file name: width from
``cls_token``, patch size from ``patch_embed.proj.weight``, depth from the block indices, the
stored token grid from ``pos_embed``, registers from ``register_tokens``, the MLP width and
type (``fc1`` or DINOv2's SwiGLU ``w12``), LayerScale and the final norm from their keys. The
head count is not in any tensor: it comes from the project's own model table for that width
(MoCo v3's ViT-S has 12 heads where DINO's has 6). ``--arch vit_small_patch16[_reg4]`` names
the size instead; the tensors must still fit it.

Features (``--features``): ``cls`` = the CLS token after the final norm (what the projects'
k-NN evaluations use; the default), ``mean`` = the mean of the patch tokens after the final
norm (registers excluded; for an MAE checkpoint fine-tuned with global pooling, its
``fc_norm`` of the mean, which is that checkpoint's own feature and default), ``head`` = the
projection head on the CLS token where the checkpoint has one: DINO / iBOT / DINOv2 training
checkpoints give the head MLP's bottleneck output (256-D; the weight-normalised prototype
layer after it is dropped), MoCo v3 its 3-layer projector, a fine-tuned MAE its classifier.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.encoders.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Encoder,
    EncoderKind,
    EncoderOptions,
    Preprocess,
    build_empty,
    find_state_dict,
    keys_match,
    load_checkpoint,
    load_state_file,
    load_state_strict,
    register_encoder,
)
from pairmine.errors import CheckpointError, EncoderError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pairmine.encoders.vit import ViTConfig

VIT_FEATURES = ("cls", "mean", "head")

# width -> size name, as the projects name their models
SIZE_NAMES = {192: "vit_tiny", 384: "vit_small", 768: "vit_base", 1024: "vit_large",
              1280: "vit_huge", 1536: "vit_giant2"}
_ARCH_RE = re.compile(r"vit_(tiny|small|base|large|huge|giant2)_patch(\d+)(?:_reg(\d+))?")


@dataclass(frozen=True)
class Project:
    """What a project's repository fixes that its tensors do not say."""

    kind: str
    title: str
    heads: dict[int, int]  # width -> attention heads, from the project's model definitions
    interpolation: str  # the resize filter of its evaluation transform (256 -> 224 crop)
    head_act: str  # activation between the projection head's layers
    head_prefix: str  # where a training checkpoint keeps the projection head


DINO = Project("dino", "DINO", {192: 3, 384: 6, 768: 12}, "bicubic", "gelu", "head.")
IBOT = Project("ibot", "iBOT", {192: 3, 384: 6, 768: 12, 1024: 16}, "bicubic", "gelu", "head.")
DINOV2 = Project("dinov2", "DINOv2", {384: 6, 768: 12, 1024: 16, 1536: 24}, "bicubic", "gelu",
                 "dino_head.")
MOCOV3 = Project("mocov3", "MoCo v3", {384: 12, 768: 12}, "bilinear", "relu", "head.")
MAE = Project("mae", "MAE", {768: 12, 1024: 16, 1280: 16}, "bicubic", "gelu", "head.")


# ---------------------------------------------------------------------------------------------
# reading a checkpoint


def _read(path: str) -> Any:
    """The checkpoint object; a ``.safetensors`` file is a bare state dict."""
    if Path(path).suffix == ".safetensors":
        return load_state_file(path)
    return load_checkpoint(path)


def _is_state(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(v, torch.Tensor) for v in obj.values())


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _without_module(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DistributedDataParallel's ``module.`` prefix removed (DINO's student, MoCo v3)."""
    if state and all(k.startswith("module.") for k in state):
        return _strip(state, "module.")
    return dict(state)


def _split_backbone_head(state: Mapping[str, torch.Tensor], head_prefix: str
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(backbone, head) of a MultiCropWrapper state (``backbone.*``, ``head.*``), or of a
    backbone file, which may carry the head under ``head_prefix`` (iBOT's --with_head)."""
    if any(k.startswith("backbone.") for k in state):
        return _strip(state, "backbone."), _strip(state, head_prefix)
    head = _strip(state, head_prefix)
    return {k: v for k, v in state.items() if not k.startswith(head_prefix)}, head


def _teacher_layout(obj: Any, path: str, project: Project
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str]:
    """DINO / iBOT / DINOv2: a training checkpoint ``{'student', 'teacher', ...}`` (the teacher
    is used, as their evaluations do) or a released backbone state dict (bare, or under
    ``state_dict`` as iBOT's extract_backbone_weights.py writes it)."""
    if isinstance(obj, Mapping) and _is_state(obj.get("teacher")):
        backbone, head = _split_backbone_head(_without_module(obj["teacher"]),
                                              project.head_prefix)
        return backbone, head, "training checkpoint (teacher)"
    state = _without_module(find_state_dict(obj, path))
    backbone, head = _split_backbone_head(state, project.head_prefix)
    return backbone, head, "backbone state dict"


# ---------------------------------------------------------------------------------------------
# our names, the architecture


_DROPPED = ("mask_token", "masked_embed", "decoder_")  # masking / MAE decoder: not used


def to_vit_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The key map onto :class:`VisionTransformer`: DINOv2's chunked blocks
    (``blocks.{chunk}.{i}.``) flattened, iBOT's LayerScale ``gamma_1``/``gamma_2`` renamed
    ``ls1.gamma``/``ls2.gamma``, masking tokens and MAE's decoder dropped. Everything else
    already has our (timm's) names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(_DROPPED):
            continue
        key = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", key)
        key = re.sub(r"\.gamma_([12])$", r".ls\1.gamma", key)
        out[key] = value
    return out


def _reject_non_vit(state: Mapping[str, torch.Tensor], path: str, project: Project) -> None:
    if "patch_embed.proj.0.weight" in state or any(".stem." in k for k in state):
        raise EncoderError(f"{path} is a ViT with a convolutional stem (MoCo v3's vit_conv_*), "
                           "which pairmine does not build",
                           "use a checkpoint with the standard patch embedding")
    if "cls_token" not in state or "patch_embed.proj.weight" not in state:
        sample = ", ".join(list(state)[:5])
        hint = ("for a ResNet-50 backbone use torchvision:resnet50:PATH"
                if "conv1.weight" in state else f"is this a {project.title} ViT? its first "
                f"keys are: {sample}")
        raise CheckpointError(f"{path} holds no {project.title} ViT (no cls_token / "
                              "patch_embed.proj.weight)", hint)


def _parse_arch(arch: str, project: Project) -> tuple[int, int, int]:
    """``--arch vit_small_patch16[_reg4]`` -> (width, patch, registers)."""
    m = _ARCH_RE.fullmatch(arch)
    widths = {name: width for width, name in SIZE_NAMES.items()}
    if m is None or widths[f"vit_{m.group(1)}"] not in project.heads:
        sizes = ", ".join(SIZE_NAMES[w] for w in sorted(project.heads))
        raise EncoderError(f"unknown --arch {arch!r} for {project.kind}",
                           f"give SIZE_patchP[_regR] with SIZE one of {sizes}, e.g. "
                           f"{SIZE_NAMES[min(project.heads)]}_patch16")
    return widths[f"vit_{m.group(1)}"], int(m.group(2)), int(m.group(3) or 0)


def infer_config(state: Mapping[str, torch.Tensor], path: str, project: Project,
                 arch: str | None) -> ViTConfig:
    """The ViT that ``state`` (in our names) describes; ``arch`` overrides size, patch and
    registers (the load then fails on the tensors that do not fit)."""
    from pairmine.encoders.vit import PosInterpolation, ViTConfig

    width = int(state["cls_token"].shape[-1])
    patch = int(state["patch_embed.proj.weight"].shape[-1])
    registers = int(state["register_tokens"].shape[1]) if "register_tokens" in state else 0
    if arch is not None:
        width, patch, registers = _parse_arch(arch, project)
    elif width not in project.heads:
        sizes = ", ".join(f"{w} ({SIZE_NAMES[w]})" for w in sorted(project.heads))
        raise CheckpointError(f"{path}: a {width}-wide ViT is not one of {project.title}'s "
                              f"models, so its head count is unknown",
                              f"{project.title} widths are {sizes}; give --arch to choose one")
    positions = int(state["pos_embed"].shape[1]) - 1
    grid = round(positions ** 0.5)
    if grid * grid != positions:
        raise CheckpointError(f"{path}: pos_embed has {positions} patch positions, not a "
                              "square grid", "give an unmodified checkpoint")
    depth = 1 + max((int(m.group(1)) for k in state
                     if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    swiglu = "blocks.0.mlp.w12.weight" in state
    hidden_key = "blocks.0.mlp.w12.weight" if swiglu else "blocks.0.mlp.fc1.weight"
    if depth == 0 or hidden_key not in state:
        raise CheckpointError(f"{path}: no transformer blocks (blocks.0.mlp.fc1.weight)",
                              "give the ViT's full state dict")
    hidden = int(state[hidden_key].shape[0]) // (2 if swiglu else 1)
    if project is DINOV2:  # the hub's rules: registers came with antialias and no offset
        pos = PosInterpolation(offset=0.0, antialias=True) if registers else PosInterpolation(0.1)
    elif project in (DINO, IBOT):
        pos = PosInterpolation(offset=0.1)
    else:  # MAE's interpolate_pos_embed (size mode); MoCo v3 never resizes, timm's rule
        pos = PosInterpolation()
    return ViTConfig(width=width, depth=depth, heads=project.heads.get(width, 1), patch=patch,
                     grid=grid, mlp_hidden=hidden, registers=registers, swiglu=swiglu,
                     layerscale="blocks.0.ls1.gamma" in state,
                     final_norm="norm.weight" in state, fc_norm="fc_norm.weight" in state,
                     pos=pos)


def arch_name(cfg: ViTConfig) -> str:
    size = SIZE_NAMES.get(cfg.width, f"vit_w{cfg.width}")
    return f"{size}_patch{cfg.patch}" + (f"_reg{cfg.registers}" if cfg.registers else "")


# ---------------------------------------------------------------------------------------------
# projection heads


def mlp_from_state(state: Mapping[str, torch.Tensor], act: str, path: str) -> tuple[nn.Module, int]:
    """An ``nn.Sequential`` whose indexed children fit ``state`` (``0.weight``, ``1.running_mean``
    ...): a 2-D weight is a Linear, running statistics a BatchNorm1d (affine or not), a 1-D
    weight alone a LayerNorm, a gap the activation; a bare ``weight`` is one Linear. Widths come
    from the shapes. Returns the module and its output width."""
    from collections import OrderedDict

    from torch import nn

    def linear(prefix: str) -> nn.Linear:
        out_dim, in_dim = state[f"{prefix}weight"].shape
        return nn.Linear(int(in_dim), int(out_dim), bias=f"{prefix}bias" in state)

    if "weight" in state:
        single = linear("")
        return single, single.out_features
    indices = sorted({int(k.split(".", 1)[0]) for k in state if k.split(".", 1)[0].isdigit()})
    if not indices:
        raise CheckpointError(f"{path}: the projection head has no layers", "use --features cls")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    out_dim = 0
    for i in range(indices[-1] + 1):
        weight = state.get(f"{i}.weight")
        if f"{i}.running_mean" in state:
            layers[str(i)] = nn.BatchNorm1d(int(state[f"{i}.running_mean"].shape[0]),
                                            affine=weight is not None)
        elif weight is not None and weight.ndim == 2:
            layers[str(i)] = linear(f"{i}.")
            out_dim = int(weight.shape[0])
        elif weight is not None:
            layers[str(i)] = nn.LayerNorm(int(weight.shape[0]))
        else:
            layers[str(i)] = nn.GELU() if act == "gelu" else nn.ReLU(inplace=True)
    return nn.Sequential(layers), out_dim


def _checkpoint_act(obj: Any, default: str) -> str:
    """iBOT records its head activation in ``args.act_in_head`` (gelu unless changed)."""
    args = obj.get("args") if isinstance(obj, Mapping) else None
    act = getattr(args, "act_in_head", None)
    return act if act in ("gelu", "relu") else default


# ---------------------------------------------------------------------------------------------
# the loaders


def _preprocess(project: Project) -> Preprocess:
    # every project evaluates with Resize(256) + CenterCrop(224) and ImageNet statistics
    return Preprocess(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                      interpolation=project.interpolation)


def _build(project: Project, path: str, backbone: Mapping[str, torch.Tensor],
           head_state: Mapping[str, torch.Tensor], opts: EncoderOptions, *, layout: str,
           head_act: str, classifier: bool = False) -> Encoder:
    """The encoder for ``backbone`` (project names) and an optional head; ``classifier``: the
    head is a fine-tuned classifier on the model's own pooled feature (MAE)."""
    from pairmine.encoders.vit import VisionTransformer, ViTFeatures

    if opts.arch is not None:
        _parse_arch(opts.arch, project)  # reject an unknown --arch before building anything
    state = to_vit_names(backbone)
    _reject_non_vit(state, path, project)
    cfg = infer_config(state, path, project, opts.arch)
    vit = build_empty(lambda: VisionTransformer(cfg))
    load_state_strict(vit, state, path)
    own = "mean" if cfg.fc_norm else "cls"  # the pooled feature the checkpoint was trained on
    features = opts.features or own
    if features not in VIT_FEATURES:  # mocov3 accepts backbone, for its ResNet checkpoints
        raise EncoderError(f"--features {features} is for ResNet checkpoints; {path} is a ViT",
                           "use --features cls (default), mean or head")
    if features == "cls" and not cfg.final_norm:
        raise EncoderError(f"{path} was fine-tuned with global pooling: its CLS token has no "
                           "final norm and was never used", "use --features mean (the default)")
    head: nn.Module | None = None
    dim = cfg.width
    if features == "head":
        if not head_state:
            raise EncoderError(f"{path} has no projection head (no {project.head_prefix}* "
                               "keys): released backbone files carry none",
                               "use --features cls or mean, or give the full training "
                               "checkpoint")
        head, dim = mlp_from_state(head_state, head_act, path)
        load_state_strict(head, head_state, path)
    pooling = features
    if features == "head":  # projection heads read the CLS token; a classifier its own pooling
        pooling = own if classifier else "cls"
    model = ViTFeatures(vit, pooling, head)
    return Encoder(spec=f"{project.kind}:{path}", model=model, dim=dim,
                   preprocess=_preprocess(project), arch=arch_name(cfg), features=features,
                   info={"kind": project.kind, "layout": layout, "depth": cfg.depth,
                         "heads": cfg.heads, "token_grid": cfg.grid,
                         "registers": cfg.registers, "layerscale": cfg.layerscale,
                         "ffn": "swiglu" if cfg.swiglu else "mlp",
                         "pos_interpolation": (f"bicubic, offset {cfg.pos.offset}"
                                               if cfg.pos.offset else "bicubic, size") +
                         (", antialias" if cfg.pos.antialias else "")})


def _load_teacher_kind(project: Project) -> Callable[[str, EncoderOptions], Encoder]:
    def load(args: str, opts: EncoderOptions) -> Encoder:
        obj = _read(args)
        backbone, head, layout = _teacher_layout(obj, args, project)
        # DINOHead / iBOTHead: `mlp` (-> the bottleneck), then the weight-normalised prototype
        # layer `last_layer` (65,536 scores for DINO), which is not an embedding: dropped
        return _build(project, args, backbone, _strip(head, "mlp."), opts, layout=layout,
                      head_act=_checkpoint_act(obj, project.head_act))
    return load


def load_mocov3(args: str, opts: EncoderOptions) -> Encoder:
    """MoCo v3's ``{'epoch', 'arch', 'state_dict': {'module.base_encoder.*',
    'module.momentum_encoder.*', 'module.predictor.*'}, 'optimizer', 'scaler'}``: the base
    encoder, its projector under ``head.*`` (ViT) or ``fc.*`` (ResNet). Also a DeiT-converted
    file (``{'model': ...}``, no head)."""
    state = _without_module(find_state_dict(_read(args), args))
    for prefix in ("base_encoder.", ""):
        encoder = _strip(state, prefix)
        if encoder:
            break
    if "cls_token" not in encoder and "conv1.weight" in encoder:
        return _mocov3_resnet(args, encoder, opts)
    return _build(MOCOV3, args, {k: v for k, v in encoder.items() if not k.startswith("head.")},
                  _strip(encoder, "head."), opts, layout="MoCo v3 base encoder",
                  head_act="relu")


def _mocov3_resnet(path: str, state: dict[str, torch.Tensor], opts: EncoderOptions) -> Encoder:
    """MoCo v3's ResNet-50: torchvision's trunk, its projector ``fc`` = Linear-BN-ReLU-Linear-BN
    (the last BN without affine parameters)."""
    from pairmine.encoders.ssl_resnet import build_encoder, check_arch

    features = opts.features or "backbone"
    if features not in ("backbone", "head"):
        raise EncoderError(f"--features {features} is for ViTs; {path} is a ResNet MoCo v3 "
                           "checkpoint", "use --features backbone (default) or head")
    check_arch(opts.arch)

    def head(trunk: Mapping[str, torch.Tensor], p: str) -> tuple[nn.Module, int]:
        fc = _strip(trunk, "fc.")
        if not fc:
            raise CheckpointError(f"{p} has no MoCo v3 projector (fc.*)",
                                  "use --features backbone")
        return mlp_from_state(fc, "relu", p)

    return build_encoder(kind="mocov3", path=path, state=state, opts=opts, features=features,
                         head=head, info={"layout": "MoCo v3 base encoder (ResNet)"})


def load_mae(args: str, opts: EncoderOptions) -> Encoder:
    """MAE's ``{'model', 'optimizer', 'epoch', 'scaler', 'args'}`` (or the released
    ``{'model'}``): a pre-training state (encoder + ``decoder_*``, dropped) or a fine-tuned one
    (``fc_norm`` with global pooling, ``head`` = classifier)."""
    state = _without_module(find_state_dict(_read(args), args))
    head = _strip(state, "head.")
    backbone = {k: v for k, v in state.items() if not k.startswith("head.")}
    layout = "fine-tuned" if head else (
        "pre-training (decoder dropped)" if any(k.startswith("decoder_") for k in state)
        else "encoder")
    return _build(MAE, args, backbone, head, opts, layout=layout, head_act="gelu",
                  classifier=True)


_FEATURES_HELP = ("--features cls (default) | mean | head. Architecture from the tensors; "
                  "--arch vit_small_patch16 etc. overrides.")

register_encoder(EncoderKind(
    recognises=keys_match(r"(^|\.)blocks\.0\.attn\.qkv\.weight$",
                          unless=(r"(^|\.)ls1\.", r"^model\.", r"base_encoder\.")),
    name="dino", load=_load_teacher_kind(DINO), usage="dino:PATH", features=VIT_FEATURES,
    help="DINO ViT (facebookresearch/dino): a released backbone .pth or a training checkpoint "
         "(teacher; head = the head MLP's 256-D bottleneck). " + _FEATURES_HELP))
register_encoder(EncoderKind(
    recognises=keys_match(r"(^|\.)blocks\.0\.(\d+\.)?ls1\."),
    name="dinov2", load=_load_teacher_kind(DINOV2), usage="dinov2:PATH", features=VIT_FEATURES,
    help="DINOv2 ViT-S/B/L/g /14 (facebookresearch/dinov2) released backbone .pth, with or "
         "without registers; a training teacher_checkpoint.pth (head = dino_head). "
         + _FEATURES_HELP))
register_encoder(EncoderKind(
    recognises=keys_match(r"(^|\.)base_encoder\."),
    name="mocov3", load=load_mocov3, usage="mocov3:PATH",
    features=("cls", "mean", "head", "backbone"),
    help="MoCo v3 checkpoint (module.base_encoder.*): ViT (cls default, mean, head = the "
         "3-layer projector) or ResNet-50 (backbone default, head)."))
register_encoder(EncoderKind(
    recognises=keys_match(r"(^|\.)blocks\.0\.attn\.qkv\.weight$",
                          unless=(r"(^|\.)ls1\.", r"^model\.", r"base_encoder\.")),
    name="ibot", load=_load_teacher_kind(IBOT), usage="ibot:PATH", features=VIT_FEATURES,
    help="iBOT ViT (bytedance/ibot): checkpoint_teacher.pth ({'state_dict'}) or a training "
         "checkpoint (teacher; head = the head MLP's bottleneck). " + _FEATURES_HELP))
register_encoder(EncoderKind(
    recognises=keys_match(r"^model\.blocks\.0\.attn\.qkv\.weight$"),
    name="mae", load=load_mae, usage="mae:PATH", features=VIT_FEATURES,
    help="MAE ViT (facebookresearch/mae): pre-training checkpoint (encoder; decoder dropped; "
         "cls default) or fine-tuned (fc_norm: mean default; head = classifier logits)."))
