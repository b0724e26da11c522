"""``pairmine match EMB OUT``: the band search as a command (options → pairmine.match → summary)."""

from __future__ import annotations

from typing import Any

import click
from rich import box
from rich.table import Table

from pairmine.commands.common import (
    DEVICE,
    engine_choice,
    known_errors,
    out,
    progress_bar,
    summary_table,
)
from pairmine.scale.cli import cluster_rows, plan_table, ray_options

# the sweep is printed as a min x max matrix up to this many grid points; beyond that only the
# column of the run's --max is printed (the full matrix is always in the manifest)
_SWEEP_MATRIX_MAX = 11


@click.command("match")
@click.argument("emb", type=click.Path(path_type=str))
@click.argument("out_dir", metavar="OUT", type=click.Path(path_type=str))
@click.option("--min", "min_score", type=float, default=0.97, show_default=True,
              help="Lower bound of the band (inclusive).")
@click.option("--max", "max_score", type=float, default=0.99, show_default=True,
              help="Upper bound of the band (inclusive); keeps near-identical images out.")
@click.option("--subset", default=None, metavar="FRACTION|COUNT",
              help="The paper's K: a float in (0, 1] is a fraction, an integer a count. "
                   "Default: the whole store.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the subset draw.")
@click.option("--against", type=click.Choice(["subset", "all"]), default="subset",
              show_default=True,
              help="subset: the subset against itself (Algorithm 1); all: subset anchors "
                   "against every image.")
@click.option("--max-per-anchor", type=click.IntRange(min=1), default=None, metavar="K",
              help="Keep each image's K best positives (a pair stays if either end keeps it).")
@click.option("--engine", type=engine_choice(), default="auto",
              show_default=True, help="Exact search engine.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--sweep", default=None, metavar="LO:HI:STEP",
              help="Also count pairs for every band [m, M] (m < M) on this grid, from the "
                   "same search, e.g. 0.90:1.0:0.01.")
@click.option("--wide-histogram", is_flag=True,
              help="Widen the one search to [min-0.05, 1.0] so the manifest's score histogram "
                   "shows the scores near the band (slower: more pairs to rescore).")
@click.option("--block-rows", type=click.IntRange(min=1), default=None,
              help="Anchors per engine block (one pair shard each). Default: the engine's.")
@click.option("--overwrite", is_flag=True, help="Replace a complete store at OUT.")
@click.option("--plan", "dry_run", is_flag=True,
              help="Dry run: print the blocks (units) to compute, the bytes each reads and a "
                   "time estimate from one block measured here; write nothing.")
@ray_options
@known_errors
def command(emb: str, out_dir: str, min_score: float, max_score: float, subset: str | None,
            seed: int, against: str, max_per_anchor: int | None, engine: str, device: str,
            sweep: str | None, wide_histogram: bool, block_rows: int | None,
            overwrite: bool, dry_run: bool, scale: dict[str, Any]) -> None:
    """Find every pair of images in EMB whose embeddings score in [--min, --max]; write OUT."""
    from pairmine.match import match

    with progress_bar() as bar:
        result = match(emb, out_dir, min_score=min_score, max_score=max_score, subset=subset,
                       seed=seed, against=against, max_per_anchor=max_per_anchor,
                       engine=engine, device=device, sweep=sweep, wide_histogram=wide_histogram,
                       block_rows=block_rows, overwrite=overwrite, progress=bar,
                       dry_run=dry_run, **scale)
    if result.unit_plan is not None:
        out.print(plan_table(result.unit_plan))
        return
    m = result.manifest
    pa_ = result.per_anchor
    rows: list[tuple[str, Any]] = [
        ("pairs (unordered, a < b)", result.pairs),
        ("pairs (ordered, Algorithm 1)", result.ordered),
        ("band", f"[{m['min']}, {m['max']}]"),
        ("anchors", f"{result.anchors:,} of {m['subset']['of']:,} (against "
                    f"{m['subset']['against']})"),
        ("anchors with pairs", result.anchors_with_pairs),
        ("positives per anchor", f"min {pa_.get('min')}  median {pa_.get('median')}  "
                                 f"mean {pa_.get('mean')}  p90 {pa_.get('p90')}  "
                                 f"p99 {pa_.get('p99')}  max {pa_.get('max')}"),
        ("duplicates (same hash)", result.duplicates),
        ("engine", f"{m['engine'].get('name')} on {m['engine'].get('device', '?')}"),
        ("blocks", f"{m['search']['blocks']} ({result.blocks_skipped} resumed)"),
        ("time", f"{result.seconds:.1f} s"),
        ("store", str(result.path)),
        *cluster_rows(result.cluster),
    ]
    if m["config"]["max_per_anchor"] is not None:
        rows.insert(2, ("before --max-per-anchor", m["counts"]["unordered_before_max_per_anchor"]))
    out.print(summary_table("match", rows))
    if result.sweep is not None:
        out.print(_sweep_table(result.sweep, m["max"]))


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
