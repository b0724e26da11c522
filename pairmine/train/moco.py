"""MoCo-v2 (He et al. 2020; Chen et al. 2020): query encoder, momentum key encoder, queue.

Layout follows facebookresearch/moco so the checkpoint keys are the familiar ones:
``encoder_q.*`` / ``encoder_k.*`` are ResNets whose ``fc`` is the v2 MLP head
(``fc.0`` Linear, ``fc.1`` ReLU, ``fc.2`` Linear), plus the ``queue`` (C, K) and ``queue_ptr``.

Batch norm must not let a query find its key through batch statistics. MoCo shuffles the keys
across GPUs ("shuffle BN"). On one device this module does the same with ``bn_groups``
virtual devices: every BatchNorm2d computes statistics per group of the batch (a
:class:`SplitBatchNorm2d`), queries in fixed groups, keys shuffled before grouping and
unshuffled after, so a query's and its key's statistics come from different samples.
Under torch.distributed (torchrun) the keys are also shuffled across processes, as in MoCo.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from pairmine.encoders.heads import moco_v2_head

if TYPE_CHECKING:
    from torch import Tensor


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are per group: sample n is in group n % groups.

    Same parameters and buffers as nn.BatchNorm2d (checkpoints load into a plain ResNet). In
    eval mode, or with one group, it is exactly nn.BatchNorm2d. Equal to running the layer on
    each group ``x[g::groups]`` separately; the running statistics get the mean of the groups'.
    """

    def __init__(self, num_features: int, groups: int, eps: float = 1e-5,
                 momentum: float | None = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        g = self.groups
        if not self.training or g == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % g:
            raise ValueError(f"batch of {n} does not split into {g} batch-norm groups")
        assert self.running_mean is not None and self.running_var is not None
        # (N, C, H, W) -> (N/g, g*C, H, W): channel block j of row r is sample r*g + j, so
        # one batch_norm call normalises each group with its own statistics
        mean = self.running_mean.repeat(g)
        var = self.running_var.repeat(g)
        out = F.batch_norm(x.reshape(n // g, g * c, h, w), mean, var,
                           self.weight.repeat(g), self.bias.repeat(g), True,
                           0.1 if self.momentum is None else self.momentum, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(mean.view(g, c).mean(0))
            self.running_var.copy_(var.view(g, c).mean(0))
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
        return out.view(n, c, h, w)


def split_batch_norm(module: nn.Module, groups: int) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` (in place) by a SplitBatchNorm2d, same state."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm2d):
            split = SplitBatchNorm2d(child.num_features, groups, child.eps, child.momentum)
            split.load_state_dict(child.state_dict())
            setattr(module, name, split)
        else:
            split_batch_norm(child, groups)
    return module


def mlp_head(feat_dim: int, dim: int) -> nn.Sequential:
    """MoCo-v2's projection head: Linear(feat, feat) → ReLU → Linear(feat, dim) (the one
    definition, which the ``pairmine:`` and ``moco:`` encoders rebuild from checkpoints)."""
    return moco_v2_head(feat_dim, feat_dim, dim)


class MoCo(nn.Module):
    """MoCo-v2. ``forward(im_q, im_k)`` → (q, k), both (N, dim) and L2-normalised; the loss
    (pairmine.train.loss) uses ``queue``; the trainer calls ``enqueue(k)`` after the step."""

    queue: Tensor
    queue_ptr: Tensor

    def __init__(self, arch: str, *, dim: int = 128, k: int = 65536, m: float = 0.999,
                 bn_groups: int = 1) -> None:
        super().__init__()
        from pairmine.encoders.archs import build_backbone

        self.arch = arch
        self.dim = dim
        self.k = k
        self.m = m
        self.bn_groups = bn_groups
        backbone, self.feat_dim = build_backbone(arch)
        backbone.fc = mlp_head(self.feat_dim, dim)  # torchvision's forward ends with fc
        self.encoder_q = split_batch_norm(backbone, bn_groups)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False  # updated only by momentum
        self.register_buffer("queue", F.normalize(torch.randn(dim, k), dim=0))  # (C, K)
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self) -> None:
        """θ_k ← m θ_k + (1 − m) θ_q (parameters only, as in MoCo)."""
        params_k: list[Tensor] = list(self.encoder_k.parameters())
        params_q = [p.detach() for p in self.encoder_q.parameters()]
        torch._foreach_mul_(params_k, self.m)
        torch._foreach_add_(params_k, params_q, alpha=1.0 - self.m)

    def forward(self, im_q: Tensor, im_k: Tensor, gen: torch.Generator | None = None,
                im_k2: Tensor | None = None) -> tuple[Tensor, ...]:
        """(q, k): the query and key features. With ``im_k2`` (LeOCLR's second crop),
        (q, k, k2): both crops through the momentum encoder, each with its own key shuffle.
        ``gen`` (a CPU generator) draws the key shuffles; None = torch's global RNG."""
        q = F.normalize(self.encoder_q(im_q), dim=1)  # (N, C)
        with torch.no_grad():
            self.momentum_update()
            k = self.keys(im_k, gen)  # (N, C)
            if im_k2 is None:
                return q, k
            return q, k, self.keys(im_k2, gen)

    @torch.no_grad()
    def keys(self, im_k: Tensor, gen: torch.Generator | None = None) -> Tensor:
        """Key features with shuffled batch norm: shuffle, encode, unshuffle."""
        if _distributed():
            x, unshuffle = _shuffle_across_processes(im_k, gen)
            k = F.normalize(self.encoder_k(x), dim=1)
            return _unshuffle_across_processes(k, unshuffle)
        perm = torch.randperm(im_k.shape[0], generator=gen).to(im_k.device)
        k = F.normalize(self.encoder_k(im_k[perm]), dim=1)
        return k[torch.argsort(perm)]

    @torch.no_grad()
    def enqueue(self, k: Tensor) -> None:
        """Write this step's keys (from every process) over the oldest queue entries."""
        if _distributed():
            k = _gather(k)
        k = k.detach().to(self.queue.dtype)
        n, size = k.shape[0], self.queue.shape[1]
        if n >= size:  # a batch larger than the queue keeps its newest K keys
            self.queue.copy_(k[-size:].T)
            self.queue_ptr.zero_()
            return
        ptr = int(self.queue_ptr.item())
        idx = (ptr + torch.arange(n, device=self.queue.device)) % size
        self.queue[:, idx] = k.T
        self.queue_ptr[0] = (ptr + n) % size


# ---------------------------------------------------------------------------------------------
# shuffle BN across processes (MoCo's batch_shuffle_ddp), used only under torch.distributed


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def _gather(x: Tensor) -> Tensor:
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def _shuffle_across_processes(x: Tensor,
                              gen: torch.Generator | None) -> tuple[Tensor, Tensor]:
    import torch.distributed as dist

    local = x.shape[0]
    gathered = _gather(x)  # (world * local, ...)
    perm = torch.randperm(gathered.shape[0], generator=gen).to(x.device)
    dist.broadcast(perm, src=0)  # every process uses rank 0's permutation
    unshuffle = torch.argsort(perm)
    rank = dist.get_rank()
    mine = perm.view(dist.get_world_size(), local)[rank]
    return gathered[mine], unshuffle


@torch.no_grad()
def _unshuffle_across_processes(x: Tensor, unshuffle: Tensor) -> Tensor:
    import torch.distributed as dist

    local = x.shape[0]
    gathered = _gather(x)
    mine = unshuffle.view(dist.get_world_size(), local)[dist.get_rank()]
    return gathered[mine]
