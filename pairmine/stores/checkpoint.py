"""The checkpoint store: files ``pairmine train`` writes into its OUT directory, and the one
reader of PyTorch checkpoint files (training resume, the ``pairmine:`` encoder and every
encoder that reads a foreign ``torch.save`` file use it).

A training checkpoint is a ``torch.save`` dict of tensors and plain types only, so it loads
with ``weights_only=True``: ``format`` (``CHECKPOINT_FORMAT``), ``version``, ``arch``,
``epoch``/``epochs``, ``config``, ``preprocess`` (how embed must feed the encoder),
``state_dict`` (``encoder_q.*``, ``encoder_k.*``, the queue), ``optimizer``, ``rng``,
``data``, ``history``. It is written under a temporary name and renamed (``atomic_path``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pairmine.errors import CheckpointError

CHECKPOINT_FORMAT = "pairmine/moco-checkpoint"
CHECKPOINT_VERSION = 1
LAST_CHECKPOINT = "checkpoint-last.pt"  # in the training OUT directory


def load_torch_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one clear error for a missing,
    truncated or foreign file."""
    import argparse
    import pickle

    import torch

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist", "check the path")
    if p.is_dir():
        raise CheckpointError(f"checkpoint {p} is a directory", "give the checkpoint file")
    try:
        # training checkpoints (DINO, iBOT, MAE) store their argparse.Namespace under 'args':
        # a plain attribute bag, safe to rebuild; everything else stays weights-only
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError,
            AttributeError, ImportError, KeyError, IndexError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{p} is not a loadable PyTorch checkpoint: {first[:200]}",
                              "give a complete file saved with torch.save (weights only)"
                              ) from None


@dataclass(frozen=True)
class TrainingCheckpoint:
    """A pairmine training checkpoint, checked: ``state`` is the whole dict as saved."""

    path: Path
    state: dict[str, Any]

    @property
    def arch(self) -> str:
        return str(self.state["arch"])

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])

    @property
    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = self.state["config"]
        return config

    @property
    def state_dict(self) -> dict[str, Any]:
        tensors: dict[str, Any] = self.state["state_dict"]
        return tensors


# the records every reader relies on, checked on open
_RECORDS: tuple[tuple[str, type], ...] = (
    ("arch", str), ("epoch", int), ("epochs", int), ("config", dict), ("preprocess", dict),
    ("state_dict", dict))


def read_training_checkpoint(path: str | os.PathLike[str]) -> TrainingCheckpoint:
    """The training checkpoint at ``path`` (a file, or a training OUT directory: its last
    checkpoint), validated, or one CheckpointError saying what is wrong."""
    p = Path(path)
    if p.is_dir():
        p = p / LAST_CHECKPOINT
    obj = load_torch_file(p)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{p} is not a pairmine training checkpoint",
                              "give OUT/checkpoint-last.pt of `pairmine train`, or use the "
                              "encoder kind that wrote it (e.g. moco:PATH)")
    version = obj.get("version", 0)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{p} was written by a newer pairmine (checkpoint version "
                              f"{version!r})", "upgrade pairmine")
    for key, kind in _RECORDS:
        if not isinstance(obj.get(key), kind):
            raise CheckpointError(f"{p} is a damaged pairmine training checkpoint: {key!r} "
                                  "is missing or of the wrong type",
                                  "use another checkpoint of the run (checkpoint-EEEE.pt)")
    return TrainingCheckpoint(path=p, state=obj)
