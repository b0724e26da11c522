"""`pairmine train`: options → pairmine.train.train → summary."""

from __future__ import annotations

from pathlib import Path

import click

from pairmine.commands import common
from pairmine.commands.common import DEVICE, known_errors, progress_bar, summary_table
from pairmine.encoders.archs import BACKBONES


@click.command("train")
@click.argument("data", type=str)
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--arch", type=click.Choice(BACKBONES), default="resnet50", show_default=True,
              help="Backbone; the -cifar variants have a 3x3 stem and no max-pool (32 px).")
@click.option("--epochs", default=200, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=2))
@click.option("--lr", default=0.03, show_default=True, type=float)
@click.option("--weight-decay", default=1e-4, show_default=True, type=float)
@click.option("--momentum", default=0.9, show_default=True, type=float)
@click.option("--cos/--no-cos", default=True, show_default=True,
              help="Cosine learning-rate schedule (MoCo-v2), else ×0.1 at 60% and 80%.")
@click.option("--moco-dim", default=128, show_default=True, type=click.IntRange(min=1),
              help="Output size of the projection head.")
@click.option("--moco-k", default=None, type=click.IntRange(min=1),
              help="Queue size [default: 4096 for -cifar archs, else 65536].")
@click.option("--moco-m", default=None, type=float,
              help="Key-encoder momentum [default: 0.99 for -cifar archs, else 0.999].")
@click.option("--temperature", default=None, type=float,
              help="InfoNCE temperature τ [default: 0.1 for -cifar archs, else 0.2].")
@click.option("--lambda", "lam", default=1.0, show_default=True, type=float,
              help="λ of Eq. 2: weight of the semantic-pair terms (0 = vanilla MoCo-v2).")
@click.option("--image-size", default=None, type=click.IntRange(min=8),
              help="Crop size [default: 32 for -cifar archs, else 224].")
@click.option("--bn-groups", default=None, type=click.IntRange(min=1),
              help="Shuffle-BN groups in one process [default: 8; 1 per process under "
                   "torchrun].")
@click.option("--augment", type=click.Choice(["cpu", "device"]), default="cpu",
              show_default=True, help="Random crops in CPU workers, or batched on the device "
                                      "(colour, grayscale and blur always run batched).")
@click.option("--pair-directions", type=click.IntRange(1, 2), default=2, show_default=True,
              help="2: a pair gives anchor→positive and positive→anchor items; 1: one item.")
@click.option("--random-duplicates", default=0, show_default=True, type=click.IntRange(min=0),
              help="Add N randomly chosen images as extra two-view items (Table 6 control).")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto",
              show_default=True, help="auto = bf16 autocast on GPU, fp32 on CPU.")
@click.option("--workers", default=None, type=click.IntRange(min=0),
              help="Data-loading processes [default: up to 8 on GPU, 1 on CPU].")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--save-every", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also keep checkpoint-EEEE.pt every N epochs (the last epoch always).")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint-last.pt.")
@click.option("--stop-after", default=None, type=click.IntRange(min=1),
              help="Stop after N epochs in this call (resume later).")
@known_errors
def command(data: str, out: Path, arch: str, epochs: int, batch_size: int, lr: float,
            weight_decay: float, momentum: float, cos: bool, moco_dim: int,
            moco_k: int | None, moco_m: float | None, temperature: float | None, lam: float,
            image_size: int | None, bn_groups: int | None, augment: str, pair_directions: int,
            random_duplicates: int, device: str, precision: str, workers: int | None,
            seed: int, save_every: int, resume: bool, stop_after: int | None) -> None:
    """Train MoCo-v2 on DATA, or SePP-ID when DATA is a `pairmine export --combined` output.

    DATA is any image source `pairmine embed` reads (vanilla MoCo-v2), or an export directory
    whose pair samples add the λ-weighted semantic terms of Eq. 2. OUT receives
    checkpoint-last.pt every epoch (loadable as `--encoder pairmine:OUT`), log.jsonl, and
    train.json when done.
    """
    from pairmine.train import train

    with progress_bar() as progress:
        result = train(data, out, arch=arch, epochs=epochs, batch_size=batch_size, lr=lr,
                       weight_decay=weight_decay, momentum=momentum, cos=cos,
                       moco_dim=moco_dim, moco_k=moco_k, moco_m=moco_m,
                       temperature=temperature, lam=lam, image_size=image_size,
                       bn_groups=bn_groups, augment=augment, pair_directions=pair_directions,
                       random_duplicates=random_duplicates, device=device,
                       precision=precision, workers=workers, seed=seed,
                       save_every=save_every, resume=resume, stop_after=stop_after,
                       progress=progress)
    if result.rank != 0:
        return  # under torchrun, process 0 reports
    d = result.data
    common.out.print(summary_table(f"training → {result.out}", [
        ("epochs", f"{result.epochs_done} / {result.epochs}"
                   + ("" if result.complete else " (paused: run again with --resume)")),
        ("data", f"{d.get('kind')}: {d.get('instance', 0):,} instance + "
                 f"{d.get('semantic', 0):,} semantic + {d.get('duplicate', 0):,} duplicate "
                 "items"),
        ("last loss", "-" if result.last_loss is None else f"{result.last_loss:.4f}"),
        ("throughput", "-" if result.images_per_s is None
         else f"{result.images_per_s:,.0f} images/s"),
        ("device", f"{result.device}, {result.precision}"),
        ("checkpoint", str(result.checkpoint)),
    ]))
