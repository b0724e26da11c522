"""Our Vision Transformer: the pre-norm ViT that DINO, DINOv2, iBOT, MAE and MoCo v3 share.

Patch embedding (a stride-``patch`` convolution), a CLS token, optional register tokens
(DINOv2), learned position embeddings resized to the input's token grid, pre-norm blocks
(LayerNorm, multi-head attention through ``scaled_dot_product_attention``, LayerNorm, MLP or
SwiGLU, each residual branch optionally scaled by LayerScale), and a final LayerNorm.

Parameter names are timm's and DINO's (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.{i}.norm1``, ``blocks.{i}.attn.qkv``, ``blocks.{i}.ls1.gamma``, ``norm``, ...), which
DINOv2's released backbones also use, so each project's state dict maps onto this module by
a few renames (``pairmine.encoders.vit_layouts``). The projects differ in how they resize the
position embeddings; :class:`PosInterpolation` carries each one's rule.

This module imports torch at import time: the registry imports it only inside a loader.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class PosInterpolation:
    """How the stored position embeddings (a ``grid`` x ``grid`` map) are resized, bicubic,
    to another token grid. ``offset > 0`` is DINO's rule (kept by iBOT and DINOv2 without
    registers): ``scale_factor = (rows + offset) / grid`` rather than an output size, a
    work-around for a rounding bug that changes the sampled positions. ``antialias`` is
    DINOv2-with-registers' rule (size mode, antialiased)."""

    offset: float = 0.0
    antialias: bool = False


@dataclass(frozen=True)
class ViTConfig:
    width: int
    depth: int
    heads: int
    patch: int
    grid: int  # side of the token grid the position embeddings were trained on
    mlp_hidden: int
    registers: int = 0
    swiglu: bool = False  # DINOv2 ViT-g: SwiGLU feed-forward (w12, w3) instead of fc1/fc2
    layerscale: bool = False  # DINOv2: ls1.gamma / ls2.gamma
    final_norm: bool = True  # False for MAE fine-tuned with global pooling (fc_norm instead)
    fc_norm: bool = False  # LayerNorm on the mean of the patch tokens (MAE fine-tuned)
    eps: float = 1e-6  # every project's LayerNorm eps
    pos: PosInterpolation = field(default_factory=PosInterpolation)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.proj(x)
        return out.flatten(2).transpose(1, 2)  # (N, rows * cols, width)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, width = x.shape
        qkv = self.qkv(x).reshape(n, tokens, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, tokens, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        merged: torch.Tensor = self.proj(out.transpose(1, 2).reshape(n, tokens, width))
        return merged


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(self.act(self.fc1(x)))
        return out


class SwiGLU(nn.Module):
    """DINOv2's SwiGLU feed-forward: ``w3(silu(x1) * x2)`` with ``x1, x2 = w12(x)``."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(width, 2 * hidden)
        self.w3 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        out: torch.Tensor = self.w3(F.silu(x1) * x2)
        return out


class LayerScale(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.attn = Attention(cfg.width, cfg.heads)
        self.ls1: nn.Module = LayerScale(cfg.width) if cfg.layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.mlp: nn.Module = (SwiGLU(cfg.width, cfg.mlp_hidden) if cfg.swiglu
                               else Mlp(cfg.width, cfg.mlp_hidden))
        self.ls2: nn.Module = LayerScale(cfg.width) if cfg.layerscale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        out: torch.Tensor = x + self.ls2(self.mlp(self.norm2(x)))
        return out


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        if cfg.width % cfg.heads:
            raise ValueError(f"width {cfg.width} is not a multiple of {cfg.heads} heads")
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.patch, cfg.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.grid * cfg.grid, cfg.width))
        self.register_tokens = (nn.Parameter(torch.zeros(1, cfg.registers, cfg.width))
                                if cfg.registers else None)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm: nn.Module = (nn.LayerNorm(cfg.width, eps=cfg.eps) if cfg.final_norm
                                else nn.Identity())
        self.fc_norm = nn.LayerNorm(cfg.width, eps=cfg.eps) if cfg.fc_norm else None

    def position_embeddings(self, rows: int, cols: int) -> torch.Tensor:
        """``pos_embed`` for a ``rows`` x ``cols`` token grid: (1, 1 + rows * cols, width).
        The CLS entry is kept; the patch entries are resized bicubically by the project's
        rule. The stored grid is used as it is when it fits (as every project does)."""
        grid, width = self.cfg.grid, self.cfg.width
        if (rows, cols) == (grid, grid):
            return self.pos_embed
        patch_pos = self.pos_embed[:, 1:].reshape(1, grid, grid, width).permute(0, 3, 1, 2)
        rule = self.cfg.pos
        if rule.offset:
            resized = F.interpolate(patch_pos.float(), mode="bicubic", antialias=rule.antialias,
                                    scale_factor=((rows + rule.offset) / grid,
                                                  (cols + rule.offset) / grid))
        else:
            resized = F.interpolate(patch_pos.float(), size=(rows, cols), mode="bicubic",
                                    antialias=rule.antialias)
        if resized.shape[-2:] != (rows, cols):  # cannot happen for offsets in (0, 1)
            raise ValueError(f"position embeddings resized to {tuple(resized.shape[-2:])}, "
                             f"not {(rows, cols)}")
        resized = resized.permute(0, 2, 3, 1).reshape(1, rows * cols, width)
        return torch.cat((self.pos_embed[:, :1], resized.to(self.pos_embed.dtype)), dim=1)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the last block and the final norm: (N, 1 + registers + patches,
        width), CLS first, then the registers, then the patches in row-major order."""
        rows, cols = x.shape[-2] // self.cfg.patch, x.shape[-1] // self.cfg.patch
        t = self.patch_embed(x)
        t = torch.cat((self.cls_token.expand(t.shape[0], -1, -1), t), dim=1)
        t = t + self.position_embeddings(rows, cols)
        if self.register_tokens is not None:  # DINOv2: after the position embeddings, none own
            t = torch.cat((t[:, :1], self.register_tokens.expand(t.shape[0], -1, -1), t[:, 1:]),
                          dim=1)
        for block in self.blocks:
            t = block(t)
        out: torch.Tensor = self.norm(t)
        return out

    def pooled(self, x: torch.Tensor, pooling: str) -> torch.Tensor:
        """``cls``: the CLS token after the final norm. ``mean``: the mean of the patch tokens
        (registers excluded) after the final norm, or, for a model with ``fc_norm`` (MAE
        fine-tuned with global pooling), ``fc_norm`` of the mean of the un-normed tokens."""
        t = self.tokens(x)
        if pooling == "cls":
            return t[:, 0]
        if pooling != "mean":
            raise ValueError(f"unknown pooling {pooling!r}")
        mean = t[:, 1 + self.cfg.registers:].mean(dim=1)
        return self.fc_norm(mean) if self.fc_norm is not None else mean


class ViTFeatures(nn.Module):
    """The encoder module: a ViT's pooled token, then the projection head if there is one."""

    def __init__(self, vit: VisionTransformer, pooling: str, head: nn.Module | None = None
                 ) -> None:
        super().__init__()
        self.vit = vit
        self.pooling = pooling
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.vit.pooled(x, self.pooling)
        return self.head(feats) if self.head is not None else feats
