"""pairmine: mine semantic positive pairs from image datasets, offline, for SSL training.

The stages are library functions; the ``pairmine`` CLI is a thin layer over them::

    import pairmine
    pairmine.embed("images/", "emb/", pairmine.EmbedConfig(encoder="cifar-resnet:resnet20.th"))
    pairmine.match("emb/", "pairs/", pairmine.MatchConfig(min_score=0.97, max_score=0.99))
    pairmine.export("pairs/", "spps/", fmt="webdataset")  # a config's fields as keywords

Each stage takes one config (``EmbedConfig``, ``MatchConfig``, ``ExportConfig``: frozen,
checked when built) or the same fields as keyword arguments.

Heavy libraries (torch, faiss) are imported inside the stages, so importing pairmine is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# The stage packages share their function's name (pairmine/embed/ exports embed): importing
# the functions here, eagerly, makes `pairmine.embed` the function for good. Stage modules
# import torch/faiss only inside functions, so this stays cheap.
from pairmine.embed import EmbedConfig, EmbedResult, embed
from pairmine.errors import (
    CheckpointError,
    ConfigError,
    EncoderError,
    InputError,
    PairmineError,
    SourceError,
    StoreError,
    TrainingError,
)
from pairmine.export import ExportConfig, ExportResult, VerifyResult, export, verify
from pairmine.ingest import ImportConfig, ImportResult, import_embeddings
from pairmine.lazy import lazy_getattr
from pairmine.match import MatchConfig, MatchResult, match
from pairmine.stores import Embeddings, Pairs, open_embeddings, open_pairs
from pairmine.version import __version__

# stage entry points, imported on first use so `import pairmine` stays light
_LAZY = {
    "load_encoder": ("pairmine.encoders", "load_encoder"),
    "list_encoders": ("pairmine.encoders", "list_encoders"),
    "open_source": ("pairmine.sources", "open_source"),
}

if TYPE_CHECKING:
    from pairmine.encoders import list_encoders, load_encoder
    from pairmine.sources import open_source


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "CheckpointError",
    "ConfigError",
    "EmbedConfig",
    "EmbedResult",
    "Embeddings",
    "EncoderError",
    "ExportConfig",
    "ExportResult",
    "ImportConfig",
    "ImportResult",
    "InputError",
    "MatchConfig",
    "MatchResult",
    "PairmineError",
    "Pairs",
    "SourceError",
    "StoreError",
    "TrainingError",
    "VerifyResult",
    "__version__",
    "embed",
    "export",
    "import_embeddings",
    "list_encoders",
    "load_encoder",
    "match",
    "open_embeddings",
    "open_pairs",
    "open_source",
    "verify",
]
