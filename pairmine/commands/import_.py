"""`pairmine import`: options (from ``ImportConfig``) → pairmine.import_embeddings → summary."""

from __future__ import annotations

from pathlib import Path

import click

from pairmine.commands import common
from pairmine.commands.common import console, known_errors, progress_bar, summary_table
from pairmine.commands.options import config_options, overwrite_option
from pairmine.ingest import ImportConfig


@click.command("import")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@config_options(ImportConfig)
@overwrite_option()
@known_errors
def command(source: Path, out: Path, config: ImportConfig, overwrite: bool) -> None:
    """Import precomputed embeddings at SOURCE as the embeddings store OUT.

    SOURCE is a clip-retrieval / LAION folder (img_emb/img_emb_N.npy +
    metadata/metadata_N.parquet), Parquet file(s) with an embedding column (NeMo Curator's
    id + embeddings), or a .npy matrix with its keys in --keys. Row ids follow the source's
    order (file by file, in numeric order, then row by row). Rows must be L2-normalised
    (--normalize does it). An interrupted run resumes when run again with the same options.
    """
    from pairmine.ingest import import_embeddings

    with progress_bar() as progress:
        result = import_embeddings(source, out, config, overwrite=overwrite,
                                   progress=progress)
    common.out.print(summary_table(f"embeddings → {result.path}", [
        ("rows", result.rows),
        ("dim", result.dim),
        ("layout", f"{result.layout} ({result.source.get('files')} file(s))"),
        ("images", f"{result.images} rows with an image file"),
        ("labelled", result.labelled),
        ("shards", f"{result.shards} ({result.resumed_shards} resumed)"),
        ("time", f"{result.seconds:.1f} s"),
        ("throughput", f"{result.rows_per_second:,.0f} rows/s"),
    ]))
    if result.images_missing:
        console.print(f"[yellow]{result.images_missing} image files named in the metadata "
                      f"cannot be read: see {result.path / 'errors.parquet'}[/]")
