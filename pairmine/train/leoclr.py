"""LeOCLR (Alkhalefi, Leontidis, Zhong, TMLR 2024): the original image in the query branch.

Symbols of its Algorithm 1: ``X`` the original image (resized to the crop size, never
cropped), ``X¹``, ``X²`` two random resized crops of it; all three get the same kind of random
colour, grayscale, blur and flip. ``X`` goes through the query encoder (``q = f_q(X)``, the
gradient branch), ``X¹`` and ``X²`` through the momentum encoder (``k¹``, ``k²``), and

    L = ℓ(X, X¹) + ℓ(X, X²)

each ℓ MoCo-v2's InfoNCE against the queue (:func:`pairmine.train.loss.info_nce`); the two crops
are never attracted to each other. Which keys join the queue is not published: ``k1`` (only
``k¹``) or ``both`` (``k¹`` and ``k²``, the default), recorded in the run's config.

With SPPS (pairmine's own extension, no paper has it): a semantic item (a, b) takes a's
original as ``X`` and two crops of b as ``X¹``, ``X²``; its ``L`` weighs λ, as the semantic
terms of SePP-ID's Eq. 2 (:func:`pairmine.train.loss.merged_eq2`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

QUEUE_CHOICES = ("k1", "both")


def leoclr_losses(q: Tensor, k1: Tensor, k2: Tensor, queue: Tensor,
                  temperature: float) -> Tensor:
    """Per-row ``ℓ(X, X¹) + ℓ(X, X²)`` (N,): q = f_q(X); k1, k2 the momentum keys of the crops;
    queue (C, K). All L2-normalised."""
    from pairmine.train.loss import info_nce

    return info_nce(q, k1, queue, temperature) + info_nce(q, k2, queue, temperature)


def leoclr_loss(q: Tensor, k1: Tensor, k2: Tensor, queue: Tensor, temperature: float,
                semantic: Tensor, lam: float) -> Tensor:
    """The batch loss: the mean of ``L`` over the instance rows, semantic rows weighted λ
    (with no semantic rows: the mean of ``ℓ(X, X¹) + ℓ(X, X²)``, Algorithm 1's loss)."""
    from pairmine.train.loss import merged_eq2

    return merged_eq2(leoclr_losses(q, k1, k2, queue, temperature), semantic, lam)


def keys_to_enqueue(k1: Tensor, k2: Tensor, which: str) -> Tensor:
    """The keys that join the queue after the step: ``k1`` → k¹; ``both`` → k¹ then k²."""
    import torch

    if which not in QUEUE_CHOICES:
        raise ValueError(f"leoclr queue must be one of {QUEUE_CHOICES}, not {which!r}")
    return k1 if which == "k1" else torch.cat([k1, k2], dim=0)
