"""`pairmine export`: options → pairmine.export → summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pairmine.commands import common
from pairmine.commands.common import LazyChoice, console, known_errors, progress_bar, summary_table
from pairmine.scale.cli import cluster_rows, ray_options

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _format_names() -> list[str]:
    from pairmine.export import EXPORT_FORMATS

    return EXPORT_FORMATS.names()


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """``1073741824``, ``512M``, ``1G`` (binary units) → bytes; ``none`` → no limit."""
    if value is None or value.lower() == "none":
        return None
    text = value.strip().upper().removesuffix("IB").removesuffix("B")
    unit = text[-1:] if text[-1:] in _UNITS else ""
    try:
        number = float(text[:-1] if unit else text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size (e.g. 1G, 512M, 100000000)") from None
    return int(number * _UNITS[unit])


@click.command("export")
@click.argument("pairs", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=LazyChoice(_format_names),
              default="webdataset", show_default=True,
              help="webdataset: tar shards of original bytes + spps.parquet; parquet: "
                   "spps.parquet only, pointing at the original files.")
@click.option("--combined", is_flag=True,
              help="Also write every image of the embeddings store as a single-image sample: "
                   "the paper's merged training set.")
@click.option("--shard-size", default=10_000, show_default=True, type=click.IntRange(min=1),
              help="Most samples per shard.")
@click.option("--max-shard-bytes", default="1G", show_default=True, callback=_size,
              metavar="B", help="Most bytes per tar (K/M/G suffixes; 'none' for no limit).")
@click.option("--shuffle/--no-shuffle", default=None,
              help="Shuffle the sample order with --seed [default: on with --combined].")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--skip-missing", is_flag=True,
              help="Leave out samples whose source image changed or vanished since embed "
                   "(listed in the manifest) instead of failing.")
@click.option("--overwrite", is_flag=True, help="Replace a complete export at OUT.")
@ray_options
@known_errors
def command(pairs: Path, out: Path, fmt: str, combined: bool, shard_size: int,
            max_shard_bytes: int | None, shuffle: bool | None, seed: int, skip_missing: bool,
            overwrite: bool, scale: dict[str, Any]) -> None:
    """Export the pairs store PAIRS, with the original images, to OUT.

    An interrupted export resumes after its last complete shard when run again with the same
    options. Check a finished export with `pairmine verify OUT`.
    """
    from pairmine.export import EXPORT_FORMATS, describe_problems, export

    with progress_bar() as progress:
        result = export(pairs, out, fmt=fmt, combined=combined, shard_size=shard_size,
                        max_shard_bytes=max_shard_bytes, shuffle=shuffle, seed=seed,
                        skip_missing=skip_missing, overwrite=overwrite, progress=progress,
                        **scale)
    rows: list[tuple[str, object]] = [
        ("format", result.format),
        ("pairs", result.pairs),
        ("images", result.images),
        ("samples", result.samples),
    ]
    if EXPORT_FORMATS.get(result.format).shards:
        rows += [("shards", f"{result.shards} ({result.resumed_shards} resumed)"),
                 ("size", f"{result.bytes / 1e6:,.1f} MB")]
    rows += [
        ("skipped", f"{len(result.skipped)} images, {result.skipped_pairs} pairs"),
        ("time", f"{result.seconds:.1f} s"),
        ("throughput", f"{result.samples_per_second:,.0f} samples/s, "
                       f"{result.mb_per_second:,.1f} MB/s"),
        *cluster_rows(result.cluster),
    ]
    common.out.print(summary_table(f"export → {result.path}", rows))  # the result: stdout
    if result.skipped:
        console.print(f"[yellow]left out because their source changed or vanished: "
                      f"{describe_problems(result.skipped)}[/]")
