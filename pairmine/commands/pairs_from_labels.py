"""`pairmine pairs-from-labels`: options → pairmine.quality.pairs_from_labels → summary."""

from __future__ import annotations

from pathlib import Path

import click

from pairmine.commands import common
from pairmine.commands.common import known_errors, progress_bar, summary_table
from pairmine.commands.options import config_options, overwrite_option
from pairmine.quality import PairsFromLabelsConfig


@click.command("pairs-from-labels")
@click.argument("embeddings", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@config_options(PairsFromLabelsConfig, before={"labels": [overwrite_option("pairs store")]})
@known_errors
def command(embeddings: Path, out: Path, config: PairsFromLabelsConfig,
            overwrite: bool) -> None:
    """Write a pairs store of label-curated pairs of the embeddings store EMBEDDINGS to OUT.

    Same-class pairs of two different, non-duplicate images, drawn with --seed, with the
    per-class counts of a mined store (--like PAIRS) or --per-class N; --control writes the
    same counts as pairs of an image with itself (the augmented control). OUT is a normal
    pairs store: export, train, eval-pairs and show read it unchanged.
    """
    from pairmine.quality import pairs_from_labels

    with progress_bar() as progress:
        result = pairs_from_labels(embeddings, out, config, overwrite=overwrite,
                                   progress=progress)
    counts = sorted(result.per_class.values())
    rows: list[tuple[str, object]] = [
        ("method", result.method),
        ("pairs", result.pairs),
        ("classes", len(result.per_class)),
        ("pairs per class", f"{counts[0]:,} to {counts[-1]:,}" if counts else "—"),
    ]
    if config.like is not None:
        rows += [("mixed-label pairs of --like", f"{result.mixed_pairs:,} (counted under "
                                                  "image a's class)"),
                 ("unlabelled pairs of --like", f"{result.unclassed_pairs:,} (not copied)")]
    rows.append(("time", f"{result.seconds:.1f} s"))
    common.out.print(summary_table(f"pairs-from-labels → {result.path}", rows))
