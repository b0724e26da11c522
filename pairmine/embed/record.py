"""``EmbedRecord``: what determines the bytes of an embeddings store.

Written to the manifest (``config``) and the resume identity of a run: a run resumes a store
only when its record is the same. It is the :class:`~pairmine.embed.config.EmbedConfig` with
what the run resolved (the precision, the source's absolute spec and kind, the encoder's
features, the real root), less what changes no byte (workers, device, Ray). Its fields and
their order are the manifest's ``config`` keys: changing them changes every store.
"""

from __future__ import annotations

from dataclasses import dataclass

from pairmine.images import DEFAULT_MAX_IMAGE_PIXELS
from pairmine.sources.files import DEFAULT_MAX_IMAGE_BYTES


@dataclass(frozen=True)
class EmbedRecord:
    """Everything that determines the bytes of the store (recorded in the manifest)."""

    source: str
    source_kind: str | None
    labels: bool
    encoder: str
    arch: str | None
    features: str | None
    dtype: str
    shard_size: int
    batch_size: int
    precision: str  # resolved
    draft: bool
    decode: str = "cpu"
    # which images are read at all: over a cap, or outside root, an image is an error entry
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    root: str | None = None  # resolved (symlinks followed)
