"""`pairmine export`: options → pairmine.export → summary."""

from __future__ import annotations

from pathlib import Path

import click

from pairmine.commands import common
from pairmine.commands.common import console, known_errors, progress_bar, summary_table
from pairmine.commands.options import config_options, overwrite_option
from pairmine.export import ExportConfig
from pairmine.scale.cli import cluster_rows
from pairmine.stores.export import PAIRS_VIEW_DIR, SHARD_PREFIX, SHARD_WIDTH, SHARDS_DIR

# DataLoader workers a trainer commonly asks for; WebDataset gives each worker whole shards
USUAL_LOADER_WORKERS = 8


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
        if result.pairs_view_shards:
            n = result.pairs_view_shards
            rows.append(("pairs alone", f"{n} shard{'s' if n != 1 else ''}, "
                                        f"{result.pairs_view_bytes / 1e6:,.1f} MB"))
    rows += [
        ("skipped", f"{len(result.skipped)} images, {result.skipped_pairs} pairs"),
        ("time", f"{result.seconds:.1f} s"),
        ("throughput", f"{result.samples_per_second:,.0f} samples/s, "
                       f"{result.mb_per_second:,.1f} MB/s"),
        *cluster_rows(result.cluster),
    ]
    common.out.print(summary_table(f"export → {result.path}", rows))  # the result: stdout
    common.warn_empty_band(result.pairs + result.skipped_pairs, pairs=pairs)
    if EXPORT_FORMATS.get(result.format).shards and result.shards:
        # on a line of its own, never folded by the table: what to paste into a trainer
        common.out.print(f"shards for a trainer: {shard_pattern(out, result.shards)}",
                         markup=False, highlight=False, soft_wrap=True)
        if result.pairs_view_shards:
            common.out.print("the pairs alone: " + shard_pattern(
                out / PAIRS_VIEW_DIR, result.pairs_view_shards), markup=False,
                highlight=False, soft_wrap=True)
        if result.shards < USUAL_LOADER_WORKERS:
            console.print(few_shards_warning(result.shards, config), markup=False,
                          highlight=False, soft_wrap=True, style="yellow")
    if result.skipped:
        console.print(f"[yellow]left out because their source changed or vanished: "
                      f"{describe_problems(result.skipped)}[/]")


def shard_pattern(out: Path, shards: int) -> str:
    """The brace pattern naming exactly the shards written, as webdataset and ``braceexpand``
    read it: ``spps/shards/spps-{000000..000002}.tar`` (a wider range names shards that do
    not exist)."""
    first, last = f"{0:0{SHARD_WIDTH}d}", f"{shards - 1:0{SHARD_WIDTH}d}"
    numbers = first if shards == 1 else f"{{{first}..{last}}}"
    return str(out / SHARDS_DIR / f"{SHARD_PREFIX}-{numbers}.tar")


def few_shards_warning(shards: int, config: ExportConfig) -> str:
    """Fewer shards than DataLoader workers: the workers without a shard read nothing (plain
    webdataset stops: "No samples found ... fewer shards than workers")."""
    limit = f"--shard-size {config.shard_size:,}".replace(",", "_")
    return (f"only {shards} shard{'s' if shards != 1 else ''}: WebDataset gives each DataLoader "
            f"worker whole shards, so use num_workers <= {shards}, or export more shards with "
            f"a smaller {limit} (or --max-shard-bytes)")
