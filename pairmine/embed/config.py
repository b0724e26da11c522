"""``EmbedConfig``: the options of the embed stage, the one declaration the API, the CLI
options (``pairmine embed --help``) and the validation come from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pairmine.config import check_choice, check_device, check_int, setting
from pairmine.encoders.base import FEATURE_OPTIONS
from pairmine.errors import ConfigError
from pairmine.images import DEFAULT_MAX_IMAGE_PIXELS
from pairmine.runtime import PRECISIONS
from pairmine.scale.options import ScaleSettings
from pairmine.sources.base import check_root
from pairmine.sources.files import DEFAULT_MAX_IMAGE_BYTES

DTYPES = ("float16", "float32")
DECODES = ("cpu", "device")  # where JPEGs are decoded: DataLoader workers, or the device


def source_kinds() -> list[str]:
    """The registered source kinds (read when first needed: ``--help`` imports no source)."""
    from pairmine.sources import SOURCES

    return SOURCES.names()


@dataclass(frozen=True, kw_only=True)
class EmbedConfig(ScaleSettings):
    """The options of ``pairmine.embed``: which encoder, how images are read and decoded,
    where and in what precision the model runs, how the store is written and sharded."""

    encoder: str = setting(
        metavar="SPEC",
        help="NAME:ARGS, e.g. cifar-resnet:resnet20.th or moco:ckpt.pth.tar "
             "(`pairmine encoders` lists them).")
    arch: str | None = setting(
        None, help="Architecture override for the checkpoint "
                   "(e.g. resnet18 for a MoCo checkpoint).")
    features: str | None = setting(
        None, choices=FEATURE_OPTIONS,
        help="head = projection-head (or classifier) output, backbone = pooled trunk; "
             "for ViTs cls = CLS token, mean = mean patch token. Each kind accepts its "
             "own (`pairmine encoders` lists them); default: the kind's own (head for "
             "MoCo, cls for DINO).")
    source_kind: str | None = setting(
        None, choices=source_kinds, help="Force the source kind instead of detecting it.")
    labels: bool = setting(True, negate="--no-labels",
                           help="Ignore class sub-folders / label columns.")
    batch_size: int = setting(256, minimum=1,
                             help="Images per encoder batch (never across a shard).")
    workers: int | None = setting(
        None, minimum=0, help="Decode workers [default: all cores on CUDA, half of them on CPU].")
    device: str = setting("auto", kind="device",
                         help="Where the encoder runs [auto: CUDA when there is one].")
    precision: str = setting(
        "auto", choices=PRECISIONS,
        help="Encoder arithmetic; auto = bf16 on CUDA, fp32 on CPUs without native bf16, and on "
             "a CPU with native bf16 whichever a timed trial of this encoder finds faster "
             "(bf16 only if under 0.9x fp32's time; a resumed run keeps its choice).")
    dtype: str = setting("float16", choices=DTYPES,
                         help="Storage type of the L2-normalised embeddings.")
    shard_size: int = setting(65536, minimum=1,
                              help="Source images per shard (the unit of resume).")
    draft: bool = setting(True, negate="--no-draft",
                          help="Decode JPEGs at full size (no DCT scaling).")
    decode: str = setting(
        "cpu", choices=DECODES,
        help="Where JPEGs are decoded: DataLoader workers (Pillow), or the compute "
             "device (nvJPEG on CUDA; others fall back to the CPU path).")
    max_image_bytes: int = setting(
        DEFAULT_MAX_IMAGE_BYTES, minimum=1,
        help="Largest image file read; a bigger one is an error entry, never read into memory.")
    max_image_pixels: int = setting(
        DEFAULT_MAX_IMAGE_PIXELS, minimum=1,
        help="Most pixels an image may declare (Pillow's own limit); more is a decompression "
             "bomb: an error entry, never decoded.")
    # setting() declares the field; its default (None) is immutable
    root: str | Path | None = setting(  # noqa: RUF009
        None, kind="path", metavar="DIR",
        help="Every image file must resolve (after symlinks) inside DIR, else it is an "
             "error entry: for file lists you did not write.")

    def __post_init__(self) -> None:
        super().__post_init__()
        # everything is checked before the stage touches its output: bad input writes nothing
        if not isinstance(self.encoder, str) or not self.encoder:
            raise ConfigError(f"--encoder {self.encoder!r} is not an encoder spec",
                              "give NAME:ARGS (`pairmine encoders` lists them)")
        if self.features is not None:
            check_choice("--features", self.features, FEATURE_OPTIONS)
        if self.source_kind is not None:
            check_choice("--source-kind", self.source_kind, source_kinds())
        check_int("--batch-size", self.batch_size, minimum=1)
        check_int("--workers", self.workers, minimum=0, optional=True)
        check_device(self.device)
        check_choice("--precision", self.precision, PRECISIONS)
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown --dtype {self.dtype!r}", "choose float16 or float32")
        check_int("--shard-size", self.shard_size, minimum=1)
        if self.decode not in DECODES:
            raise ConfigError(f"unknown --decode {self.decode!r}", "choose cpu or device")
        check_int("--max-image-bytes", self.max_image_bytes, minimum=1)
        check_int("--max-image-pixels", self.max_image_pixels, minimum=1)
        check_root(self.root)
