"""`pairmine export`: options → pairmine.export → summary."""

from __future__ import annotations

from pathlib import Path

import click

from pairmine.commands import common
from pairmine.commands.common import console, known_errors, progress_bar, summary_table
from pairmine.commands.options import config_options, overwrite_option
from pairmine.export import ExportConfig
from pairmine.scale.cli import cluster_rows


@click.command("export")
@click.argument("pairs", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@config_options(ExportConfig, before={"ray": [overwrite_option("export")]})
@known_errors
def command(pairs: Path, out: Path, config: ExportConfig, overwrite: bool) -> None:
    """Export the pairs store PAIRS, with the original images, to OUT.

    An interrupted export resumes after its last complete shard when run again with the same
    options. Check a finished export with `pairmine verify OUT`.
    """
    from pairmine.export import EXPORT_FORMATS, describe_problems, export

    with progress_bar() as progress:
        result = export(pairs, out, config, overwrite=overwrite, progress=progress)
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
