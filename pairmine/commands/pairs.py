"""`pairmine pairs`: options → pairmine.quality.list_pairs → a table, CSV or JSON on stdout."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pairmine.commands import common
from pairmine.commands.common import known_errors

if TYPE_CHECKING:
    from pairmine.quality import PairListing


@click.command("pairs")
@click.argument("pairs", type=click.Path(path_type=Path))
@click.option("--top", type=click.IntRange(min=1), default=None, metavar="N",
              help="The N highest-scoring pairs [default: --top 20].")
@click.option("--sample", type=click.IntRange(min=1), default=None, metavar="N",
              help="N pairs drawn uniformly at random (--seed).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sample.")
@click.option("--key", default=None, metavar="KEY",
              help="Every pair of the image KEY (its key in the embeddings store, e.g. "
                   "cat/0001.jpg).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True, help="A table for the terminal, or CSV / JSON for tools.")
@known_errors
def command(pairs: Path, top: int | None, sample: int | None, seed: int, key: str | None,
            fmt: str) -> None:
    """List pairs of the pairs store PAIRS: both keys, labels (class names where the store
    knows them) and the score, highest score first.

    Reads the pair shards one at a time: memory is the listing and one shard, whatever the
    store's size. `pairmine show` makes a page with the images.
    """
    from pairmine.quality import list_pairs

    listing = list_pairs(pairs, top=top, sample=sample, seed=seed, key=key)
    try:
        RENDERERS[fmt](listing)
        sys.stdout.flush()
    except BrokenPipeError:  # `pairmine pairs ... | head`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit


def _table(listing: PairListing) -> None:
    from rich.markup import escape
    from rich.table import Table

    lo, hi = listing.band
    table = Table(title=escape(f"{listing.path}: {listing.selection} of {listing.total:,} "
                               f"pairs, band [{lo:g}, {hi:g}]"), title_justify="left")
    table.add_column("score", justify="right", no_wrap=True)
    for side in ("a", "b"):  # ids are in --format csv/json; keys say more to a person
        table.add_column(f"key {side}", overflow="fold")
        table.add_column(f"label {side}", overflow="fold")
    for row in listing.rows:
        mark = "" if row.label_a is None or row.label_b is None or row.label_a == row.label_b \
            else "red"
        table.add_row(f"{row.score:.5f}", escape(row.key_a), escape(_text(row.label_a)),
                      escape(row.key_b), escape(_text(row.label_b)), style=mark or None)
    common.out.print(table)
    if not listing.rows:
        common.console.print(f"[yellow]no pairs listed ({listing.selection} of "
                             f"{listing.total:,})[/]")


def _text(label: str | int | None) -> str:
    return "" if label is None else str(label)


def _csv(listing: PairListing) -> None:
    import csv

    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(listing.columns)
    for row in listing.rows:
        writer.writerow(["" if v is None else v for v in row.to_json().values()])


def _json(listing: PairListing) -> None:
    import json

    json.dump([row.to_json() for row in listing.rows], sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


# --format NAME -> how the listing is written to stdout
RENDERERS: dict[str, Callable[[PairListing], None]] = {"table": _table, "csv": _csv, "json": _json}
