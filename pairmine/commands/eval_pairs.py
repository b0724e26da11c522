"""`pairmine eval-pairs`: options → pairmine.quality.eval_pairs → tables."""

from __future__ import annotations

from pathlib import Path

import click

from pairmine.commands.common import (
    fitted,
    known_errors,
    number_table,
    out,
    progress_bar,
    summary_table,
)
from pairmine.commands.options import config_options
from pairmine.quality import EvalPairsConfig


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.2%}"


@click.command("eval-pairs")
@click.argument("pairs", type=click.Path(path_type=Path))
@config_options(EvalPairsConfig)
@known_errors
def command(pairs: Path, config: EvalPairsConfig) -> None:
    """Pair accuracy of the pairs store PAIRS, next to nearest-neighbour baselines.

    Accuracy = share of pairs whose two images have the same label, counted three ways:
    unordered pairs, ordered pairs as the paper's Algorithm 1 counts them, and averaged per
    anchor. The baselines and the grid use the same embeddings and the same images.
    """
    from rich.markup import escape

    from pairmine.quality import BAND_HEADERS, eval_pairs, format_row

    if config.out is not None:  # fail before the work, not after it
        from pairmine.stores import check_writable

        check_writable(Path(config.out))
    with progress_bar() as progress:
        report = eval_pairs(pairs, config, progress=progress)
    acc = report.accuracy
    lo, hi = report.band
    out.print(summary_table(escape(f"pair accuracy of {report.pairs_path}  "
                                   f"band [{lo:g}, {hi:g}]"), [
        ("pairs (unordered)", acc.pairs),
        ("labelled pairs", acc.labelled),
        ("accuracy, unordered pairs", _pct(acc.unordered)),
        ("accuracy, ordered (Algorithm 1)", f"{_pct(acc.ordered)} of {acc.ordered_pairs:,}"),
        ("accuracy, mean per anchor", f"{_pct(acc.per_anchor)} over "
                                      f"{acc.anchors_with_pairs:,} anchors"),
        ("chance (Σ p_c²)", _pct(acc.chance)),
        ("images / anchors", f"{report.n_rows:,} / {report.anchors:,} (against "
                             f"{report.against})"),
        ("labels", report.labels),
    ]))
    base = number_table("the band against neighbour baselines (same images)",
                        ("positives", "per image", "accuracy"), left=("positives",))
    base.add_row(f"band [{lo:g}, {hi:g}]", f"{acc.per_image:.3f}", _pct(acc.ordered))
    for nb in report.baselines:
        base.add_row("nearest neighbour (NNCLR)" if nb.k == 1 else f"top-{nb.k} neighbours",
                     f"{nb.k}", _pct(nb.accuracy))
    out.print(fitted(base))
    classes = number_table("per class (ordered pairs by the anchor's label)",
                           ("class", "anchors", "share p_c", "ordered pairs", "accuracy"),
                           left=("class",))
    for c in acc.per_class:
        classes.add_row(c.name, f"{c.anchors:,}", f"{c.share:.2%}", f"{c.ordered:,}",
                        _pct(c.accuracy))
    out.print(fitted(classes))
    if report.bands:
        grid = number_table(escape(f"precision–yield over bands [lo, {hi:g}] and [lo, 1]"),
                            BAND_HEADERS, left=("band",))
        for row in sorted(report.bands, key=lambda r: (r.hi, r.lo)):
            style = "bold" if (row.lo, row.hi) == (lo, hi) else None
            grid.add_row(*format_row(row), style=style)
        out.print(fitted(grid))
    if config.out is not None:
        out.print(f"written: {config.out}")
