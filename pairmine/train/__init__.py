"""The reference trainer: MoCo-v2 with the SePP-ID loss (Eq. 2), on sources or combined exports.

``pairmine.train.train(DATA, OUT, arch=..., epochs=...)``; the modules: ``moco`` (model,
momentum encoder, queue, shuffle BN), ``loss`` (Eq. 1 and Eq. 2), ``augment`` (MoCo-v2
augmentations), ``data`` (training items), ``trainer`` (loop, checkpoints, resume, logs).
Importing this package does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pairmine.train.trainer import TrainConfig, TrainResult


def train(data: Any, out: Any, **kwargs: Any) -> TrainResult:
    """See :func:`pairmine.train.trainer.train`."""
    from pairmine.train.trainer import train as _train

    return _train(data, out, **kwargs)


def __getattr__(name: str) -> Any:
    if name in ("TrainConfig", "TrainResult", "load_training_checkpoint"):
        from pairmine.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'pairmine.train' has no attribute {name!r}")


__all__ = ["TrainConfig", "TrainResult", "train"]
