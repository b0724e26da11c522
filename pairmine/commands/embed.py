"""`pairmine embed`: options (from ``EmbedConfig``) → pairmine.embed → summary."""

from __future__ import annotations

from pathlib import Path

import click

from pairmine.commands import common
from pairmine.commands.common import console, known_errors, progress_bar, summary_table
from pairmine.commands.options import config_options, overwrite_option
from pairmine.embed import EmbedConfig
from pairmine.scale.cli import cluster_rows


@click.command("embed")
@click.argument("source", type=str)
@click.argument("out", type=click.Path(path_type=Path))
@config_options(EmbedConfig, before={"ray": [overwrite_option()]})  # where it always was
@known_errors
def command(source: str, out: Path, config: EmbedConfig, overwrite: bool) -> None:
    """Embed every image of SOURCE with an encoder into the embeddings store OUT.

    SOURCE is an image folder (class sub-folders give labels), a .txt/.csv/.parquet file list,
    WebDataset .tar shards (brace patterns allowed), or a CIFAR-10/100 or STL-10 folder.
    An interrupted run resumes where it stopped when run again with the same options.
    """
    from pairmine.embed import embed

    with progress_bar() as progress:
        result = embed(source, out, config, overwrite=overwrite, progress=progress)
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
