"""The import stage: precomputed embeddings (clip-retrieval / LAION folders, Parquet files
with an embedding column, a ``.npy`` matrix) into a normal embeddings store.

Its public API: :func:`import_embeddings`, its options :class:`ImportConfig` and its
:class:`ImportResult`. The package reads like the run: ``layouts`` (the contract of a source
layout and its registry, ``LAYOUTS``), one module per layout (``clip_retrieval``,
``parquet``, ``npy``), ``stage`` (shards cut by global row, checked and written). Named
``ingest`` because ``import`` is a Python keyword.
"""

from __future__ import annotations

from pairmine.ingest.config import ImportConfig
from pairmine.ingest.layouts import LAYOUTS, ImportSource, Layout, register_layout
from pairmine.ingest.stage import ImportResult, import_embeddings

__all__ = ["LAYOUTS", "ImportConfig", "ImportResult", "ImportSource", "Layout",
           "import_embeddings", "register_layout"]
