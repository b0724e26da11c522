"""``ExportConfig``: the options of the export stage, the one declaration the API
(``pairmine.export(pairs, out, ExportConfig(...))``), the CLI options (``pairmine export
--help``) and the validation come from.

What the user asks and what the bytes depend on differ in two defaults (``shuffle``: on for
combined shard exports; ``max_shard_bytes``: meaningless without shards), so the run works
with :meth:`ExportConfig.resolved`, and the manifest records :meth:`ExportConfig.recorded`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from pairmine import stores
from pairmine.config import check_int, setting
from pairmine.errors import ConfigError
from pairmine.export.formats import EXPORT_FORMATS
from pairmine.export.shards import RECORD, ShardLimits
from pairmine.scale.options import ScaleSettings
from pairmine.sources.roots import ImageRoots

DEFAULT_SHARD_SIZE = 10_000
DEFAULT_MAX_SHARD_BYTES = 1 << 30  # WebDataset's advice: shards of a few hundred MB to ~1 GB


def format_names() -> list[str]:
    """The registered export formats (read when first needed, so plugins appear in --help)."""
    return EXPORT_FORMATS.names()


@dataclass(frozen=True, kw_only=True)
class ExportConfig(ScaleSettings):
    """The options of ``pairmine.export``: the format, which samples and in what order, how
    the shards are cut, what to do with sources that changed since embed, and (the inherited
    Ray fields) where the shards are written."""

    fmt: str = setting(
        "webdataset", flag="--format", choices=format_names,
        help="webdataset: tar shards of original bytes + spps.parquet; parquet: "
             "spps.parquet only, pointing at the original files.")
    combined: bool = setting(
        False, help="Also write every image of the embeddings store as a single-image "
                    "sample: the paper's merged training set.")
    shard_size: int = setting(DEFAULT_SHARD_SIZE, minimum=1, help="Most samples per shard.")
    max_shard_bytes: int | None = setting(
        DEFAULT_MAX_SHARD_BYTES, kind="size", metavar="B",
        help="Most bytes per tar (K/M/G suffixes; 'none' for no limit).")
    shuffle: bool | None = setting(
        None, flag="--shuffle/--no-shuffle",
        help="Shuffle the sample order with --seed [default: on with --combined].")
    seed: int = setting(0, help="Seed of the shuffle.")
    skip_missing: bool = setting(
        False, help="Leave out samples whose source image changed or vanished since embed "
                    "(listed in the manifest) instead of failing.")
    image_root: tuple[str, ...] = setting(
        (), kind="list", metavar="OLD=NEW",
        help="The images embed read under the folder OLD are now under NEW (moved or mounted "
             "elsewhere): read them there, their hashes still checked. Repeatable.")
    license: str = setting(
        "other", metavar="ID",
        help="License of the dataset card (README.md): a Hugging Face license id, e.g. "
             "cc-by-4.0; 'other' says the images keep their source dataset's license.")

    def __post_init__(self) -> None:
        super().__post_init__()
        # everything is checked before the stage touches its output: bad options write nothing
        stores.check_seed(self.seed)
        if self.fmt not in EXPORT_FORMATS:
            raise ConfigError(f"unknown export format {self.fmt!r}",
                              f"choose one of: {', '.join(EXPORT_FORMATS.names())}")
        check_int("--shard-size", self.shard_size, minimum=1)
        if not isinstance(self.license, str) or not self.license.strip() \
                or any(c in self.license for c in "\n:#"):
            raise ConfigError(f"--license {self.license!r} is not a license id",
                              "give a Hugging Face license id, e.g. cc-by-4.0, or 'other'")
        check_int("--max-shard-bytes", self.max_shard_bytes, optional=True)
        if self.max_shard_bytes is not None and self.max_shard_bytes < 2 * RECORD:
            raise ConfigError(f"--max-shard-bytes {self.max_shard_bytes} is too small",
                              f"give at least {2 * RECORD} bytes (tars grow in 10 KiB records)")
        roots = self.image_roots()
        if roots.moves and not self.shards:
            raise ConfigError("--image-root reads moved images into tar shards; a parquet "
                              "export points at the paths embed recorded",
                              "use --format webdataset, or re-run embed where the images are "
                              "now")
        if self.shuffle and not self.shards:
            raise ConfigError("--shuffle orders shard samples; spps.parquet is always ordered "
                              "by pair id", "drop --shuffle, or use --format webdataset")

    def image_roots(self) -> ImageRoots:
        """``image_root`` parsed (a bad OLD=NEW is a ConfigError)."""
        return ImageRoots.parse(self.image_root)

    @property
    def shards(self) -> bool:
        """The format writes tar shards (so samples can be shuffled and shards cut by size)."""
        return EXPORT_FORMATS.get(self.fmt).shards

    def resolved(self) -> ExportConfig:
        """The config the run uses: ``shuffle`` decided (on for combined shard exports), no
        byte limit for a format without shards."""
        return replace(self,
                       shuffle=(self.combined and self.shards) if self.shuffle is None
                       else self.shuffle,
                       max_shard_bytes=self.max_shard_bytes if self.shards else None)

    def limits(self) -> ShardLimits:
        """Where a shard ends: its sample count, and (resolved: with shards) its tar bytes."""
        return ShardLimits(samples=self.shard_size, bytes=self.max_shard_bytes)

    def recorded(self) -> dict[str, Any]:
        """What determines the export's bytes, as its manifest records it (and its resume
        identity): the resolved values, in the manifest's key order. ``skip_missing`` is
        recorded beside it; the Ray fields say where shards are written, not what they hold."""
        r = self.resolved()
        return {"format": r.fmt, "combined": r.combined, "shuffle": r.shuffle, "seed": r.seed,
                "shard_size": r.shard_size, "max_shard_bytes": r.max_shard_bytes}
