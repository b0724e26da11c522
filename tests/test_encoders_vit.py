"""ViT-era official checkpoints (DINO, DINOv2, MoCo v3, iBOT, MAE): each saved in the layout
its repository writes, loaded through the registry, features equal to the in-memory model's;
our ViT against timm's on the same weights; the position-embedding rules; the errors."""

from __future__ import annotations

import argparse
import copy
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest
import torch
import torch.nn.functional as F
import torchvision
from test_encoders import Made, Maker, assert_contract, state_of
from torch import nn

from pairmine.encoders import load_encoder
from pairmine.encoders.vit import PosInterpolation, VisionTransformer, ViTConfig, ViTFeatures
from pairmine.encoders.vit_layouts import to_vit_names
from pairmine.errors import CheckpointError, EncoderError

# ---------------------------------------------------------------------------------------------
# tiny models with random weights


M = TypeVar("M", bound=nn.Module)


def randomise_all(model: M, seed: int) -> M:
    """Every parameter random (norm weights around 1, LayerScale around 0.5, matrices scaled
    by their fan-in, tokens and position embeddings of order 1) and non-trivial BatchNorm
    statistics, so any parameter loaded into the wrong place changes the output."""
    g = torch.Generator().manual_seed(seed)
    norms = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=g)
                if isinstance(module, norms):
                    p.copy_(1.0 + 0.1 * noise if name == "weight" else 0.1 * noise)
                elif name == "gamma":
                    p.copy_(0.5 + 0.1 * noise)
                elif name in ("cls_token", "pos_embed", "register_tokens") or p.ndim < 2:
                    p.copy_(0.5 * noise)
                else:
                    p.copy_(noise / p[0].numel() ** 0.5)
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape,
                                                            generator=g))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape,
                                                          generator=g))
    return model.eval()


def tiny_vit(seed: int, *, width: int, heads: int, patch: int, grid: int, depth: int = 2,
             registers: int = 0, layerscale: bool = False, swiglu: bool = False,
             pos: PosInterpolation | None = None, global_pool: bool = False
             ) -> VisionTransformer:
    hidden = (int(4 * width * 2 / 3) + 7) // 8 * 8 if swiglu else 4 * width  # DINOv2's rule
    cfg = ViTConfig(width=width, depth=depth, heads=heads, patch=patch, grid=grid,
                    mlp_hidden=hidden, registers=registers, swiglu=swiglu,
                    layerscale=layerscale, final_norm=not global_pool, fc_norm=global_pool,
                    pos=pos or PosInterpolation())
    vit = VisionTransformer(cfg)
    randomise_all(vit, seed)
    return vit


def perturbed(state: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Another network's weights with the same keys: a student / momentum encoder."""
    return OrderedDict((k, v + 0.25 if v.is_floating_point() else v) for k, v in state.items())


class DinoHead(nn.Module):
    """As DINO's and iBOT's DINOHead (nlayers=3, small widths): ``mlp`` Linear-GELU-Linear-
    GELU-Linear to the bottleneck, then a weight-normalised prototype layer ``last_layer``."""

    def __init__(self, in_dim: int, out_dim: int = 40, hidden: int = 48, bottleneck: int = 16,
                 use_bn: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden)]
        layers += [nn.BatchNorm1d(hidden)] if use_bn else []
        layers += [nn.GELU(), nn.Linear(hidden, hidden)]
        layers += [nn.BatchNorm1d(hidden)] if use_bn else []
        layers += [nn.GELU(), nn.Linear(hidden, bottleneck)]
        self.mlp = nn.Sequential(*layers)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch deprecates nn.utils.weight_norm; DINO uses it
            self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))


def mocov3_mlp(num_layers: int, in_dim: int, mlp_dim: int, out_dim: int) -> nn.Sequential:
    """As MoCo v3's ``_build_mlp``: Linear (no bias) - BN - ReLU ..., last BN without affine."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        d1 = in_dim if i == 0 else mlp_dim
        d2 = out_dim if i == num_layers - 1 else mlp_dim
        layers.append(nn.Linear(d1, d2, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(d2), nn.ReLU(inplace=True)]
        else:
            layers.append(nn.BatchNorm1d(d2, affine=False))
    return nn.Sequential(*layers)


def training_args(**kw: Any) -> argparse.Namespace:
    """The argparse.Namespace DINO, iBOT and MAE save under 'args'."""
    return argparse.Namespace(data_path="/path/to/imagenet/train", output_dir=".", lr=0.0005,
                              epochs=100, seed=0, **kw)


def optimizer_state() -> dict[str, Any]:
    return {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3)}},
            "param_groups": [{"lr": 1e-4, "weight_decay": 0.04, "params": [0]}]}


def grad_scaler_state() -> dict[str, Any]:
    return {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
            "growth_interval": 2000, "_growth_tracker": 0}


def features(vit: VisionTransformer, pooling: str, head: nn.Module | None = None) -> nn.Module:
    return ViTFeatures(vit, pooling, head).eval()


# ---------------------------------------------------------------------------------------------
# the layouts, as each repository writes them


def _dino_backbone(pooling: str, patch: int, width: int, heads: int) -> Maker:
    def make(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
        vit = tiny_vit(1, width=width, heads=heads, patch=patch, grid=4,
                       pos=PosInterpolation(offset=0.1))
        path = tmp / f"dino_vit{patch}_pretrain.pth"
        torch.save(vit.state_dict(), path)  # released backbones: the teacher's bare state dict
        kwargs = {} if pooling == "cls" else {"features": pooling}
        return Made(f"dino:{path}", kwargs, features(vit, pooling), 32, 224)
    return make


def dino_training_checkpoint(vit: VisionTransformer, head: DinoHead, loss: str = "dino_loss",
                             **args: Any) -> dict[str, Any]:
    """main_dino.py / main_ibot.py: save_dict with the DDP student (``module.``), the teacher
    (a MultiCropWrapper without DDP for ViTs: ``backbone.*``, ``head.*``), the optimizer, the
    epoch, the argparse Namespace, the loss's center buffer and the fp16 scaler."""
    teacher = state_of(vit, "backbone.") | state_of(head, "head.")
    return {"student": perturbed(OrderedDict(("module." + k, v) for k, v in teacher.items())),
            "teacher": teacher, "optimizer": optimizer_state(), "epoch": 101,
            "args": training_args(arch="vit_tiny", patch_size=16, out_dim=40, **args),
            loss: {"center": torch.randn(1, 40)}, "fp16_scaler": grad_scaler_state()}


def _dino_full(features_opt: str) -> Maker:
    def make(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
        vit = tiny_vit(2, width=192, heads=3, patch=16, grid=4, pos=PosInterpolation(0.1))
        head = randomise_all(DinoHead(192), 3)
        path = tmp / "checkpoint.pth"
        torch.save(dino_training_checkpoint(vit, head), path)
        ref = features(vit, "cls", head.mlp if features_opt == "head" else None)
        return Made(f"dino:{path}", {"features": features_opt}, ref, 32, 224)
    return make


def _dinov2_backbone(registers: int, pooling: str) -> Maker:
    def make(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
        pos = (PosInterpolation(offset=0.0, antialias=True) if registers
               else PosInterpolation(offset=0.1))
        vit = tiny_vit(4, width=384, heads=6, patch=14, grid=37, registers=registers,
                       layerscale=True, pos=pos)  # 37 x 37: the hub's img_size 518
        state = state_of(vit)
        state["mask_token"] = torch.zeros(1, 384)  # in every released file, unused at eval
        name = f"dinov2_vits14{'_reg4' if registers else ''}_pretrain.pth"
        torch.save(state, tmp / name)
        kwargs = {} if pooling == "cls" else {"features": pooling}
        return Made(f"dinov2:{tmp / name}", kwargs, features(vit, pooling), 56, 224)
    return make


def chunked(state: Mapping[str, torch.Tensor], depth: int, chunks: int
            ) -> OrderedDict[str, torch.Tensor]:
    """DINOv2's BlockChunk naming (training, block_chunks > 0): ``blocks.{chunk}.{i}.*``."""
    per_chunk = depth // chunks
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, v in state.items():
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = f"blocks.{i // per_chunk}.{k[len('blocks.'):]}"
        out[k] = v
    return out


def _dinov2_teacher_swiglu(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    """train.py's do_test: ``{'teacher': {'backbone.*' (chunked), 'dino_head.*',
    'ibot_head.*'}}``, here a SwiGLU ViT as ViT-g/14 has, with the DINO head's output."""
    vit = tiny_vit(5, width=384, heads=6, patch=14, grid=4, swiglu=True, layerscale=True,
                   pos=PosInterpolation(offset=0.1))
    head = randomise_all(DinoHead(384), 6)
    ibot_head = randomise_all(DinoHead(384), 7)
    backbone = chunked(state_of(vit), depth=2, chunks=2)
    backbone["mask_token"] = torch.zeros(1, 384)
    teacher = (OrderedDict(("backbone." + k, v) for k, v in backbone.items())
               | state_of(head, "dino_head.") | state_of(ibot_head, "ibot_head."))
    path = tmp / "teacher_checkpoint.pth"
    torch.save({"teacher": teacher}, path)
    return Made(f"dinov2:{path}", {"features": "head"}, features(vit, "cls", head.mlp), 56, 224)


def mocov3_vit_checkpoint(vit: VisionTransformer, projector: nn.Module) -> dict[str, Any]:
    """main_moco.py: ``{'epoch', 'arch', 'state_dict': DDP(MoCo_ViT).state_dict(),
    'optimizer', 'scaler'}``: base encoder with the projector as its ``head``, the momentum
    encoder, the predictor."""
    base = state_of(vit) | state_of(projector, "head.")
    predictor = randomise_all(mocov3_mlp(2, 32, 64, 32), 9)
    state = (OrderedDict(("module.base_encoder." + k, v) for k, v in base.items())
             | OrderedDict(("module.momentum_encoder." + k, v)
                           for k, v in perturbed(base).items())
             | state_of(predictor, "module.predictor."))
    return {"epoch": 300, "arch": "vit_small", "state_dict": state,
            "optimizer": optimizer_state(), "scaler": grad_scaler_state()}


def _mocov3_vit(features_opt: str) -> Maker:
    def make(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
        vit = tiny_vit(8, width=384, heads=12, patch=16, grid=2, depth=1)  # MoCo v3 ViT-S: 12
        projector = randomise_all(mocov3_mlp(3, 384, 64, 32), 10)
        path = tmp / "checkpoint_0299.pth.tar"
        torch.save(mocov3_vit_checkpoint(vit, projector), path)
        ref = features(vit, "cls", projector if features_opt == "head" else None)
        kwargs = {} if features_opt == "cls" else {"features": features_opt}
        return Made(f"mocov3:{path}", kwargs, ref, 32, 224)
    return make


def _mocov3_resnet(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    """MoCo_ResNet: torchvision's ResNet with ``fc`` = the 2-layer projector (resnet18 here to
    stay small; the official one is resnet50, the same layout)."""
    net = torchvision.models.resnet18()
    net.fc = mocov3_mlp(2, 512, 64, 32)
    randomise_all(net, 11)
    predictor = randomise_all(mocov3_mlp(2, 32, 64, 32), 12)
    state = (state_of(net, "module.base_encoder.")
             | OrderedDict(("module.momentum_encoder." + k, v)
                           for k, v in perturbed(net.state_dict()).items())
             | state_of(predictor, "module.predictor."))
    path = tmp / "r50_checkpoint.pth.tar"
    torch.save({"epoch": 100, "arch": "resnet50", "state_dict": state,
                "optimizer": optimizer_state(), "scaler": grad_scaler_state()}, path)
    return Made(f"mocov3:{path}", {"features": "head"}, net.eval(), 64, 224)


def _ibot_teacher_backbone(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    """extract_backbone_weights.py --checkpoint_key teacher: ``{'state_dict': backbone}``,
    the masked-image-modeling token included."""
    vit = tiny_vit(13, width=192, heads=3, patch=16, grid=4, pos=PosInterpolation(0.1))
    state = state_of(vit)
    state["masked_embed"] = torch.randn(1, 192)
    path = tmp / "checkpoint_teacher.pth"
    torch.save({"state_dict": state}, path)
    return Made(f"ibot:{path}", {}, features(vit, "cls"), 32, 224)


class IbotHead(DinoHead):
    """iBOTHead with shared_head=False: DINOHead plus ``last_layer2`` for the patch tokens."""

    def __init__(self, in_dim: int) -> None:
        super().__init__(in_dim)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.last_layer2 = nn.utils.weight_norm(nn.Linear(16, 24, bias=False))


def _ibot_full_head(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    vit = tiny_vit(14, width=192, heads=3, patch=16, grid=4, pos=PosInterpolation(0.1))
    vit_state = state_of(vit)
    vit_state["masked_embed"] = torch.randn(1, 192)
    head = randomise_all(IbotHead(192), 15)
    ckpt = dino_training_checkpoint(vit, head, loss="ibot_loss", act_in_head="gelu",
                                    shared_head=False)
    ckpt["teacher"]["backbone.masked_embed"] = vit_state["masked_embed"]
    ckpt["student"]["module.backbone.masked_embed"] = vit_state["masked_embed"]
    path = tmp / "checkpoint.pth"
    torch.save(ckpt, path)
    return Made(f"ibot:{path}", {"features": "head"}, features(vit, "cls", head.mlp), 32, 224)


def mae_pretrain_state(vit: VisionTransformer) -> OrderedDict[str, torch.Tensor]:
    """MaskedAutoencoderViT.state_dict(): the encoder, then mask_token and the decoder."""
    state = state_of(vit)
    decoder = nn.TransformerEncoderLayer(64, 2, 128, batch_first=True)  # any decoder keys
    state["mask_token"] = torch.zeros(1, 1, 64)
    state["decoder_embed.weight"] = torch.randn(64, vit.cfg.width)
    state["decoder_embed.bias"] = torch.zeros(64)
    state["decoder_pos_embed"] = torch.randn(1, 1 + vit.cfg.grid ** 2, 64)
    state |= state_of(decoder, "decoder_blocks.0.")
    state["decoder_norm.weight"] = torch.ones(64)
    state["decoder_norm.bias"] = torch.zeros(64)
    state["decoder_pred.weight"] = torch.randn(16 * 16 * 3, 64)
    state["decoder_pred.bias"] = torch.zeros(16 * 16 * 3)
    return state


def _mae_pretrain(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    vit = tiny_vit(16, width=768, heads=12, patch=16, grid=2, depth=1)
    path = tmp / "checkpoint-399.pth"
    torch.save({"model": mae_pretrain_state(vit), "optimizer": optimizer_state(), "epoch": 399,
                "scaler": grad_scaler_state(),
                "args": training_args(model="mae_vit_base_patch16", mask_ratio=0.75)}, path)
    return Made(f"mae:{path}", {}, features(vit, "cls"), 32, 224)


def _mae_finetuned(features_opt: str) -> Maker:
    def make(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
        vit = tiny_vit(17, width=768, heads=12, patch=16, grid=2, depth=1, global_pool=True)
        classifier = randomise_all(nn.Linear(768, 10), 18)
        path = tmp / "mae_finetuned_vit_base.pth"
        torch.save({"model": state_of(vit) | state_of(classifier, "head.")}, path)
        ref = features(vit, "mean", classifier if features_opt == "head" else None)
        kwargs = {"features": features_opt} if features_opt == "head" else {}
        return Made(f"mae:{path}", kwargs, ref, 32, 224)
    return make


CASES: dict[str, tuple[str, Maker]] = {
    "dino-vits16-cls": ("dino", _dino_backbone("cls", 16, 384, 6)),
    "dino-vitb8-mean": ("dino", _dino_backbone("mean", 8, 768, 12)),
    "dino-full-checkpoint-head": ("dino", _dino_full("head")),
    "dino-full-checkpoint-cls": ("dino", _dino_full("cls")),
    "dinov2-vits14-cls": ("dinov2", _dinov2_backbone(0, "cls")),
    "dinov2-vits14-reg4-mean": ("dinov2", _dinov2_backbone(4, "mean")),
    "dinov2-teacher-swiglu-head": ("dinov2", _dinov2_teacher_swiglu),
    "mocov3-vit-cls": ("mocov3", _mocov3_vit("cls")),
    "mocov3-vit-head": ("mocov3", _mocov3_vit("head")),
    "mocov3-resnet-head": ("mocov3", _mocov3_resnet),
    "ibot-teacher-backbone": ("ibot", _ibot_teacher_backbone),
    "ibot-full-checkpoint-head": ("ibot", _ibot_full_head),
    "mae-pretrain-cls": ("mae", _mae_pretrain),
    "mae-finetuned-mean": ("mae", _mae_finetuned("mean")),
    "mae-finetuned-head": ("mae", _mae_finetuned("head")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_contract(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, make = CASES[case]
    assert_contract(make(tmp_path, monkeypatch))


def test_declared_architecture_and_preprocess(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    enc = load_encoder(_dinov2_backbone(4, "cls")(tmp_path, monkeypatch).spec)
    assert (enc.arch, enc.dim, enc.features) == ("vit_small_patch14_reg4", 384, "cls")
    assert (enc.info["heads"], enc.info["registers"], enc.info["token_grid"]) == (6, 4, 37)
    assert enc.info["layerscale"] and enc.info["pos_interpolation"] == "bicubic, size, antialias"
    p = enc.preprocess
    assert (p.resize, p.crop, p.interpolation) == (256, 224, "bicubic")
    head = load_encoder(_dino_full("head")(tmp_path, monkeypatch).spec, features="head")
    assert head.dim == 16 and head.info["layout"] == "training checkpoint (teacher)"
    moco = load_encoder(_mocov3_vit("cls")(tmp_path, monkeypatch).spec)
    assert (moco.arch, moco.info["heads"], moco.preprocess.interpolation) == (
        "vit_small_patch16", 12, "bilinear")
    mae = load_encoder(_mae_finetuned("mean")(tmp_path, monkeypatch).spec)
    assert (mae.features, mae.info["layout"]) == ("mean", "fine-tuned")


def test_safetensors_backbone(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    vit = tiny_vit(19, width=384, heads=6, patch=14, grid=4, layerscale=True,
                   pos=PosInterpolation(0.1))
    path = tmp_path / "dinov2.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in vit.state_dict().items()},
                                str(path))
    assert_contract(Made(f"dinov2:{path}", {}, features(vit, "cls"), 56, 224))


# ---------------------------------------------------------------------------------------------
# our ViT against timm's, and the position-embedding rules


def test_matches_timm_on_a_dino_layout_state_dict(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    vit = tiny_vit(20, width=192, heads=3, patch=16, grid=4)
    path = tmp_path / "dino_deittiny16_pretrain.pth"
    torch.save(vit.state_dict(), path)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))  # the stored grid
    pools: tuple[tuple[str, Literal["token", "avg"]], ...] = (("cls", "token"), ("mean", "avg"))
    for pooling, global_pool in pools:
        oracle = TimmViT(img_size=64, patch_size=16, embed_dim=192, depth=2, num_heads=3,
                         mlp_ratio=4.0, qkv_bias=True, num_classes=0, global_pool=global_pool,
                         fc_norm=False)
        oracle.load_state_dict(torch.load(path, weights_only=True), strict=True)
        ours = load_encoder(f"dino:{path}", features=pooling).model
        with torch.no_grad():
            want, got = oracle.eval()(x), ours(x)
        assert want.shape == got.shape == (2, 192)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), (got - want).abs().max()
    assert timm.__version__


def test_matches_timm_dinov2_registers_at_another_resolution(tmp_path: Path) -> None:
    """timm resizes position embeddings with antialiased bicubic in size mode: DINOv2's rule
    for the register models. timm keeps DINOv2's CLS position inside its cls_token
    (no_embed_class), the conversion its own loader makes."""
    pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    vit = tiny_vit(21, width=384, heads=6, patch=14, grid=4, registers=4, layerscale=True,
                   pos=PosInterpolation(offset=0.0, antialias=True))
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(vit.state_dict() | {"mask_token": torch.zeros(1, 384)}, path)
    state = dict(vit.state_dict())
    cls_pos, patch_pos = state.pop("pos_embed").split([1, 16], dim=1)
    state["cls_token"] = state["cls_token"] + cls_pos
    state["pos_embed"] = patch_pos
    state["reg_token"] = state.pop("register_tokens")
    oracle = TimmViT(img_size=56, patch_size=14, embed_dim=384, depth=2, num_heads=6,
                     qkv_bias=True, init_values=1.0, reg_tokens=4, no_embed_class=True,
                     dynamic_img_size=True, num_classes=0, global_pool="token")
    oracle.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(2))  # 8x8, not 4x4
    with torch.no_grad():
        want = oracle.eval()(x)
        got = load_encoder(f"dinov2:{path}").model(x)
        unresized = vit.pos_embed[:, 1:].reshape(1, 4, 4, 384)
        assert vit.position_embeddings(8, 8).shape == (1, 65, 384) and unresized.std() > 0.1
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), (got - want).abs().max()


def test_dino_offset_rule_is_dinos_formula_and_matters() -> None:
    """DINO (and iBOT, DINOv2 without registers) resize with scale_factor (g + 0.1) / G, which
    samples other positions than asking for the output size."""
    vit = tiny_vit(22, width=192, heads=3, patch=16, grid=14, depth=1,
                   pos=PosInterpolation(offset=0.1))
    patch_pos = vit.pos_embed[:, 1:].reshape(1, 14, 14, 192).permute(0, 3, 1, 2)
    with torch.no_grad():
        got = vit.position_embeddings(16, 16)
        dino = F.interpolate(patch_pos, mode="bicubic",
                             scale_factor=(16.1 / 14, 16.1 / 14)).permute(0, 2, 3, 1)
        sized = F.interpolate(patch_pos, mode="bicubic", size=(16, 16)).permute(0, 2, 3, 1)
    assert torch.equal(got[:, 0], vit.pos_embed[:, 0])  # the CLS position is kept
    assert torch.allclose(got[:, 1:], dino.reshape(1, 256, 192), atol=1e-6)
    assert (got[:, 1:] - sized.reshape(1, 256, 192)).abs().max() > 1e-2
    assert vit.position_embeddings(14, 14) is vit.pos_embed  # the stored grid is not resampled


def test_key_map() -> None:
    t = torch.zeros(1)
    mapped = to_vit_names({"blocks.1.3.norm1.weight": t, "blocks.3.gamma_1": t,
                           "blocks.0.gamma_2": t, "mask_token": t, "masked_embed": t,
                           "decoder_pred.weight": t, "blocks.2.attn.qkv.weight": t})
    assert sorted(mapped) == ["blocks.0.ls2.gamma", "blocks.2.attn.qkv.weight",
                              "blocks.3.ls1.gamma", "blocks.3.norm1.weight"]


def test_ibot_layerscale_names(tmp_path: Path) -> None:
    """iBOT with init_values > 0 names LayerScale gamma_1 / gamma_2 on the block."""
    vit = tiny_vit(23, width=192, heads=3, patch=16, grid=2, depth=1, layerscale=True,
                   pos=PosInterpolation(0.1))
    state = OrderedDict((k.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2"), v)
                        for k, v in vit.state_dict().items())
    assert "blocks.0.gamma_1" in state
    torch.save({"state_dict": state}, tmp_path / "checkpoint_teacher.pth")
    assert_contract(Made(f"ibot:{tmp_path / 'checkpoint_teacher.pth'}", {},
                         features(vit, "cls"), 32, 224))


# ---------------------------------------------------------------------------------------------
# errors: one line, what is wrong and what to do


@pytest.fixture()
def dino_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return Path(_dino_backbone("cls", 16, 192, 3)(tmp_path, monkeypatch).spec.split(":", 1)[1])


def test_head_that_is_not_there(dino_file: Path) -> None:
    with pytest.raises(EncoderError, match="no projection head") as info:
        load_encoder(f"dino:{dino_file}", features="head")
    assert "full training checkpoint" in (info.value.hint or "")


def test_feature_options_are_per_kind(dino_file: Path) -> None:
    with pytest.raises(EncoderError, match="'backbone' is not an option of dino") as info:
        load_encoder(f"dino:{dino_file}", features="backbone")
    assert "cls, mean, head" in (info.value.hint or "")
    with pytest.raises(EncoderError, match="'cls' is not an option of moco"):
        load_encoder(f"moco:{dino_file}", features="cls")


def test_mae_global_pool_has_no_cls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _mae_finetuned("mean")(tmp_path, monkeypatch).spec
    with pytest.raises(EncoderError, match="global pooling"):
        load_encoder(spec, features="cls")


def test_mae_pretrain_has_no_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EncoderError, match="no projection head"):
        load_encoder(_mae_pretrain(tmp_path, monkeypatch).spec, features="head")


def test_width_outside_the_projects_table_and_arch(tmp_path: Path, dino_file: Path) -> None:
    vit = tiny_vit(24, width=96, heads=2, patch=16, grid=2, depth=1)
    torch.save(vit.state_dict(), tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="96-wide ViT is not one of DINO's") as info:
        load_encoder(f"dino:{tmp_path / 'odd.pth'}")
    assert "--arch" in (info.value.hint or "")
    with pytest.raises(CheckpointError, match="size mismatch"):
        load_encoder(f"dino:{tmp_path / 'odd.pth'}", arch="vit_small_patch16")
    with pytest.raises(EncoderError, match="unknown --arch 'vit_huge_patch14' for dino"):
        load_encoder(f"dino:{dino_file}", arch="vit_huge_patch14")
    with pytest.raises(EncoderError, match="unknown --arch"):
        load_encoder(f"dinov2:{dino_file}", arch="resnet50")
    # the right --arch gives the same model as the inference
    assert load_encoder(f"dino:{dino_file}", arch="vit_tiny_patch16").arch == "vit_tiny_patch16"
    with pytest.raises(CheckpointError, match="missing keys"):
        load_encoder(f"dino:{dino_file}", arch="vit_tiny_patch16_reg4")


def test_not_a_vit(tmp_path: Path) -> None:
    resnet = torchvision.models.resnet18()
    resnet.fc = nn.Identity()
    torch.save(resnet.state_dict(), tmp_path / "dino_resnet50_pretrain.pth")
    with pytest.raises(CheckpointError, match="holds no DINO ViT") as info:
        load_encoder(f"dino:{tmp_path / 'dino_resnet50_pretrain.pth'}")
    assert "torchvision:resnet50" in (info.value.hint or "")
    conv_stem = {"cls_token": torch.zeros(1, 1, 384), "pos_embed": torch.zeros(1, 197, 384),
                 "patch_embed.proj.0.weight": torch.zeros(48, 3, 3, 3)}
    torch.save({"state_dict": {f"module.base_encoder.{k}": v for k, v in conv_stem.items()}},
               tmp_path / "vit_conv.pth.tar")
    with pytest.raises(EncoderError, match="convolutional stem"):
        load_encoder(f"mocov3:{tmp_path / 'vit_conv.pth.tar'}")


def test_wrong_kind_names_the_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    moco = _mocov3_vit("cls")(tmp_path, monkeypatch).spec.split(":", 1)[1]
    with pytest.raises(CheckpointError, match="holds no DINO ViT") as info:
        load_encoder(f"dino:{moco}")
    assert "base_encoder" in (info.value.hint or "")
    with pytest.raises(EncoderError, match="is for ResNet checkpoints"):
        load_encoder(f"mocov3:{moco}", features="backbone")


def test_resnet_mocov3_rejects_vit_features(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _mocov3_resnet(tmp_path, monkeypatch).spec
    with pytest.raises(EncoderError, match="for ViTs"):
        load_encoder(spec, features="cls")
    enc = load_encoder(spec)
    assert (enc.features, enc.dim, enc.arch) == ("backbone", 512, "resnet18")


@pytest.mark.parametrize("kind", ["dino", "dinov2", "mocov3", "ibot", "mae"])
@pytest.mark.parametrize("what", ["missing", "random bytes", "no tensors"])
def test_not_a_checkpoint(kind: str, what: str, tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    if what == "random bytes":
        path.write_bytes(bytes(range(256)) * 40)
    elif what == "no tensors":
        torch.save({"epoch": 3, "args": training_args()}, path)
    with pytest.raises(CheckpointError) as info:
        load_encoder(f"{kind}:{path}")
    assert str(path) in str(info.value) and info.value.hint


def test_student_is_not_loaded(tmp_path: Path) -> None:
    """The teacher, not the (perturbed) student, of a training checkpoint."""
    vit = tiny_vit(25, width=192, heads=3, patch=16, grid=2, depth=1)
    head = randomise_all(DinoHead(192), 26)
    torch.save(dino_training_checkpoint(vit, head), tmp_path / "checkpoint.pth")
    student = copy.deepcopy(vit)
    student.load_state_dict(perturbed(vit.state_dict()))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = load_encoder(f"dino:{tmp_path / 'checkpoint.pth'}").model(x)
        assert torch.allclose(got, vit.pooled(x, "cls"), atol=1e-5)
        assert not torch.allclose(got, student.pooled(x, "cls"), atol=1e-2)


def test_cli_lists_and_describes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from pairmine.cli import cli

    listing = CliRunner().invoke(cli, ["encoders"], terminal_width=200)
    assert listing.exit_code == 0, listing.output
    assert "dinov2:PATH" in listing.output and "cls|mean|head" in listing.output
    spec = _dinov2_backbone(4, "mean")(tmp_path, monkeypatch).spec
    shown = CliRunner().invoke(cli, ["encoders", spec, "--features", "mean"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert "vit_small_patch14_reg4" in shown.output and "bicubic" in shown.output
    refused = CliRunner().invoke(cli, ["encoders", spec, "--features", "backbone"])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "not an option of dinov2" in refused.output
