"""`pairmine demo`: options → pairmine.demo.demo → summary."""

from __future__ import annotations

from pathlib import Path

import click

from pairmine.commands import common
from pairmine.commands.common import DEVICE, console, known_errors, progress_bar, summary_table


@click.command("demo")
@click.argument("out", type=click.Path(path_type=Path), default="pairmine-demo")
@click.option("--device", type=DEVICE, default="auto",
              show_default=True)
@click.option("--train-epochs", default=3, show_default=True, type=click.IntRange(min=0),
              help="Epochs of the short SePP-ID training (0 skips training).")
@click.option("--overwrite", is_flag=True, help="Start again from nothing.")
@known_errors
def command(out: Path, device: str, train_epochs: int, overwrite: bool) -> None:
    """Run the whole pipeline on the embedded CIFAR-10 sample into OUT, offline.

    embed → match [0.97, 0.99] → export (combined WebDataset) → verify → short SePP-ID training
    → kNN evaluation → OUT/report.md. Takes under 10 minutes on a 2-core CPU; a rerun resumes.
    """
    from rich.markup import escape

    from pairmine.demo import demo, short

    console.print("[bold]pairmine demo[/]: the full pipeline on 2,000 embedded CIFAR-10 images, "
                  "offline; under 10 minutes on a 2-core CPU, far less on a GPU.")
    console.print(f"writing to {escape(str(out.resolve()))} (pairmine demo DIR writes elsewhere)",
                  highlight=False)
    with progress_bar() as progress:
        result = demo(out, train_epochs=train_epochs, device=device, overwrite=overwrite,
                      progress=progress)
    rows = [(f"{s.name}{' (resumed)' if s.skipped else ''}",
             ", ".join(f"{k}={short(v)}" for k, v in s.facts.items())) for s in result.steps]
    common.out.print(summary_table(f"demo → {result.out}", rows))
    common.out.print(f"report: {result.report}   total {result.seconds:.0f} s")
