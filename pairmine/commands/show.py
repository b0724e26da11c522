"""`pairmine show`: options → pairmine.quality.show → where the report is."""

from __future__ import annotations

from pathlib import Path

import click

from pairmine.commands import common
from pairmine.commands.common import console, known_errors, progress_bar, summary_table


def _checked_roots(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--image-root`` checked at parse time: a bad OLD=NEW is a usage error (exit 2)."""
    from pairmine.errors import ConfigError
    from pairmine.sources.roots import ImageRoots

    try:
        ImageRoots.parse(values)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None
    return values


@click.command("show")
@click.argument("pairs", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--per-view", type=click.IntRange(min=1), default=500, show_default=True,
              help="Pairs in each view (highest, random, lowest, mismatches).")
@click.option("--page-size", type=click.IntRange(min=1), default=50, show_default=True,
              help="Pairs per page.")
@click.option("--thumb", "thumb_px", type=click.IntRange(16, 1024), default=128,
              show_default=True, help="Thumbnail size in pixels (smaller images pass "
              "through as their original bytes).")
@click.option("--inline", is_flag=True, help="Embed thumbnails in index.html as data URIs "
              "(one file to send around) instead of OUT/thumbs/.")
@click.option("--labels", "labels", type=click.Path(path_type=Path), default=None,
              metavar="FILE", help="A .csv or .parquet with columns key (or path) and label "
              "(or class) to mark mismatches [default: the labels in the embeddings metadata, "
              "if any].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random view.")
@click.option("--class", "only_class", default=None, metavar="NAME",
              help="Only pairs with an image of this class (name or number) in the views; the "
                   "summary and per-class table still cover the whole store.")
@click.option("--key", "only_key", default=None, metavar="KEY",
              help="Only the pairs of the image KEY (its key in the embeddings store).")
@click.option("--image-root", "image_root", multiple=True, metavar="OLD=NEW",
              callback=lambda ctx, param, value: _checked_roots(value),
              help="The images embed read under the folder OLD are now under NEW (moved or "
                   "mounted elsewhere): read them there. Repeatable.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier report at OUT.")
@known_errors
def command(pairs: Path, out: Path, per_view: int, page_size: int, thumb_px: int,
            inline: bool, labels: Path | None, seed: int, only_class: str | None,
            only_key: str | None, image_root: tuple[str, ...], overwrite: bool) -> None:
    """Write a static HTML report of the pairs store PAIRS to OUT/index.html.

    Pairs side by side with thumbnails of the original images, scores, keys and labels
    (mismatches marked); views by score, at random and lowest first; paging; a filter by class
    or key; per-class pair accuracy; a histogram of scores with the band's bounds. No network
    resources: open it from disk in any browser.
    """
    from rich.markup import escape

    from pairmine.quality import show

    with progress_bar() as progress:
        result = show(pairs, out, per_view=per_view, page_size=page_size, seed=seed,
                      thumb_px=thumb_px, inline=inline, labels=labels, overwrite=overwrite,
                      only_class=only_class, only_key=only_key, image_root=image_root,
                      progress=progress)
    rows: list[tuple[str, object]] = [
        ("pairs in the store", result.pairs),
        ("pairs in the report", result.shown),
        ("images", result.images),
        ("views", ", ".join(f"{k} {v}" for k, v in result.views.items())),
    ]
    if result.selected is not None:
        rows.append(("pairs kept by the filter", result.selected))
    if result.mismatches is not None:
        rows.append(("label mismatches", f"{result.mismatches:,} of {result.labelled:,}"))
    common.out.print(summary_table(f"report → {result.index}", rows))
    common.warn_empty_band(result.pairs, pairs=pairs)
    if result.missing and result.missing_files == len(result.missing):
        console.print(f"[yellow]{len(result.missing)} images show as missing: their rows name "
                      "no image file (the store was imported from embeddings alone)[/]",
                      soft_wrap=True)
    elif result.missing:
        console.print(f"[yellow]{len(result.missing)} images could not be read (e.g. "
                      f"{escape(result.missing[0])}); they show as missing: if they moved, "
                      "pass --image-root OLD=NEW[/]", soft_wrap=True)
