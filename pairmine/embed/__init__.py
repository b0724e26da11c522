"""The embed stage: an image source through an encoder into a resumable embeddings store.

Its public API: :func:`embed`, its options :class:`EmbedConfig` and its :class:`EmbedResult`;
:class:`ShardJob` and :class:`ShardEncoder` are the unit ``stage.ShardWorker`` hands the
distributor (``pairmine.scale.executor``) for Ray. The package reads like the pipeline:
``reader`` (source →
decoded, cropped pixels in DataLoader workers), ``decode`` (JPEGs decoded on the device),
``runner`` (the unit and the encoder on its device), ``writer`` (shards and manifest),
``record`` (what determines the store's bytes), ``stage`` (the run).
"""

from __future__ import annotations

from pairmine.embed.config import EmbedConfig
from pairmine.embed.runner import ShardEncoder, ShardJob
from pairmine.embed.stage import EmbedResult, embed

__all__ = ["EmbedConfig", "EmbedResult", "ShardEncoder", "ShardJob", "embed"]
