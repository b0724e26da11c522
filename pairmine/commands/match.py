"""``pairmine match EMB OUT``: the band search as a command (options → pairmine.match → summary)."""

from __future__ import annotations

from typing import Any

import click
from rich import box
from rich.table import Table

from pairmine.commands.common import (
    known_errors,
    out,
    progress_bar,
    summary_table,
    warn_empty_band,
)
from pairmine.commands.options import config_options, overwrite_option
from pairmine.match import MatchConfig, plan_summary
from pairmine.scale.cli import cluster_rows

# the sweep is printed as a min x max matrix up to this many grid points; beyond that only the
# column of the run's --max is printed (the full matrix is always in the manifest)
_SWEEP_MATRIX_MAX = 11

# the command's own switches, not options of a run: listed before the Ray options, as always
_PLAN = click.option("--plan", "dry_run", is_flag=True,
                     help="Dry run: print the tiles (units) to compute, the bytes each reads, "
                          "the peak memory of a worker and a time estimate from one tile "
                          "measured here (warm); write nothing.")


@click.command("match")
@click.argument("emb", type=click.Path(path_type=str))
@click.argument("out_dir", metavar="OUT", type=click.Path(path_type=str))
@config_options(MatchConfig, before={"ray": (overwrite_option(), _PLAN)})
@known_errors
def command(emb: str, out_dir: str, config: MatchConfig, overwrite: bool,
            dry_run: bool) -> None:
    """Find every pair of images in EMB whose embeddings score in [--min, --max]; write OUT."""
    from pairmine.match import match

    with progress_bar() as bar:
        result = match(emb, out_dir, config, overwrite=overwrite, progress=bar,
                       dry_run=dry_run)
    if result.unit_plan is not None:
        out.print(summary_table("match plan", plan_summary(result.unit_plan)))
        return
    pa_ = result.per_anchor
    rows: list[tuple[str, Any]] = [
        ("pairs (unordered, a < b)", result.pairs),
        ("pairs (ordered, Algorithm 1)", result.ordered),
        ("band", f"[{result.band[0]}, {result.band[1]}]"),
        ("anchors", f"{result.anchors:,} of {result.images:,} (against {result.against})"),
        ("anchors with pairs", result.anchors_with_pairs),
        ("positives per anchor", f"min {pa_.get('min')}  median {pa_.get('median')}  "
                                 f"mean {pa_.get('mean')}  p90 {pa_.get('p90')}  "
                                 f"p99 {pa_.get('p99')}  max {pa_.get('max')}"),
        ("duplicates (same hash)", result.duplicates),
        ("engine", f"{result.engine} on {result.device}"),
        ("blocks", f"{result.blocks} ({result.blocks_skipped} resumed)"),
        ("tiles", f"{result.tiles:,} ({result.tiles_run:,} computed by this run)"),
        ("time", f"{result.seconds:.1f} s"),
        ("store", str(result.path)),
        *cluster_rows(result.cluster),
    ]
    if result.pairs_before_cap is not None:
        rows.insert(2, ("before --max-per-anchor", result.pairs_before_cap))
    out.print(summary_table("match", rows))
    if result.sweep is not None:
        out.print(_sweep_table(result.sweep, result.band[1]))
    warn_empty_band(result.pairs, emb=emb, band=(result.band[0], result.band[1]))


def _sweep_table(sweep: dict[str, Any], max_score: float) -> Table:
    grid: list[float] = sweep["grid"]
    counts: list[list[int | None]] = sweep["counts"]
    if len(grid) <= _SWEEP_MATRIX_MAX:
        table = Table(title="sweep: unordered pairs with min <= score <= max (rows: min, "
                            "columns: max)", title_justify="left", box=box.SIMPLE_HEAD,
                      padding=(0, 0), pad_edge=False)
        table.add_column("", style="bold", min_width=5, no_wrap=True)
        for g in grid[1:]:
            table.add_column(f"{g:g}", justify="right", min_width=6, no_wrap=True)
        for i, g in enumerate(grid[:-1]):
            table.add_row(f"{g:g}", *("" if c is None else _compact(c) for c in counts[i][1:]))
        return table
    # a long grid: the column of the grid point closest to the run's --max
    j = min(range(len(grid)), key=lambda k: abs(grid[k] - max_score))
    table = Table(title=f"sweep: unordered pairs with min <= score <= {grid[j]:g} "
                        "(full matrix in manifest.json)", title_justify="left")
    table.add_column("min", style="bold")
    table.add_column("pairs", justify="right")
    for i in range(j):
        c = counts[i][j]
        table.add_row(f"{grid[i]:g}", "" if c is None else f"{c:,}")
    return table


def _compact(n: int) -> str:
    """5 characters at most, so an 11-point matrix fits 80 columns: 2,631 / 83.1k / 1.25M."""
    if n < 10_000:
        return f"{n:,}"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            v = n / div
            return f"{v:.3g}{unit}"
    return str(n)
