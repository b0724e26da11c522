"""`pairmine eval`: options → pairmine.quality.evaluate → results table (and JSON)."""

from __future__ import annotations

from pathlib import Path

import click

from pairmine.commands.common import known_errors, out, progress_bar, summary_table
from pairmine.commands.options import config_options
from pairmine.quality import EvalConfig


@click.command("eval")
@click.argument("checkpoint", type=str)
@click.option("--train", "train_source", required=True, metavar="SOURCE",
              help="Labelled images the kNN bank and the linear probe are fitted on.")
@click.option("--test", "test_source", required=True, metavar="SOURCE",
              help="Labelled images the accuracies are measured on.")
@config_options(EvalConfig)
@known_errors
def command(checkpoint: str, train_source: str, test_source: str, config: EvalConfig) -> None:
    """kNN and linear-probe accuracy of a frozen encoder.

    CHECKPOINT is a `pairmine train` checkpoint (or its output directory) or any encoder SPEC
    (e.g. cifar-resnet:resnet20.th, moco:ckpt.pth.tar).
    """
    from pairmine.quality import evaluate

    if config.out is not None:  # fail before the work, not after it
        from pairmine.stores import check_writable

        check_writable(Path(config.out))
    with progress_bar() as progress:
        r = evaluate(checkpoint, train_source, test_source, config, progress=progress)
    rows: list[tuple[str, object]] = [
        ("encoder", f"{r.encoder.get('spec')} ({r.encoder.get('arch')}, {r.features}, "
                    f"{r.dim}-D)"),
        ("train / test", f"{r.train['count']:,} / {r.test['count']:,} images, "
                         f"{r.train['classes']} classes"),
    ]
    if r.knn is not None:
        rows.append((f"kNN top-1 (k={r.knn['k']}, t={r.knn['t']})", f"{100 * r.knn['top1']:.2f}%"))
    if r.linear is not None:
        top5 = r.linear.get("top5")
        rows.append((f"linear top-1 ({r.linear['optimizer']}, {r.linear['epochs']} ep)",
                     f"{100 * r.linear['top1']:.2f}%"
                     + ("" if top5 is None else f"  (top-5 {100 * top5:.2f}%)")))
    if config.out is not None:
        rows.append(("results", str(config.out)))
    out.print(summary_table("evaluation", rows))
