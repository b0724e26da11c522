"""`pairmine calibrate`: options → pairmine.quality.calibrate → table and suggestion."""

from __future__ import annotations

from pathlib import Path

import click

from pairmine.commands.common import (
    DEVICE,
    console,
    engine_choice,
    known_errors,
    out,
    progress_bar,
)


@click.command("calibrate")
@click.argument("emb", type=click.Path(path_type=Path))
@click.option("--target-precision", type=float, default=None, metavar="P",
              help="Suggest the band with the most pairs whose precision is >= P "
                   "(95% confidence). Needs labels.")
@click.option("--target-yield", type=float, default=None, metavar="Y",
              help="Suggest a band with >= Y positives per image (the most precise one when "
                   "labels are known).")
@click.option("--labels", "labels", type=click.Path(path_type=Path), default=None,
              metavar="FILE", help="A .csv or .parquet with columns key,label "
              "[default: the labels in the embeddings metadata].")
@click.option("--no-labels", "no_labels", is_flag=True,
              help="Ignore all labels: a label-free suggestion (use with --target-yield).")
@click.option("--labels-sample", type=click.IntRange(min=2), default=None, metavar="N",
              help="Measure precision with the labels of N random images only (pairs with "
                   "both ends among them): what hand-labelling N images would tell.")
@click.option("--floor", type=float, default=0.9, show_default=True,
              help="Lowest score kept by the one search; the grid starts here.")
@click.option("--step", type=float, default=0.005, show_default=True,
              help="Grid spacing of both bounds.")
@click.option("--max-cap", type=float, default=0.99, show_default=True,
              help="Suggest only bands with max <= this (keeps near-identical images out).")
@click.option("--min-support", type=click.IntRange(min=1), default=30, show_default=True,
              help="Labelled pairs a band needs before its precision counts.")
@click.option("--subset", default=None, metavar="FRACTION|COUNT",
              help="Search only these random anchors against every image (cheaper; yields "
                   "per image stay unbiased).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of --subset and --labels-sample.")
@click.option("--engine", type=engine_choice(), default="auto",
              show_default=True)
@click.option("--device", type=DEVICE, default="auto",
              show_default=True)
@click.option("--out", "out_json", type=click.Path(path_type=Path), default=None,
              metavar="JSON", help="Write the whole grid and the suggestion as JSON.")
@known_errors
def command(emb: Path, target_precision: float | None, target_yield: float | None,
            labels: Path | None, no_labels: bool, labels_sample: int | None, floor: float,
            step: float, max_cap: float, min_support: int, subset: str | None, seed: int,
            engine: str, device: str, out_json: Path | None) -> None:
    """Measure pairs per image and precision for a grid of bands on the embeddings store EMB,
    from one search, and suggest a band for a target precision or yield.

    The paper's [0.97, 0.99] suits its encoder; this makes the band a measured choice.
    """
    from rich.markup import escape
    from rich.table import Table

    from pairmine import quality
    from pairmine.quality import BAND_HEADERS, format_row

    if out_json is not None:  # fail before the work, not after it
        from pairmine.stores import check_writable

        check_writable(out_json)
    with progress_bar() as progress:
        result = quality.calibrate(emb, floor=floor, step=step, max_cap=max_cap,
                                   target_precision=target_precision, target_yield=target_yield,
                                   labels=labels, use_labels=not no_labels,
                                   labels_sample=labels_sample, subset=subset, seed=seed,
                                   min_support=min_support, engine=engine, device=device,
                                   out=out_json, progress=progress)
    pick = result.suggestion
    his = sorted({max_cap} | ({pick.hi} if pick is not None else set()))
    for hi in his:
        table = Table(title=escape(f"bands [lo, {hi:g}] — {result.anchors:,} of "
                                   f"{result.n_rows:,} images, {result.pairs_above_floor:,} "
                                   f"pairs >= {floor:g}"), title_justify="left")
        for name in BAND_HEADERS:
            table.add_column(name, justify="left" if name == "band" else "right",
                             no_wrap=name in ("band", "95% CI"))
        for row in result.column(hi):
            chosen = pick is not None and (row.lo, row.hi) == (pick.lo, pick.hi)
            table.add_row(*format_row(row), style="bold green" if chosen else None)
        out.print(table)
    if result.labels is None:
        console.print("no labels: precision not measured"
                      + ("" if no_labels else " (pass --labels FILE)"))
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
    if out_json is not None:
        out.print(f"written: {out_json}")
