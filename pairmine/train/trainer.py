"""The training loop: data → MoCo-v2 steps → a checkpoint every epoch → resume exactly.

One process on the CPU or one GPU, or several under ``torchrun`` (DDP, keys shuffled across
processes). Every random draw of an epoch (data order, crops, colour, key shuffle) comes from
a generator seeded by (seed, epoch, step or item), so a run resumed from ``checkpoint-last.pt``
computes exactly what an uninterrupted run would, whatever the number of workers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pairmine.config import StageConfig, check_device, check_int, check_number, setting
from pairmine.encoders.archs import BACKBONES
from pairmine.errors import ConfigError, StoreError, TrainingError
from pairmine.progress import NullProgress, Progress
from pairmine.stores import atomic_path, write_json_atomic
from pairmine.stores.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    LAST_CHECKPOINT,
    read_training_checkpoint,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from pairmine.runtime import PrecisionChoice
    from pairmine.train.moco import MoCo

log = logging.getLogger(__name__)

LAST = LAST_CHECKPOINT
LOG = "log.jsonl"
SUMMARY = "train.json"
ARCH_CHOICES = tuple(BACKBONES)  # the trunks encoders/archs.py builds, the one list
AUGMENT_CHOICES = ("cpu", "device")
PRECISION_CHOICES = ("auto", "fp32", "bf16")
# the objective → the dataset of pairmine.train.data that gives its views
METHOD_VIEWS = {"moco": "TwoViews", "leoclr": "OriginalAndCrops"}
LEOCLR_QUEUE_CHOICES = ("k1", "both")


def arch_names() -> list[str]:
    """``--arch``'s choices: the one architecture list (``pairmine.encoders.archs``)."""
    return list(ARCH_CHOICES)


@dataclass(frozen=True, kw_only=True)
class TrainConfig(StageConfig):
    """Every option of a run. ``None`` = the default for the arch: CIFAR archs (``-cifar``)
    K 4096, m 0.99, τ 0.1, 32 px; ImageNet archs K 65536, m 0.999, τ 0.2, 224 px
    (:meth:`resolved` fills them in)."""

    method: str = setting(
        "moco", choices=tuple(METHOD_VIEWS),
        help="moco: MoCo-v2 (two crops; SePP-ID on a combined export); leoclr: LeOCLR (the "
             "whole image as the query, two crops as keys).")
    leoclr_queue: str = setting(
        "both", choices=LEOCLR_QUEUE_CHOICES,
        help="LeOCLR: the keys that join the queue, k1 (the first crop's) or both.")
    arch: str = setting("resnet50", choices=arch_names,
                        help="Backbone; the -cifar variants have a 3x3 stem and no max-pool "
                             "(32 px).")
    epochs: int = setting(200, minimum=1, help="Training epochs.")
    batch_size: int = setting(256, minimum=2,
                             help="Items per step (over all processes under torchrun).")
    lr: float = setting(0.03, help="Base learning rate of SGD (MoCo-v2: 0.03 at batch 256).")
    weight_decay: float = setting(1e-4, help="SGD weight decay.")
    momentum: float = setting(0.9, help="SGD momentum.")
    cos: bool = setting(True, flag="--cos/--no-cos",
                        help="Cosine learning-rate schedule (MoCo-v2), else ×0.1 at 60% and "
                             "80%.")
    moco_dim: int = setting(128, minimum=1, help="Output size of the projection head.")
    moco_k: int | None = setting(
        None, minimum=1, help="Queue size [default: 4096 for -cifar archs, else 65536].")
    moco_m: float | None = setting(
        None, help="Key-encoder momentum [default: 0.99 for -cifar archs, else 0.999].")
    temperature: float | None = setting(
        None, help="InfoNCE temperature τ [default: 0.1 for -cifar archs, else 0.2].")
    lam: float = setting(
        1.0, flag="--lambda",
        help="λ of Eq. 2: weight of the semantic-pair terms (0 = vanilla MoCo-v2).")
    image_size: int | None = setting(
        None, minimum=8, help="Crop size [default: 32 for -cifar archs, else 224].")
    # virtual devices of shuffle BN: 8 in one process, else 1
    bn_groups: int | None = setting(
        None, minimum=1,
        help="Shuffle-BN groups in one process [default: 8; 1 per process under torchrun].")
    # stage-1 crops in CPU workers, or batched on the device
    augment: str = setting(
        "cpu", choices=AUGMENT_CHOICES,
        help="Random crops in CPU workers, or batched on the device (colour, grayscale and "
             "blur always run batched).")
    pair_directions: int = setting(
        2, minimum=1, maximum=2,
        help="2: a pair gives anchor→positive and positive→anchor items; 1: one item.")
    random_duplicates: int = setting(
        0, minimum=0,
        help="Add N randomly chosen images as extra two-view items (Table 6 control).")
    device: str = setting("auto", kind="device", help="Where the model trains.")
    precision: str = setting(
        "auto", choices=PRECISION_CHOICES,
        help="auto: bf16 autocast on a GPU; fp32 on a CPU without native bf16; on a CPU with "
             "native bf16 (AVX-512 BF16/AMX) a timed trial of the run's own step picks bf16 "
             "where its step takes under 0.9x fp32's time. bf16 on a CPU without native "
             "bf16 is refused.")
    workers: int | None = setting(
        None, minimum=0, help="Data-loading processes [default: up to 8 on GPU, 1 on CPU].")
    threads: int | None = setting(
        None, minimum=1,
        help="torch CPU threads [default: the CPUs this process may use (affinity, cgroup "
             "quota) minus --workers, at most torch's count (OMP_NUM_THREADS)].")
    max_steps: int | None = setting(
        None, minimum=1,
        help="End the run after N steps in all (a smoke run): the epoch it stops in is "
             "saved as a partial epoch.")
    seed: int = setting(0, help="Seed of the weights, the augmentations and the item order.")
    save_every: int = setting(
        0, minimum=0,
        help="Also keep checkpoint-EEEE.pt every N epochs (the last epoch always).")

    def __post_init__(self) -> None:
        super().__post_init__()
        # every check happens before the run touches OUT: bad options write nothing
        for flag, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size),
                            ("--moco-dim", self.moco_dim), ("--pair-directions",
                                                            self.pair_directions),
                            ("--random-duplicates", self.random_duplicates),
                            ("--seed", self.seed), ("--save-every", self.save_every)):
            check_int(flag, value)
        for flag, optional in (("--moco-k", self.moco_k), ("--image-size", self.image_size),
                               ("--bn-groups", self.bn_groups), ("--workers", self.workers),
                               ("--threads", self.threads), ("--max-steps", self.max_steps)):
            check_int(flag, optional, optional=True)
        for flag, number in (("--lr", self.lr), ("--weight-decay", self.weight_decay),
                             ("--momentum", self.momentum), ("--lambda", self.lam)):
            check_number(flag, number)
        for flag, maybe in (("--moco-m", self.moco_m), ("--temperature", self.temperature)):
            if maybe is not None:
                check_number(flag, maybe)
        checks = [
            (self.method in METHOD_VIEWS, f"unknown --method {self.method!r}",
             f"choose one of {', '.join(METHOD_VIEWS)}"),
            (self.leoclr_queue in LEOCLR_QUEUE_CHOICES,
             f"unknown --leoclr-queue {self.leoclr_queue!r}", "choose k1 or both"),
            (self.method != "leoclr" or self.augment == "cpu",
             "--method leoclr crops in the CPU workers (its original view is never cropped)",
             "use --augment cpu"),
            (self.threads is None or self.threads >= 1, "--threads must be >= 1", None),
            (self.max_steps is None or self.max_steps >= 1, "--max-steps must be >= 1", None),
            (self.arch in ARCH_CHOICES, f"unknown --arch {self.arch!r}",
             f"choose one of {', '.join(ARCH_CHOICES)}"),
            (self.epochs >= 1, "--epochs must be >= 1", None),
            (self.batch_size >= 2, "--batch-size must be >= 2", None),
            (self.lr > 0, "--lr must be > 0", None),
            (self.weight_decay >= 0, "--weight-decay must be >= 0", None),
            (0 <= self.momentum < 1, "--momentum must be in [0, 1)", None),
            (self.moco_dim >= 1, "--moco-dim must be >= 1", None),
            (self.moco_k is None or self.moco_k >= 1, "--moco-k must be >= 1", None),
            (self.moco_m is None or 0 <= self.moco_m < 1, "--moco-m must be in [0, 1)", None),
            (self.temperature is None or self.temperature > 0, "--temperature must be > 0",
             None),
            (0 <= self.lam <= 1, f"--lambda must be in [0, 1] (Eq. 2), not {self.lam}", None),
            (self.image_size is None or self.image_size >= 8, "--image-size must be >= 8",
             None),
            (self.augment in AUGMENT_CHOICES, f"unknown --augment {self.augment!r}",
             "choose cpu or device"),
            (self.pair_directions in (1, 2), "--pair-directions must be 1 or 2", None),
            (self.random_duplicates >= 0, "--random-duplicates must be >= 0", None),
            (self.precision in PRECISION_CHOICES, f"unknown --precision {self.precision!r}",
             "choose auto, fp32 or bf16"),
            (self.workers is None or self.workers >= 0, "--workers must be >= 0", None),
            (self.save_every >= 0, "--save-every must be >= 0", None),
        ]
        for ok, message, hint in checks:
            if not ok:
                raise ConfigError(message, hint)
        if self.bn_groups is not None and self.batch_size % self.bn_groups:
            raise ConfigError(f"--batch-size {self.batch_size} does not split into "
                              f"{self.bn_groups} batch-norm groups",
                              "choose a batch size divisible by --bn-groups")
        check_device(self.device)

    @property
    def cifar(self) -> bool:
        return self.arch.endswith("-cifar")

    def resolved(self, world: int = 1) -> TrainConfig:
        """The arch's defaults filled in (``world``: processes under torchrun)."""
        return replace(
            self,
            moco_k=self.moco_k if self.moco_k is not None else (4096 if self.cifar else 65536),
            moco_m=self.moco_m if self.moco_m is not None else (0.99 if self.cifar else 0.999),
            temperature=self.temperature if self.temperature is not None
            else (0.1 if self.cifar else 0.2),
            image_size=self.image_size or (32 if self.cifar else 224),
            bn_groups=self.bn_groups or (8 if world == 1 else 1),
        )


# options that must not change when a run is resumed (the rest: device, workers, epochs...)
RESUME_FIXED = ("method", "leoclr_queue", "max_steps", "arch", "batch_size", "lr",
                "weight_decay", "momentum", "cos", "moco_dim", "moco_k", "moco_m",
                "temperature", "lam", "image_size", "bn_groups", "augment", "pair_directions",
                "random_duplicates", "seed")


@dataclass
class TrainResult:
    out: Path
    epochs_done: int
    epochs: int
    checkpoint: Path
    last_loss: float | None
    images_per_s: float | None
    device: str
    precision: str
    data: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False
    rank: int = 0  # this process under torchrun (0 = the one that writes and reports)
    steps: int = 0  # optimizer steps of the whole run so far
    precision_reason: str = ""  # why this precision (asked for, or auto's rule or trial)


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """MoCo's per-epoch schedule: cosine to 0, or ×0.1 at 60% and 80% of the epochs."""
    if cfg.cos:
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    drops = sum(epoch >= round(f * cfg.epochs) for f in (0.6, 0.8))
    return cfg.lr * 0.1 ** drops


def train(data: str | Path, out: str | Path, config: TrainConfig | None = None, *,
          resume: bool = False, stop_after: int | None = None,
          progress: Progress | None = None, **options: Any) -> TrainResult:
    """Train MoCo-v2 (DATA = an image source) or SePP-ID (DATA = a combined export).

    ``config`` is a :class:`TrainConfig`; its fields may also be given as keyword arguments
    (``train(data, out, epochs=1)``), which override those of ``config``. ``resume``
    continues from ``OUT/checkpoint-last.pt`` when there is one. ``stop_after`` ends this
    call after that many epochs (a later ``resume`` goes on): for time-limited machines.
    """
    from pairmine.runtime import cpu_threads

    base = TrainConfig.build(config, options)
    check_int("--stop-after", stop_after, minimum=1, optional=True)
    progress = progress or NullProgress()
    rank, world, local_rank = _init_distributed(base.device)
    cfg = base.resolved(world)  # checked again, with the arch's defaults
    if cfg.batch_size % world:
        raise ConfigError(f"--batch-size {cfg.batch_size} does not split over {world} processes")
    device = _device(cfg.device, world, local_rank)
    _precision(cfg.precision, device)  # an impossible precision fails before anything runs
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StoreError(f"output {out} exists and is not a directory", "choose another path")
    if (out / LAST).exists() and not resume:
        raise StoreError(f"{out} already holds a training run ({LAST})",
                         "pass --resume to continue it, or choose another output directory")
    workers = _workers(cfg.workers, device)
    # the model's threads and the decode workers share the CPUs this process may use: more
    # threads than free CPUs stall every operator on a descheduled thread (docs/training.md)
    threads = cfg.threads or _threads_beside(workers)
    created = _missing_folders(out) if rank == 0 else []
    try:
        with cpu_threads(threads):
            return _train(data, out, cfg, resume=resume, stop_after=stop_after,
                          progress=progress, rank=rank, world=world, device=device,
                          workers=workers, threads=threads)
    except BaseException:
        _remove_if_empty(created)  # a failed run leaves no empty folder behind
        raise


def _train(data: str | Path, out: Path, cfg: TrainConfig, *, resume: bool,
           stop_after: int | None, progress: Progress, rank: int, world: int,
           device: torch.device, workers: int, threads: int) -> TrainResult:
    import torch

    from pairmine.train.data import open_train_data

    last = out / LAST
    _seed_everything(cfg.seed)
    train_data = open_train_data(data, pair_directions=cfg.pair_directions,
                                 random_duplicates=cfg.random_duplicates, seed=cfg.seed)
    if len(train_data) < cfg.batch_size:
        raise ConfigError(f"{len(train_data)} training items are fewer than one batch "
                          f"({cfg.batch_size})", "lower --batch-size")
    from pairmine.train.moco import MoCo

    assert cfg.moco_k is not None and cfg.moco_m is not None and cfg.bn_groups is not None
    model = MoCo(cfg.arch, dim=cfg.moco_dim, k=cfg.moco_k, m=cfg.moco_m,
                 bn_groups=cfg.bn_groups).to(device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    choice = _choose_precision(cfg, model, device)
    precision = choice.precision
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    start_epoch, history = 0, list[dict[str, Any]]()
    if resume and last.exists():
        start_epoch, history = _restore(last, cfg, train_data.describe(), model, optimizer)
        log.info("resuming %s at epoch %d of %d", out, start_epoch + 1, cfg.epochs)
    if rank == 0:
        _trim_log(out / LOG, start_epoch)
    log.info("training on %s, %s (%s), %d torch threads, %d decode workers", device,
             precision, choice.reason, threads, workers)

    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    loop = _Loop(cfg, model, net, optimizer, train_data, device, precision, rank, world,
                 workers)
    run_info = {"precision": choice.describe(), "threads": threads, "workers": workers}
    end = cfg.epochs if stop_after is None else min(cfg.epochs, start_epoch + stop_after)
    steps_done = sum(int(h["steps"]) for h in history)
    stopped = cfg.max_steps is not None and steps_done >= cfg.max_steps
    for epoch in range(start_epoch, end):
        if stopped:
            break
        limit = None if cfg.max_steps is None else cfg.max_steps - steps_done
        record = loop.run_epoch(epoch, progress, limit)
        steps_done += record["steps"]
        stopped = cfg.max_steps is not None and steps_done >= cfg.max_steps
        history.append(record)
        if rank == 0:
            state = _checkpoint(cfg, model, optimizer, epoch + 1, train_data.describe(), history)
            state["run"] = _plain(run_info)
            _save(out / LAST, state)
            if ((cfg.save_every and (epoch + 1) % cfg.save_every == 0)
                    or epoch + 1 == cfg.epochs or stopped):
                _save(out / f"checkpoint-{epoch + 1:04d}.pt", state)
            with open(out / LOG, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, sort_keys=True) + "\n")
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
    done = history[-1]["epoch"] if history else start_epoch
    complete = done >= cfg.epochs or stopped
    result = TrainResult(out=out, epochs_done=done, epochs=cfg.epochs, checkpoint=last,
                         last_loss=history[-1]["loss"] if history else None,
                         images_per_s=history[-1]["images_per_s"] if history else None,
                         device=str(device), precision=precision,
                         data=train_data.describe(), history=history, complete=complete,
                         rank=rank, steps=steps_done, precision_reason=choice.reason)
    if rank == 0 and complete:
        write_json_atomic(out / SUMMARY, {
            "format": "pairmine/train", "complete": True, "epochs": cfg.epochs,
            "steps": steps_done, "stopped_at_max_steps": stopped,
            "config": asdict(cfg), "data": result.data, "device": str(device),
            "precision": precision, "run": run_info, "last_loss": result.last_loss,
            "checkpoint": LAST, "history": history})
    return result


def _missing_folders(out: Path) -> list[Path]:
    """The folders a run would create for ``out``, deepest first (none if it exists)."""
    missing = []
    out = out.absolute()
    for folder in (out, *out.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders this run created, deepest first, while they are empty: a folder that
    holds anything (a checkpoint of an earlier epoch, a user's file) stays."""
    for folder in folders:
        try:
            folder.rmdir()  # only ever removes an empty folder
        except OSError:
            return


class _Loop:
    """One epoch: batches from CPU workers, stage-2 augmentation and the step on the device."""

    def __init__(self, cfg: TrainConfig, model: MoCo, net: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, data: Any, device: torch.device,
                 precision: str, rank: int, world: int, workers: int) -> None:
        from torch.utils.data import DataLoader, Dataset

        from pairmine.train import data as views_module
        from pairmine.train.augment import DeviceAugment, moco_v2
        from pairmine.train.data import EpochBatches

        assert cfg.image_size is not None
        self.cfg, self.model, self.net, self.optimizer = cfg, model, net, optimizer
        self.device, self.precision, self.rank = device, precision, rank
        self.aug_cfg = moco_v2(cfg.image_size)
        on_device = cfg.augment == "device"
        # device crops take equal-size inputs: CIFAR as is, photos at 256/224 of the crop
        load = cfg.image_size if cfg.cifar else round(cfg.image_size * 256 / 224)
        self.augment = DeviceAugment(self.aug_cfg, geometric=on_device)
        self.batches = EpochBatches(len(data), cfg.batch_size, cfg.seed, rank=rank, world=world)
        views_class = getattr(views_module, METHOD_VIEWS[cfg.method])
        views = views_class(data, self.aug_cfg, cfg.seed, crop=not on_device, load_size=load)
        self.loader: DataLoader[Any] = DataLoader(
            cast("Dataset[Any]", views),
            batch_sampler=self.batches, num_workers=workers,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None)

    def run_epoch(self, epoch: int, progress: Progress,
                  max_steps: int | None = None) -> dict[str, Any]:
        """One epoch, or its first ``max_steps`` steps (``--max-steps``: a partial epoch)."""
        import torch

        from pairmine.train.augment import generator
        from pairmine.train.data import INSTANCE

        cfg = self.cfg
        lr = learning_rate(cfg, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.batches.epoch = epoch
        self.net.train()
        planned = len(self.batches) if max_steps is None else min(len(self.batches), max_steps)
        if self.rank == 0:
            progress.start(f"epoch {epoch + 1}/{cfg.epochs}", total=planned * cfg.batch_size,
                           unit="images")
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        n_semantic = 0
        shown: float | None = None
        t0 = time.perf_counter()
        steps = 0
        for step, (*views, kind) in enumerate(self.loader):
            gen = generator(cfg.seed, "step", epoch, step, self.rank)
            x = [self.augment(v.to(self.device, non_blocking=True), gen) for v in views]
            semantic = (kind != INSTANCE).to(self.device)  # weighted λ (pairs, duplicates)
            loss = train_step(self.model, self.net, self.optimizer, x[0], x[1], semantic,
                              lam=cfg.lam, temperature=float(cfg.temperature or 0.0),
                              precision=self.precision, shuffle=gen,
                              x_k2=x[2] if len(x) > 2 else None,
                              leoclr_queue=cfg.leoclr_queue)
            total += loss.detach().double()
            n_semantic += int((kind != INSTANCE).sum())
            steps += 1
            if step % 10 == 0 or self.device.type == "cpu":  # one host sync per 10 steps on GPU
                shown = float(loss)
            if self.rank == 0:
                rate = steps * cfg.batch_size / max(time.perf_counter() - t0, 1e-9)
                progress.advance(cfg.batch_size, loss=round(shown or 0.0, 4), lr=f"{lr:.4g}",
                                 img_s=round(rate, 1))
            if steps == planned:
                break  # --max-steps: the loader's remaining batches are never decoded
        seconds = time.perf_counter() - t0
        if self.rank == 0:
            progress.finish()
        mean = _mean_over_processes(total, steps)
        if not math.isfinite(mean):
            raise TrainingError(f"training diverged at epoch {epoch + 1} (loss {mean})",
                                "lower --lr, or use --precision fp32")
        record: dict[str, Any] = {
            "epoch": epoch + 1, "loss": mean, "lr": lr, "steps": steps,
            "images": steps * cfg.batch_size, "semantic_items": n_semantic,
            "seconds": round(seconds, 3),
            "images_per_s": round(steps * cfg.batch_size / max(seconds, 1e-9), 1),
            "precision": self.precision, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if steps < len(self.batches):
            record["partial"] = True
        return record


def train_step(model: MoCo, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
               x_q: torch.Tensor, x_k: torch.Tensor, semantic: torch.Tensor, *,
               lam: float, temperature: float, precision: str = "fp32",
               shuffle: torch.Generator | None = None, enqueue: bool = True,
               x_k2: torch.Tensor | None = None, leoclr_queue: str = "both") -> torch.Tensor:
    """One step: forward, the loss against the queue (``semantic`` marks the λ-weighted rows),
    SGD step, then the keys join the queue. MoCo-v2/SePP-ID: ``x_q``, ``x_k`` two views, Eq. 2.
    LeOCLR (``x_k2`` given): ``x_q`` the original X, ``x_k``/``x_k2`` the crops X¹/X²,
    ℓ(X, X¹) + ℓ(X, X²) (pairmine.train.leoclr), ``leoclr_queue`` the keys enqueued. ``net``
    is ``model`` or its DDP wrapper."""
    import torch

    from pairmine.train.leoclr import keys_to_enqueue, leoclr_loss
    from pairmine.train.loss import sepp_id_loss

    with torch.autocast(device_type=x_q.device.type, dtype=torch.bfloat16,
                        enabled=precision == "bf16"):
        q, k, *more = net(x_q, x_k, shuffle, x_k2)
    # the queue as it was before this step's keys join it (MoCo's clone().detach())
    queue = model.queue.clone().detach()
    if more:
        loss = leoclr_loss(q, k, more[0], queue, temperature, semantic, lam)
        k = keys_to_enqueue(k, more[0], leoclr_queue)
    else:
        loss = sepp_id_loss(q, k, queue, temperature, semantic, lam)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    if enqueue:
        model.enqueue(k)
    return loss.detach()


# ---------------------------------------------------------------------------------------------
# checkpoints: tensors and plain types only, so they load with torch.load(weights_only=True)


def _checkpoint(cfg: TrainConfig, model: MoCo, optimizer: torch.optim.Optimizer, epoch: int,
                data: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    from pairmine.stores import pairmine_version
    from pairmine.train.augment import moco_v2

    assert cfg.image_size is not None
    aug = moco_v2(cfg.image_size)
    resize = cfg.image_size if cfg.cifar else round(cfg.image_size * 256 / 224)
    return {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "pairmine_version": pairmine_version(),
        "arch": cfg.arch, "feat_dim": model.feat_dim, "moco_dim": cfg.moco_dim,
        "epoch": epoch, "epochs": cfg.epochs,
        "config": asdict(cfg), "augment": aug.describe(),
        # how embed/eval must feed the encoder: the training normalisation, centre crop
        "preprocess": {"resize": resize, "crop": cfg.image_size, "mean": list(aug.mean),
                       "std": list(aug.std)},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": _to_cpu(optimizer.state_dict()),
        "rng": _rng_state(),
        "data": _plain(data),
        "history": _plain(history),
    }


def _save(path: Path, state: dict[str, Any]) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """A pairmine training checkpoint, loaded with weights_only=True, or a CheckpointError
    (the one reader, ``pairmine.stores.checkpoint``, the ``pairmine:`` encoder uses too)."""
    return read_training_checkpoint(path).state


def _restore(path: Path, cfg: TrainConfig, data: dict[str, Any], model: MoCo,
             optimizer: torch.optim.Optimizer) -> tuple[int, list[dict[str, Any]]]:
    ckpt = load_training_checkpoint(path)
    saved = ckpt["config"]
    # an option a checkpoint predates had its default then
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    changed = [f"{k}: {saved.get(k, defaults[k])!r} → {getattr(cfg, k)!r}" for k in RESUME_FIXED
               if saved.get(k, defaults[k]) != getattr(cfg, k)]
    if changed:
        raise ConfigError(f"cannot resume {path.parent} with other settings: "
                          + "; ".join(changed), "use the options of the first run")
    if ckpt["data"].get("items") != data.get("items") or ckpt["data"].get("spec") != data.get(
            "spec"):
        raise ConfigError(f"cannot resume {path.parent}: the training data changed "
                          f"({ckpt['data'].get('spec')}, {ckpt['data'].get('items')} items → "
                          f"{data.get('spec')}, {data.get('items')} items)",
                          "resume with the same DATA")
    if saved.get("epochs") != cfg.epochs:
        log.warning("resuming with --epochs %s instead of %s: the learning-rate schedule "
                    "follows the new total from here on", cfg.epochs, saved.get("epochs"))
    model.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    _set_rng_state(ckpt["rng"])
    return int(ckpt["epoch"]), list(ckpt.get("history", []))


def _trim_log(path: Path, epochs: int) -> None:
    """Drop log lines of epochs after the checkpoint (an epoch that crashed mid-write)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text(encoding="utf-8").splitlines()
            if ln.strip() and int(json.loads(ln)["epoch"]) <= epochs]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")


def _rng_state() -> dict[str, Any]:
    import random

    import numpy as np
    import torch

    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npk = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": npk["key"].numpy().astype(np.uint32),
                                   "pos": npk["pos"]},
                         "has_gauss": npk["has_gauss"], "gauss": npk["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_cpu(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _plain(obj: Any) -> Any:
    """JSON round trip: only str/int/float/bool/None/list/dict (weights_only-safe)."""
    return json.loads(json.dumps(obj, default=str))


# ---------------------------------------------------------------------------------------------
# where to run


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _init_distributed(device: str) -> tuple[int, int, int]:
    """(rank, world, local rank): torchrun's environment, else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_nccl = device != "cpu" and torch.cuda.is_available()
        if use_nccl:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_nccl else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


def _device(device: str, world: int, local_rank: int) -> torch.device:
    import torch

    from pairmine.runtime import resolve_device

    name = resolve_device(device)
    if name.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its kernels
        if world > 1:
            return torch.device("cuda", local_rank)
        return torch.device(name) if ":" in name else torch.device("cuda",
                                                                  torch.cuda.current_device())
    return torch.device(name)


def _precision(precision: str, device: torch.device) -> str:
    from pairmine.runtime import resolve_precision

    # the policy embed uses, without a trial: explicit values checked, auto → fp32 on a CPU
    return resolve_precision(precision, str(device), choices=PRECISION_CHOICES)


def _choose_precision(cfg: TrainConfig, model: MoCo, device: torch.device) -> PrecisionChoice:
    """``--precision``, or for ``auto`` on a CPU with native bf16 a timed trial of this run's
    own step (:func:`pairmine.runtime.choose_precision`). Under torchrun rank 0's choice is
    every process's."""
    from pairmine.runtime import PrecisionChoice, choose_precision, needs_trial

    step = _trial_step(cfg, model, device) if needs_trial(cfg.precision, str(device)) else None
    choice = choose_precision(cfg.precision, str(device), step, choices=PRECISION_CHOICES)
    from pairmine.train.moco import _distributed

    if _distributed():
        import torch.distributed as dist

        shared: list[Any] = [choice]
        dist.broadcast_object_list(shared, src=0)
        choice = cast(PrecisionChoice, shared[0])
    return choice


def _trial_step(cfg: TrainConfig, model: MoCo, device: torch.device) -> Callable[[str], None]:
    """One training step of a copy of the run's model (weights, batch-norm statistics and
    queue of the run untouched) on a fixed random batch of up to 64 items, in a precision."""
    import copy

    import torch

    assert cfg.bn_groups is not None and cfg.image_size is not None
    trial = copy.deepcopy(model)
    optimizer = torch.optim.SGD([p for p in trial.parameters() if p.requires_grad], lr=cfg.lr,
                                momentum=cfg.momentum)
    n = cfg.bn_groups * max(1, min(cfg.batch_size, 64) // cfg.bn_groups)
    gen = torch.Generator().manual_seed(0)
    size = cfg.image_size
    views = [torch.randn(n, 3, size, size, generator=gen).to(device)
             for _ in range(3 if cfg.method == "leoclr" else 2)]
    semantic = torch.zeros(n, dtype=torch.bool, device=device)

    def step(precision: str) -> None:
        train_step(trial, trial, optimizer, views[0], views[1], semantic, lam=cfg.lam,
                   temperature=float(cfg.temperature or 0.1), precision=precision,
                   shuffle=gen, x_k2=views[2] if len(views) > 2 else None,
                   leoclr_queue=cfg.leoclr_queue)

    return step


def _workers(workers: int | None, device: torch.device) -> int:
    from pairmine.runtime import cpu_count

    if workers is not None:
        return workers
    # on a CPU run the workers compete with the model for the cores: keep one for decoding
    return min(8, cpu_count()) if device.type == "cuda" else min(1, cpu_count() - 1)


def _threads_beside(workers: int) -> int:
    from pairmine.runtime import default_threads

    return default_threads(workers)


def _mean_over_processes(total: torch.Tensor, steps: int) -> float:
    import torch

    from pairmine.train.moco import _distributed

    if _distributed():
        import torch.distributed as dist

        buf = torch.stack([total, torch.tensor(float(steps), dtype=torch.float64,
                                               device=total.device)])
        dist.all_reduce(buf)
        return float(buf[0] / buf[1].clamp(min=1))
    return float(total) / max(steps, 1)
