"""The reference trainer: MoCo-v2 with the SePP-ID loss (Eq. 2), on sources or combined exports.

``pairmine.train.train(DATA, OUT, TrainConfig(arch=..., epochs=...))``, or the same fields as
keyword arguments; the modules: ``moco`` (model, momentum encoder, queue, shuffle BN),
``loss`` (Eq. 1 and Eq. 2), ``augment`` (MoCo-v2 augmentations), ``data`` (training items),
``trainer`` (config, loop, checkpoints, resume, logs). Importing this package does not
import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pairmine.progress import Progress
    from pairmine.train.trainer import TrainConfig, TrainResult


def train(data: str | Path, out: str | Path, config: TrainConfig | None = None, *,
          resume: bool = False, stop_after: int | None = None,
          progress: Progress | None = None, **options: Any) -> TrainResult:
    """Train MoCo-v2 (DATA = an image source) or SePP-ID (DATA = a combined export) into OUT.

    ``config`` is a :class:`TrainConfig`; its fields may also be given as keyword arguments,
    which override those of ``config``: ``train(data, out, epochs=1)`` is
    ``train(data, out, TrainConfig(epochs=1))``. An unknown field or a bad value is a
    ``ConfigError``. ``resume`` continues from ``OUT/checkpoint-last.pt``; ``stop_after``
    ends this call after that many epochs (a later ``resume`` goes on). See
    :func:`pairmine.train.trainer.train`.
    """
    from pairmine.train.trainer import train as _train

    return _train(data, out, config, resume=resume, stop_after=stop_after, progress=progress,
                  **options)


def __getattr__(name: str) -> Any:
    if name in ("TrainConfig", "TrainResult", "load_training_checkpoint"):
        from pairmine.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'pairmine.train' has no attribute {name!r}")


__all__ = ["TrainConfig", "TrainResult", "train"]
