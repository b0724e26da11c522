"""`pairmine embed`: options → pairmine.embed → summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pairmine.commands import common
from pairmine.commands.common import (
    DEVICE,
    LazyChoice,
    console,
    known_errors,
    progress_bar,
    summary_table,
)
from pairmine.encoders.base import FEATURE_OPTIONS
from pairmine.images import DEFAULT_MAX_IMAGE_PIXELS
from pairmine.scale.cli import cluster_rows, ray_options
from pairmine.sources.files import DEFAULT_MAX_IMAGE_BYTES


def _source_kinds() -> list[str]:
    from pairmine.sources import SOURCES

    return SOURCES.names()


@click.command("embed")
@click.argument("source", type=str)
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--encoder", "encoder", required=True, metavar="SPEC",
              help="NAME:ARGS, e.g. cifar-resnet:resnet20.th or moco:ckpt.pth.tar "
                   "(`pairmine encoders` lists them).")
@click.option("--arch", default=None, help="Architecture override for the checkpoint "
              "(e.g. resnet18 for a MoCo checkpoint).")
@click.option("--features", type=click.Choice(FEATURE_OPTIONS), default=None,
              help="head = projection-head (or classifier) output, backbone = pooled trunk; "
                   "for ViTs cls = CLS token, mean = mean patch token. Each kind accepts its "
                   "own (`pairmine encoders` lists them); default: the kind's own (head for "
                   "MoCo, cls for DINO).")
@click.option("--source-kind", type=LazyChoice(_source_kinds), default=None,
              help="Force the source kind instead of detecting it.")
@click.option("--no-labels", is_flag=True, help="Ignore class sub-folders / label columns.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=None, type=click.IntRange(min=0),
              help="Decode workers [default: all cores on CUDA, half of them on CPU].")
@click.option("--device", type=DEVICE, default="auto",
              show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              default="auto", show_default=True,
              help="Encoder arithmetic; auto = bf16 on CUDA, fp32 on CPUs without native bf16.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16",
              show_default=True, help="Storage type of the L2-normalised embeddings.")
@click.option("--shard-size", default=65536, show_default=True, type=click.IntRange(min=1),
              help="Source images per shard (the unit of resume).")
@click.option("--no-draft", is_flag=True, help="Decode JPEGs at full size (no DCT scaling).")
@click.option("--decode", type=click.Choice(["cpu", "device"]), default="cpu", show_default=True,
              help="Where JPEGs are decoded: DataLoader workers (Pillow), or the compute "
                   "device (nvJPEG on CUDA; others fall back to the CPU path).")
@click.option("--max-image-bytes", default=DEFAULT_MAX_IMAGE_BYTES, show_default=True,
              type=click.IntRange(min=1), help="Largest image file read; a bigger one is an "
              "error entry, never read into memory.")
@click.option("--max-image-pixels", default=DEFAULT_MAX_IMAGE_PIXELS, show_default=True,
              type=click.IntRange(min=1), help="Most pixels an image may declare (Pillow's own "
              "limit); more is a decompression bomb: an error entry, never decoded.")
@click.option("--root", "root", default=None, type=click.Path(path_type=Path), metavar="DIR",
              help="Every image file must resolve (after symlinks) inside DIR, else it is an "
                   "error entry: for file lists you did not write.")
@click.option("--overwrite", is_flag=True, help="Replace a complete store at OUT.")
@ray_options
@known_errors
def command(source: str, out: Path, encoder: str, arch: str | None, features: str | None,
            source_kind: str | None, no_labels: bool, batch_size: int, workers: int | None,
            device: str, precision: str, dtype: str, shard_size: int, no_draft: bool,
            decode: str, max_image_bytes: int, max_image_pixels: int, root: Path | None,
            overwrite: bool, scale: dict[str, Any]) -> None:
    """Embed every image of SOURCE with an encoder into the embeddings store OUT.

    SOURCE is an image folder (class sub-folders give labels), a .txt/.csv/.parquet file list,
    WebDataset .tar shards (brace patterns allowed), or a CIFAR-10/100 or STL-10 folder.
    An interrupted run resumes where it stopped when run again with the same options.
    """
    from pairmine.embed import embed

    with progress_bar() as progress:
        result = embed(source, out, encoder=encoder, arch=arch, features=features,
                       labels=not no_labels, source_kind=source_kind, batch_size=batch_size,
                       workers=workers, device=device, precision=precision, dtype=dtype,
                       shard_size=shard_size, draft=not no_draft, decode=decode,
                       max_image_bytes=max_image_bytes, max_image_pixels=max_image_pixels,
                       root=root, overwrite=overwrite,
                       progress=progress, **scale)
    common.out.print(summary_table(f"embeddings → {result.path}", [
        ("images", result.images),
        ("errors", result.errors),
        ("ignored", f"{result.ignored} (not images; reasons in manifest.json source.ignored)"),
        ("dim", result.dim),
        ("shards", f"{result.shards} ({result.resumed_shards} resumed)"),
        ("device", f"{result.device}, {result.precision}"),
        ("time", f"{result.seconds:.1f} s"),
        ("throughput", f"{result.images_per_second:,.0f} images/s"),
        *cluster_rows(result.cluster),
    ]))
    if result.errors:
        console.print(f"[yellow]{result.errors} images could not be read: see "
                      f"{result.path / 'errors.parquet'}[/]")
