"""`pairmine eval`: options → pairmine.evaluate.evaluate → results table (and JSON)."""

from __future__ import annotations

from pathlib import Path

import click

from pairmine.commands.common import DEVICE, known_errors, out, progress_bar, summary_table
from pairmine.encoders.base import FEATURE_OPTIONS


@click.command("eval")
@click.argument("checkpoint", type=str)
@click.option("--train", "train_source", required=True, metavar="SOURCE",
              help="Labelled images the kNN bank and the linear probe are fitted on.")
@click.option("--test", "test_source", required=True, metavar="SOURCE",
              help="Labelled images the accuracies are measured on.")
@click.option("--features", type=click.Choice(FEATURE_OPTIONS), default="backbone",
              show_default=True, help="Frozen pooled backbone (the usual protocol) or head; "
              "for ViT kinds cls or mean (see `pairmine encoders`).")
@click.option("--arch", default=None, help="Architecture override for encoder SPECs.")
@click.option("--k", "k", default=200, show_default=True, type=click.IntRange(min=1),
              help="Neighbours of the kNN monitor.")
@click.option("--t", "t", default=0.07, show_default=True, type=float,
              help="Temperature of the kNN votes, exp(sim / t).")
@click.option("--knn/--no-knn", default=True, show_default=True)
@click.option("--linear/--no-linear", default=True, show_default=True)
@click.option("--linear-epochs", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--linear-optimizer", type=click.Choice(["sgd", "lbfgs"]), default="sgd",
              show_default=True)
@click.option("--linear-lr", default=0.1, show_default=True, type=float)
@click.option("--linear-weight-decay", default=0.0, show_default=True, type=float)
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--workers", default=None, type=click.IntRange(min=0))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", "out_path", default=None, type=click.Path(path_type=Path),
              help="Write the results as JSON here.")
@known_errors
def command(checkpoint: str, train_source: str, test_source: str, features: str,
            arch: str | None, k: int, t: float, knn: bool, linear: bool, linear_epochs: int,
            linear_optimizer: str, linear_lr: float, linear_weight_decay: float,
            batch_size: int, device: str, workers: int | None, seed: int,
            out_path: Path | None) -> None:
    """kNN and linear-probe accuracy of a frozen encoder.

    CHECKPOINT is a `pairmine train` checkpoint (or its output directory) or any encoder SPEC
    (e.g. cifar-resnet:resnet20.th, moco:ckpt.pth.tar).
    """
    from pairmine.evaluate import evaluate

    if out_path is not None:  # fail before the work, not after it
        from pairmine.stores import check_writable

        check_writable(out_path)
    with progress_bar() as progress:
        r = evaluate(checkpoint, train_source, test_source, features=features, arch=arch, k=k,
                     t=t, knn=knn, linear=linear, linear_epochs=linear_epochs,
                     linear_optimizer=linear_optimizer, linear_lr=linear_lr,
                     linear_weight_decay=linear_weight_decay, batch_size=batch_size,
                     device=device, workers=workers, seed=seed, out=out_path,
                     progress=progress)
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
    if out_path is not None:
        rows.append(("results", str(out_path)))
    out.print(summary_table("evaluation", rows))
