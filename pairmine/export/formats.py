"""The export formats: one object per format that writes, verifies and opens its exports.

An export format is everything pairmine knows about one layout of an SPPS export: how
``export`` writes it (``write``), how ``verify`` re-reads and checks it (``verify``), and how
the datasets for trainers read its samples (``open``). The registry ``EXPORT_FORMATS`` holds
the built-ins (``webdataset``, ``parquet``) and plugins (entry points in the group
``pairmine.export_formats``); ``--format`` takes its choices from it.

To add a format: subclass ``ExportFormat``, implement the three methods, register the object
here (or through an entry point). The implementations live with the code they share (the
writers in ``run``, the checks in ``verification``, the readers in ``pairmine.datasets``); the
methods import them when called, so this module stays light.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import ConfigError, StoreError
from pairmine.registry import Registry

if TYPE_CHECKING:
    from pairmine.datasets import ExportItems
    from pairmine.export.config import ExportConfig
    from pairmine.export.fetch import Fetcher
    from pairmine.export.plan import Plan
    from pairmine.export.run import Written
    from pairmine.export.verification import VerifyResult
    from pairmine.progress import Progress
    from pairmine.stores.export import Export


class ExportFormat(ABC):
    """One export layout. ``shards``: it writes tar shards of the original bytes (so it can
    shuffle samples and be streamed); ``cache_bytes``: verified images the writer keeps for
    reuse while reading the sources."""

    name: str
    help: str
    shards: bool
    cache_bytes: int

    @abstractmethod
    def write(self, out: Path, plan: Plan, fetcher: Fetcher, config: ExportConfig,
              skip_missing: bool, progress: Progress) -> Written:
        """Write the export's data files into ``out`` (the manifest is written by the run);
        ``config`` is resolved (``ExportConfig.resolved``)."""

    @abstractmethod
    def verify(self, out: Path, manifest: dict[str, Any], result: VerifyResult,
               progress: Progress) -> None:
        """Re-read the export at ``out``; record every mismatch in ``result.problems``."""

    @abstractmethod
    def open(self, out: Path, manifest: dict[str, Any], kinds: tuple[str, ...]) -> ExportItems:
        """The samples of ``kinds`` (``pair``, ``image``), readable by index."""


class WebDatasetFormat(ExportFormat):
    name = "webdataset"
    help = "tar shards holding the original bytes (+ spps.parquet and per-shard indexes)"
    shards = True

    @property
    def cache_bytes(self) -> int:  # type: ignore[override]
        from pairmine.export.fetch import DEFAULT_CACHE_BYTES

        return DEFAULT_CACHE_BYTES

    def write(self, out: Path, plan: Plan, fetcher: Fetcher, config: ExportConfig,
              skip_missing: bool, progress: Progress) -> Written:
        from pairmine.export.run import write_webdataset

        return write_webdataset(out, plan, fetcher, config, skip_missing, progress)

    def verify(self, out: Path, manifest: dict[str, Any], result: VerifyResult,
               progress: Progress) -> None:
        from pairmine.export.verification import verify_webdataset

        verify_webdataset(out, manifest, result, progress)

    def open(self, out: Path, manifest: dict[str, Any], kinds: tuple[str, ...]) -> ExportItems:
        from pairmine.datasets import ShardItems

        return ShardItems(_export(out, manifest), kinds)


class ParquetFormat(ExportFormat):
    name = "parquet"
    help = "spps.parquet only: one row per pair pointing at the original files"
    shards = False
    cache_bytes = 0  # each image is checked once

    def write(self, out: Path, plan: Plan, fetcher: Fetcher, config: ExportConfig,
              skip_missing: bool, progress: Progress) -> Written:
        from pairmine.export.run import write_parquet

        return write_parquet(out, plan, fetcher, config, skip_missing, progress)

    def verify(self, out: Path, manifest: dict[str, Any], result: VerifyResult,
               progress: Progress) -> None:
        from pairmine.export.verification import verify_parquet

        verify_parquet(out, manifest, result, progress)

    def open(self, out: Path, manifest: dict[str, Any], kinds: tuple[str, ...]) -> ExportItems:
        from pairmine.datasets import TableItems

        return TableItems(_export(out, manifest), kinds)


def _export(out: Path, manifest: dict[str, Any]) -> Export:
    """The export at ``out`` through the store's reader (``manifest`` already read)."""
    from pairmine.stores.export import Export, ExportManifest

    return Export(path=out, manifest=ExportManifest.from_json(manifest, out))


def _registry() -> Registry[ExportFormat]:
    registry: Registry[ExportFormat] = Registry(
        "export_formats", name_of=lambda f: f.name, help_of=lambda f: f.help,
        error=ConfigError, what="export format")
    registry.register(WebDatasetFormat())
    registry.register(ParquetFormat())
    return registry


EXPORT_FORMATS = _registry()


def export_format(manifest: dict[str, Any], out: Path) -> ExportFormat:
    """The format of the export at ``out``, from its manifest, or a clear error."""
    name = str(manifest.get("export_format"))
    if name not in EXPORT_FORMATS:
        raise StoreError(f"{out} is an export of unknown format {name!r}",
                         f"known formats: {', '.join(EXPORT_FORMATS.names())}; a newer "
                         "pairmine (or the plugin that wrote it) may read it")
    return EXPORT_FORMATS.get(name)
