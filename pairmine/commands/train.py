"""`pairmine train`: options → pairmine.train.train → summary."""

from __future__ import annotations

from pathlib import Path

import click

from pairmine.commands import common
from pairmine.commands.common import known_errors, progress_bar, summary_table
from pairmine.commands.options import config_options
from pairmine.train import TrainConfig


@click.command("train")
@click.argument("data", type=str)
@click.argument("out", type=click.Path(path_type=Path))
@config_options(TrainConfig)
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint-last.pt.")
@click.option("--stop-after", default=None, type=click.IntRange(min=1),
              help="Stop after N epochs in this call (resume later).")
@known_errors
def command(data: str, out: Path, config: TrainConfig, resume: bool,
            stop_after: int | None) -> None:
    """Train MoCo-v2 on DATA, or SePP-ID when DATA is a `pairmine export --combined` output.

    DATA is any image source `pairmine embed` reads (vanilla MoCo-v2), or an export directory
    whose pair samples add the λ-weighted semantic terms of Eq. 2. OUT receives
    checkpoint-last.pt every epoch (loadable as `--encoder pairmine:OUT`), log.jsonl, and
    train.json when done.
    """
    from pairmine.train import train

    with progress_bar() as progress:
        result = train(data, out, config, resume=resume, stop_after=stop_after,
                       progress=progress)
    if result.rank != 0:
        return  # under torchrun, process 0 reports
    d = result.data
    common.out.print(summary_table(f"training → {result.out}", [
        ("epochs", f"stopped by --max-steps after {result.steps:,} steps, in epoch "
                   f"{result.epochs_done} of {result.epochs}"
         if config.max_steps is not None and result.steps >= config.max_steps
         else f"{result.epochs_done} / {result.epochs}"
                   + ("" if result.complete else " (paused: run again with --resume)")),
        ("data", f"{d.get('kind')}: {d.get('instance', 0):,} instance + "
                 f"{d.get('semantic', 0):,} semantic + {d.get('duplicate', 0):,} duplicate "
                 "items"),
        ("last loss", "-" if result.last_loss is None else f"{result.last_loss:.4f}"),
        ("throughput", "-" if result.images_per_s is None
         else f"{result.images_per_s:,.0f} images/s"),
        ("device", f"{result.device}, {result.precision} ({result.precision_reason})"),
        ("checkpoint", str(result.checkpoint)),
    ]))
