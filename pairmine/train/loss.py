"""The SePP-ID objective: InfoNCE (Eq. 1) against MoCo's queue, weighted as in Eq. 2.

Symbols follow the paper (section 3.2): ``u`` is the query view, ``v`` the positive key (a
second view of the same image, or the other image of a semantic positive pair ``v_m``),
``w_k`` the negatives, here MoCo's momentum queue, ``τ`` the temperature, ``λ`` the weight of
the semantic terms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


def info_nce_logits(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """Logits of Eq. 1 for MoCo: column 0 is the positive ``sim(u, v)``, then one column per
    queue entry. q, k: (N, C) L2-normalised; queue: (C, K) L2-normalised columns."""
    import torch

    # computed in fp32 even under autocast: 1/τ = 5..14 magnifies bf16 rounding of the dots
    q, k, queue = q.float(), k.float(), queue.float()
    l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)  # (N, 1)
    l_neg = torch.einsum("nc,ck->nk", q, queue)  # (N, K)
    return torch.cat([l_pos, l_neg], dim=1) / temperature  # (N, 1 + K)


def info_nce(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """Eq. 1 for each row: ``ℓ(u_i, v_i) = -log exp(u·v/τ) / (exp(u·v/τ) + Σ_k exp(u·w_k/τ))``.

    Returns (N,) per-sample losses; the positive is logit 0 (MoCo's "labels = zeros").
    """
    import torch
    import torch.nn.functional as F

    logits = info_nce_logits(q, k, queue, temperature)
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels, reduction="none")


def sepp_id_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float, semantic: Tensor,
                 lam: float) -> Tensor:
    """Eq. 2 on a batch of the merged dataset.

    Row i is an *instance* item (two views of one image: a ``ℓ(u, v)`` term) or a *semantic*
    item (``semantic[i]``: an anchor's view against its positive's view, a ``λ ℓ(u, v_m)``
    term). The sum is divided by the number of instance rows, the N of Eq. 2::

        loss = 1/N_inst [ Σ_instance ℓ(u_i, v_i) + λ Σ_semantic ℓ(u_i, v_m) ]

    so a batch holding instances and all their semantic items gives Eq. 2 exactly, λ = 0 gives
    vanilla MoCo-v2's loss on the instance rows, and summed over an epoch (weighted by each
    batch's N_inst) it is N × Eq. 2 over the whole dataset (docs/training.md).
    """
    return merged_eq2(info_nce(q, k, queue, temperature), semantic, lam)


def merged_eq2(losses: Tensor, semantic: Tensor, lam: float) -> Tensor:
    """Eq. 2's weighting of per-row losses (N,): instance rows weigh 1, semantic rows λ, the
    sum divided by the number of instance rows (:func:`sepp_id_loss`)."""
    semantic = semantic.to(losses.device).bool()
    instance_sum = losses.masked_fill(semantic, 0.0).sum()
    semantic_sum = losses.masked_fill(~semantic, 0.0).sum()
    n_instance = (~semantic).sum().clamp(min=1)  # a batch of pairs only: avoid 0/0
    return (instance_sum + lam * semantic_sum) / n_instance


def eq2(instance_losses: Tensor, semantic_losses: Tensor, lam: Tensor) -> Tensor:
    """Eq. 2 as printed: ``1/N Σ_i [ℓ(u_i, v_i) + Σ_m λ_im ℓ(u_i, v_m)]``.

    instance_losses: (N,); semantic_losses, lam: (N, M), with λ_im = 0 where instance i has
    fewer than M semantic positives. The reference the merged form is tested against.
    """
    return (instance_losses + (lam * semantic_losses).sum(dim=1)).mean()
