"""`pairmine calibrate`: options → pairmine.quality.calibrate → table and suggestion."""

from __future__ import annotations

from pathlib import Path

import click

from pairmine.commands.common import (
    console,
    fitted,
    known_errors,
    number_table,
    out,
    progress_bar,
)
from pairmine.commands.options import config_options
from pairmine.quality import CalibrateConfig


@click.command("calibrate")
@click.argument("emb", type=click.Path(path_type=Path))
@config_options(CalibrateConfig)
@known_errors
def command(emb: Path, config: CalibrateConfig) -> None:
    """Measure pairs per image and precision for a grid of bands on the embeddings store EMB,
    from one search, and suggest a band for a target precision or yield.

    The paper's [0.97, 0.99] suits its encoder; this makes the band a measured choice.
    """
    from rich.markup import escape

    from pairmine import quality
    from pairmine.quality import BAND_HEADERS, format_row

    if config.out is not None:  # fail before the work, not after it
        from pairmine.stores import check_writable

        check_writable(Path(config.out))
    with progress_bar() as progress:
        result = quality.calibrate(emb, config, progress=progress)
    max_cap, floor = config.max_cap, config.floor
    pick = result.suggestion
    his = sorted({max_cap} | ({pick.hi} if pick is not None else set()))
    for hi in his:
        table = number_table(escape(f"bands [lo, {hi:g}] — {result.anchors:,} of "
                                    f"{result.n_rows:,} images, {result.pairs_above_floor:,} "
                                    f"pairs >= {floor:g}"), BAND_HEADERS, left=("band",))
        for row in result.column(hi):
            chosen = pick is not None and (row.lo, row.hi) == (pick.lo, pick.hi)
            table.add_row(*format_row(row), style="bold green" if chosen else None)
        out.print(fitted(table))
    if result.labels is None:
        console.print("no labels: precision not measured"
                      + (" (pass --labels FILE)" if config.use_labels else ""))
    elif result.labels_sample is not None:
        console.print(f"precision from the labels of {result.labels_sample:,} sampled images")
    if pick is not None:
        s = pick.stats
        precision = "" if s.precision is None else f", precision {s.precision:.2%}"
        out.print(f"[bold green]suggested band: --min {pick.lo:g} --max {pick.hi:g}[/] "
                  f"({s.per_image:.3f} positives per image, {s.pairs:,} pairs{precision})")
        out.print(f"rule: {escape(pick.rule)}")
    else:
        out.print(f"[yellow]no suggestion:[/] {escape(result.note)}")
    if result.paper_band is not None and (pick is None or (pick.lo, pick.hi) != (0.97, 0.99)):
        s = result.paper_band
        precision = "" if s.precision is None else f", precision {s.precision:.2%}"
        out.print(escape(f"paper's band [0.97, 0.99]: {s.per_image:.3f} positives per "
                         f"image, {s.pairs:,} pairs{precision}"))
    if config.out is not None:
        out.print(f"written: {config.out}")
