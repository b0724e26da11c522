"""Projection heads of the self-supervised checkpoints, rebuilt from the checkpoint's shapes.

Each head replaces the trunk's ``fc``, as in the original code, so the checkpoint's ``fc.*``
keys load unchanged. Widths come from the weights, not from defaults, so a CIFAR run with a
smaller head loads as well as the published ImageNet one.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from pairmine.errors import CheckpointError


def _linear(state: Mapping[str, torch.Tensor], name: str) -> nn.Linear:
    out_dim, in_dim = state[f"{name}.weight"].shape  # (out, in)
    return nn.Linear(int(in_dim), int(out_dim), bias=f"{name}.bias" in state)


def _bn(state: Mapping[str, torch.Tensor], name: str) -> nn.BatchNorm1d:
    width = int(state[f"{name}.running_mean"].shape[0])
    return nn.BatchNorm1d(width, affine=f"{name}.weight" in state)


def moco_version(state: Mapping[str, torch.Tensor]) -> str | None:
    """``v2`` for the MLP head ``fc.0``/``fc.2``, ``v1`` for the linear ``fc``, else None."""
    if "fc.0.weight" in state and "fc.2.weight" in state:
        return "v2"
    if "fc.weight" in state:
        return "v1"
    return None


def moco_v2_head(feat_dim: int, hidden: int, dim: int, *, bias: bool = True) -> nn.Sequential:
    """MoCo-v2's projection head, the one definition (the trainer builds it, the loaders
    rebuild it): Linear(feat, hidden) → ReLU → Linear(hidden, dim), keys ``fc.0``/``fc.2``
    once it replaces the trunk's ``fc``."""
    return nn.Sequential(nn.Linear(feat_dim, hidden, bias=bias), nn.ReLU(inplace=True),
                         nn.Linear(hidden, dim, bias=bias))


def moco_head(state: Mapping[str, torch.Tensor], path: str) -> tuple[nn.Module, int]:
    """MoCo v1: Linear(feat, dim). MoCo v2: Linear(feat, hidden) - ReLU - Linear(hidden, dim)."""
    version = moco_version(state)
    if version == "v2":
        hidden, feat_dim = (int(x) for x in state["fc.0.weight"].shape)
        dim = int(state["fc.2.weight"].shape[0])
        return moco_v2_head(feat_dim, hidden, dim, bias="fc.0.bias" in state), dim
    if version == "v1":
        return _linear(state, "fc"), int(state["fc.weight"].shape[0])
    raise CheckpointError(f"{path} has no MoCo projection head (fc.weight, or fc.0/fc.2)",
                          "use --features backbone")


_SIMSIAM_KEYS = ("fc.0.weight", "fc.1.running_mean", "fc.3.weight", "fc.4.running_mean",
                 "fc.6.weight", "fc.7.running_mean")


def simsiam_projector(state: Mapping[str, torch.Tensor], path: str) -> tuple[nn.Module, int]:
    """SimSiam's projector: Linear-BN-ReLU-Linear-BN-ReLU-Linear-BN (the last BN has no affine
    parameters in the official code; both forms load)."""
    missing = [k for k in _SIMSIAM_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} has no SimSiam 3-layer projector: missing "
                              f"{', '.join(missing)}", "use --features backbone")
    head = nn.Sequential(
        _linear(state, "fc.0"), _bn(state, "fc.1"), nn.ReLU(inplace=True),
        _linear(state, "fc.3"), _bn(state, "fc.4"), nn.ReLU(inplace=True),
        _linear(state, "fc.6"), _bn(state, "fc.7"))
    return head, int(state["fc.6.weight"].shape[0])
