"""Evaluate a frozen encoder on a labelled train/test pair (``pairmine eval``): kNN monitor
and linear probe.

- kNN (InstDisc / MoCo monitor): L2-normalised features, cosine similarity to every train
  feature, the k = 200 nearest vote for their class with weight exp(sim / t), t = 0.07.
- Linear probe: the backbone is frozen and its features are computed once (no augmentation),
  standardised with the train statistics, then a linear classifier is trained on the cached
  features: SGD (momentum 0.9, cosine schedule, ``linear_epochs`` epochs; the paper trains
  100) or full-batch L-BFGS. He et al.'s protocol trains on augmented crops instead; cached
  features are the usual cheap variant and say so in the result.

The encoder is any ``--encoder`` SPEC (``pairmine.encoders``), or a path to a ``pairmine
train`` checkpoint or output directory (read as ``pairmine:PATH``). The protocol's options are
an :class:`~pairmine.quality.config.EvalConfig` (or the same fields as keyword arguments).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pairmine.errors import SourceError
from pairmine.progress import NullProgress, Progress
from pairmine.quality.config import EvalConfig

if TYPE_CHECKING:
    import torch

    from pairmine.encoders import Encoder, Preprocess
    from pairmine.sources import ImageSource

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    encoder: dict[str, Any]
    train: dict[str, Any]
    test: dict[str, Any]
    features: str
    dim: int
    knn: dict[str, Any] | None = None
    linear: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"

    def to_json(self) -> dict[str, Any]:
        return {"format": "pairmine/eval", **asdict(self)}


def resolve_encoder_spec(spec: str) -> str:
    """A path to a training checkpoint (or its OUT directory) becomes ``pairmine:PATH``."""
    if Path(spec).exists():
        return f"pairmine:{spec}"
    return spec


def evaluate(encoder: str, train: str | Path, test: str | Path,
             config: EvalConfig | None = None, *, progress: Progress | None = None,
             **options: Any) -> EvalResult:
    """kNN accuracy and linear-probe accuracy of ``encoder``'s frozen features, fitted on the
    labelled images ``train`` and measured on ``test`` (image source specs)."""
    config = EvalConfig.build(config, options)
    import torch

    import pairmine.encoders.pairmine_ckpt  # noqa: F401 - registers `pairmine:` (idempotent)
    from pairmine.encoders import load_encoder
    from pairmine.runtime import resolve_device
    from pairmine.sources import open_source

    progress = progress or NullProgress()
    dev = torch.device(resolve_device(config.device))
    enc = load_encoder(resolve_encoder_spec(encoder), arch=config.arch,
                       features=config.features)
    enc.model.to(dev).eval()
    timings: dict[str, float] = {}

    sets = {}
    for name, spec in (("train", train), ("test", test)):
        source = open_source(str(spec))
        t0 = time.perf_counter()
        feats, labels = extract_features(enc, source, name=name, batch_size=config.batch_size,
                                         device=dev, workers=config.workers, progress=progress)
        timings[f"features_{name}_s"] = round(time.perf_counter() - t0, 3)
        sets[name] = (feats, labels, {"spec": str(spec), "count": int(labels.shape[0]),
                                      "source": source.describe()})
    train_f, train_y, train_info = sets["train"]
    test_f, test_y, test_info = sets["test"]
    classes = int(max(int(train_y.max()), int(test_y.max())) + 1)
    result = EvalResult(encoder=enc.describe(), train={**train_info, "classes": classes},
                        test=test_info, features=enc.features, dim=enc.dim, device=str(dev))
    if config.knn:
        t0 = time.perf_counter()
        pred = knn_predict(train_f.to(dev), train_y.to(dev), test_f.to(dev), classes,
                           k=config.k, t=config.t)
        top1 = float((pred.cpu() == test_y).double().mean())
        result.knn = {"top1": top1, "k": min(config.k, int(train_y.shape[0])), "t": config.t}
        timings["knn_s"] = round(time.perf_counter() - t0, 3)
    if config.linear:
        t0 = time.perf_counter()
        result.linear = linear_probe(train_f, train_y, test_f, test_y, classes,
                                     epochs=config.linear_epochs,
                                     optimizer=config.linear_optimizer, lr=config.linear_lr,
                                     weight_decay=config.linear_weight_decay, seed=config.seed,
                                     device=dev, progress=progress)
        timings["linear_s"] = round(time.perf_counter() - t0, 3)
    result.timings = timings
    if config.out is not None:
        from pairmine.stores import write_json_atomic

        write_json_atomic(Path(config.out), result.to_json())
    return result


# ---------------------------------------------------------------------------------------------
# features


class _EvalImages:
    """Image i → (uint8 (3, crop, crop) resized and centre-cropped, label)."""

    def __init__(self, source: ImageSource, labels: list[int], preprocess: Preprocess) -> None:
        self.source, self.labels = source, labels
        self.resize, self.crop = preprocess.resize, preprocess.crop
        self.interpolation, self.resize_mode = preprocess.interpolation, preprocess.resize_mode

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from pairmine.images import ImageDecodeError, decode_rgb
        from pairmine.transforms import resize_center_crop

        try:
            img = decode_rgb(self.source.read(i), draft_size=self.resize)
        except ImageDecodeError as exc:
            raise SourceError(f"image {i} of the evaluation source cannot be decoded: {exc}",
                              "remove or fix the image") from None
        return resize_center_crop(img, self.resize, self.crop,
                                  interpolation=self.interpolation,
                                  resize_mode=self.resize_mode), self.labels[i]


def source_labels(source: ImageSource, name: str) -> list[int]:
    labels = source.refs().column("label").to_pylist()
    missing = sum(v is None for v in labels)
    if missing:
        raise SourceError(f"the {name} source has {missing} of {len(labels)} images without a "
                          "label", "evaluation needs labels: class sub-folders, a label "
                          "column, or CIFAR/STL labelled splits")
    if not labels:
        raise SourceError(f"the {name} source holds no images")
    return [int(v) for v in labels]


def extract_features(enc: Encoder, source: ImageSource, *, name: str, batch_size: int,
                     device: torch.device, workers: int | None,
                     progress: Progress) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features (N, dim) float32 on the CPU and labels (N,) int64."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    from pairmine.runtime import cpu_count

    labels = source_labels(source, name)
    n_workers = min(8, cpu_count()) if workers is None else workers
    images = cast("Dataset[Any]", _EvalImages(source, labels, enc.preprocess))
    loader: DataLoader[Any] = DataLoader(images, batch_size=batch_size,
                        shuffle=False, num_workers=n_workers, pin_memory=device.type == "cuda")
    mean = torch.tensor(enc.preprocess.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(enc.preprocess.std, device=device).view(1, 3, 1, 1)
    feats, ys = [], []
    progress.start(f"features ({name})", total=len(labels), unit="images")
    with torch.inference_mode():
        for x, y in loader:
            x = (x.to(device, non_blocking=True).float() / 255.0 - mean) / std
            feats.append(enc.model(x).float().cpu())
            ys.append(y)
            progress.advance(int(y.shape[0]))
    progress.finish()
    return torch.cat(feats), torch.cat(ys).long()


# ---------------------------------------------------------------------------------------------
# kNN monitor


def knn_predict(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor,
                classes: int, *, k: int = 200, t: float = 0.07,
                chunk: int = 1024) -> torch.Tensor:
    """Weighted kNN: each of the k most cosine-similar train rows votes exp(sim / t) for its
    class; the class with the largest sum wins. Returns (M,) predictions."""
    import torch
    import torch.nn.functional as F

    train_n = F.normalize(train_f.float(), dim=1)
    k = min(k, train_n.shape[0])
    preds = []
    for start in range(0, test_f.shape[0], chunk):
        q = F.normalize(test_f[start:start + chunk].float(), dim=1)
        sim, idx = (q @ train_n.T).topk(k, dim=1)  # (m, k)
        votes = torch.zeros(q.shape[0], classes, device=q.device)
        votes.scatter_add_(1, train_y[idx], (sim / t).exp())
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


# ---------------------------------------------------------------------------------------------
# linear probe


def linear_probe(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor,
                 test_y: torch.Tensor, classes: int, *, epochs: int = 100,
                 optimizer: str = "sgd", lr: float = 0.1, weight_decay: float = 0.0,
                 batch_size: int = 256, seed: int = 0, device: torch.device | None = None,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Train a linear classifier on cached, standardised features; top-1/top-5 on test."""
    import torch
    import torch.nn.functional as F

    progress = progress or NullProgress()
    dev = device or torch.device("cpu")
    mean = train_f.mean(dim=0, keepdim=True)
    std = train_f.std(dim=0, keepdim=True).clamp(min=1e-6)  # standardise with train stats
    xtr = ((train_f - mean) / std).to(dev)
    xte = ((test_f - mean) / std).to(dev)
    ytr, yte = train_y.to(dev), test_y.to(dev)
    gen = torch.Generator().manual_seed(seed)
    clf = torch.nn.Linear(xtr.shape[1], classes).to(dev)
    with torch.no_grad():  # seeded init, independent of the global RNG
        bound = 1.0 / math.sqrt(xtr.shape[1])
        clf.weight.copy_((torch.rand(clf.weight.shape, generator=gen) * 2 - 1) * bound)
        clf.bias.zero_()
    n = xtr.shape[0]
    progress.start(f"linear probe ({optimizer})", total=epochs, unit="epochs")
    if optimizer == "sgd":
        opt = torch.optim.SGD(clf.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
        steps = max(1, math.ceil(n / batch_size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen).to(dev)
            for s in range(steps):
                idx = perm[s * batch_size:(s + 1) * batch_size]
                loss = F.cross_entropy(clf(xtr[idx]), ytr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                sched.step()
            progress.advance(1, loss=round(float(loss.detach()), 4))
    else:
        opt_lb = torch.optim.LBFGS(clf.parameters(), lr=1.0, max_iter=20,
                                   history_size=20, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt_lb.zero_grad(set_to_none=True)
            loss = F.cross_entropy(clf(xtr), ytr)
            if weight_decay:
                loss = loss + 0.5 * weight_decay * clf.weight.pow(2).sum()
            loss.backward()  # type: ignore[no-untyped-call]
            return loss

        for _ in range(epochs):  # an "epoch" = one L-BFGS step of up to 20 iterations
            loss = opt_lb.step(closure)  # type: ignore[no-untyped-call]
            progress.advance(1, loss=round(float(loss.detach()), 4))
    progress.finish()
    with torch.no_grad():
        logits = clf(xte)
        top1 = float((logits.argmax(1) == yte).double().mean())
        top5 = None
        if classes > 5:
            top5 = float((logits.topk(5, dim=1).indices == yte[:, None]).any(1).double().mean())
        train_top1 = float((clf(xtr).argmax(1) == ytr).double().mean())
    return {"top1": top1, "top5": top5, "train_top1": train_top1, "epochs": epochs,
            "optimizer": optimizer, "lr": lr, "weight_decay": weight_decay,
            "protocol": "frozen features cached once, standardised, no augmentation"}
