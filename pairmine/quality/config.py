"""The options of the quality tools, one config each: ``eval`` (:class:`EvalConfig`),
``calibrate`` (:class:`CalibrateConfig`) and ``eval-pairs`` (:class:`EvalPairsConfig`).

Each field is declared once, with its CLI flag and help (``pairmine.config.setting``), and is
checked in ``__post_init__``, so ``calibrate(emb, floor=2.0)`` and ``pairmine calibrate EMB
--floor 2`` fail with the same :class:`~pairmine.errors.ConfigError` before any work. Checks
that need the data (``--labels-sample`` larger than the labelled images, ``--grid-floor`` above
the band's min) stay in the stage functions.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pairmine.config import (
    StageConfig,
    check_bool,
    check_choice,
    check_device,
    check_int,
    check_number,
    setting,
)
from pairmine.errors import ConfigError

OPTIMIZERS = ("sgd", "lbfgs")
DEFAULT_KS = (1, 5, 10)

LABELS_HELP = ("A .csv or .parquet naming each image (a key, path or filename column) and "
               "its label (a label or class column) [default: the labels in the embeddings "
               "metadata].")


def engine_names() -> list[str]:
    """``--engine``'s choices: auto and every registered band-search engine (read when the
    help is shown or a config is checked, so importing this module loads no engine)."""
    from pairmine.engines import engine_names as names

    return names()


def feature_options() -> list[str]:
    """``--features``'s choices: every pooling an encoder kind may offer."""
    from pairmine.encoders.base import FEATURE_OPTIONS

    return list(FEATURE_OPTIONS)


def check_optional_number(flag: str, value: object) -> None:
    if value is not None:
        check_number(flag, value)


# ---------------------------------------------------------------------------------------------
# pairmine eval


@dataclass(frozen=True, kw_only=True)
class EvalConfig(StageConfig):
    """How ``pairmine.quality.evaluate`` measures a frozen encoder: the kNN monitor (k, t)
    and the linear probe on cached features (epochs, optimizer, lr, weight decay)."""

    features: str | None = setting(
        "backbone", choices=feature_options,
        help="Frozen pooled backbone (the usual protocol) or head; for ViT kinds cls or mean "
             "(see `pairmine encoders`).")
    arch: str | None = setting(None, help="Architecture override for encoder SPECs.")
    k: int = setting(200, minimum=1, help="Neighbours of the kNN monitor.")
    t: float = setting(0.07, help="Temperature of the kNN votes, exp(sim / t).")
    knn: bool = setting(True, flag="--knn/--no-knn",
                        help="Run the weighted kNN monitor (cosine, --k neighbours).")
    linear: bool = setting(True, flag="--linear/--no-linear",
                           help="Train and test a linear probe on the frozen features.")
    linear_epochs: int = setting(100, minimum=1, help="Epochs of the linear probe.")
    linear_optimizer: str = setting("sgd", choices=OPTIMIZERS,
                                    help="Optimizer of the linear probe.")
    linear_lr: float = setting(0.1, help="Learning rate of the linear probe.")
    linear_weight_decay: float = setting(0.0, help="Weight decay of the linear probe.")
    batch_size: int = setting(256, minimum=1, help="Images per encoder batch.")
    device: str = setting("auto", kind="device", help="Where the encoder and the probe run.")
    workers: int | None = setting(None, minimum=0,
                                  help="Decode workers [default: as for embed].")
    seed: int = setting(0, help="Seed of the linear probe's initialisation and batches.")
    # setting() declares the field; its default (None) is immutable
    out: str | Path | None = setting(None, kind="path",  # noqa: RUF009
                                     help="Write the results as JSON here.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.features is not None:
            check_choice("--features", self.features, feature_options())
        if self.arch is not None and not isinstance(self.arch, str):
            raise ConfigError(f"--arch {self.arch!r} is not a name", "e.g. --arch resnet50")
        check_bool("--knn", self.knn)
        check_bool("--linear", self.linear)
        check_int("--k", self.k)
        check_number("--t", self.t)
        if self.k < 1 or self.t <= 0:
            raise ConfigError("--k must be >= 1 and --t > 0")
        check_choice("--linear-optimizer", self.linear_optimizer, OPTIMIZERS)
        check_int("--linear-epochs", self.linear_epochs)
        if self.linear and self.linear_epochs < 1:
            raise ConfigError("--linear-epochs must be >= 1 (or pass --no-linear)")
        if not (self.knn or self.linear):
            raise ConfigError("nothing to evaluate", "leave --knn or --linear on")
        check_number("--linear-lr", self.linear_lr)
        check_number("--linear-weight-decay", self.linear_weight_decay)
        check_int("--batch-size", self.batch_size, minimum=1)
        check_int("--workers", self.workers, minimum=0, optional=True)
        check_int("--seed", self.seed)
        check_device(self.device)


# ---------------------------------------------------------------------------------------------
# pairmine calibrate


@dataclass(frozen=True, kw_only=True)
class CalibrateConfig(StageConfig):
    """How ``pairmine.quality.calibrate`` measures a grid of bands and which band it
    suggests: the grid (floor, step), the target, the labels and the search."""

    target_precision: float | None = setting(
        None, metavar="P",
        help="Suggest the band with the most pairs whose precision is >= P (95% confidence). "
             "Needs labels.")
    target_yield: float | None = setting(
        None, metavar="Y",
        help="Suggest a band with >= Y positives per image (the most precise one when labels "
             "are known).")
    labels: str | Path | None = setting(  # noqa: RUF009 - a None default, immutable
        None, kind="path", metavar="FILE", help=LABELS_HELP)
    use_labels: bool = setting(
        True, negate="--no-labels",
        help="Ignore all labels: a label-free suggestion (use with --target-yield).")
    labels_sample: int | None = setting(
        None, metavar="N", minimum=2,
        help="Measure precision with the labels of N random images only (pairs with both "
             "ends among them): what hand-labelling N images would tell.")
    floor: float = setting(0.9, help="Lowest score kept by the one search; the grid starts "
                                     "here.")
    step: float = setting(0.005, help="Grid spacing of both bounds.")
    max_cap: float = setting(0.99, help="Suggest only bands with max <= this (keeps "
                                        "near-identical images out).")
    min_support: int = setting(30, minimum=1,
                               help="Labelled pairs a band needs before its precision counts.")
    subset: str | float | int | None = setting(
        None, metavar="FRACTION|COUNT",
        help="Search only these random anchors against every image (cheaper; yields per image "
             "stay unbiased).")
    seed: int = setting(0, help="Seed of --subset and --labels-sample.")
    engine: str = setting("auto", choices=engine_names, help="Band-search engine.")
    device: str = setting("auto", kind="device", help="Where the search runs.")
    max_pairs: int | None = setting(
        None, cli=False,
        help="Most pairs above the floor the one search may keep (default: the band "
             "module's bound); more is an error that says to raise the floor.")
    out: str | Path | None = setting(  # noqa: RUF009 - a None default, immutable
        None, kind="path", metavar="JSON", help="Write the whole grid and the suggestion as JSON.")

    def __post_init__(self) -> None:
        """Every option checked before any work (and before anything is written)."""
        from pairmine import stores

        super().__post_init__()
        check_optional_number("--target-precision", self.target_precision)
        check_optional_number("--target-yield", self.target_yield)
        check_number("--floor", self.floor)
        check_number("--step", self.step)
        check_number("--max-cap", self.max_cap)
        check_int("--labels-sample", self.labels_sample, optional=True)
        check_int("--min-support", self.min_support)
        check_int("max_pairs", self.max_pairs, minimum=1, optional=True)
        check_bool("--no-labels", self.use_labels)
        if self.target_precision is not None and self.target_yield is not None:
            raise ConfigError("--target-precision and --target-yield are alternatives",
                              "give one of them")
        if not -1.0 <= self.floor < 1.0:
            raise ConfigError(f"--floor {self.floor} is outside [-1, 1)", "e.g. --floor 0.9")
        if not 0 < self.step <= 0.5:
            raise ConfigError(f"--step {self.step} is outside (0, 0.5]", "e.g. --step 0.005")
        if not self.floor < self.max_cap <= 1.0:
            raise ConfigError(f"--max-cap {self.max_cap} must lie in ({self.floor}, 1] "
                              "(above the floor)")
        if self.target_precision is not None and not 0.0 < self.target_precision <= 1.0:
            raise ConfigError(f"--target-precision {self.target_precision} is outside (0, 1]",
                              "a share, e.g. 0.9 for 90% of pairs with the same label")
        if self.target_yield is not None and self.target_yield <= 0:
            raise ConfigError(f"--target-yield {self.target_yield} must be > 0",
                              "positives per image, e.g. 1.0")
        if self.labels_sample is not None and self.labels_sample < 2:
            raise ConfigError(f"--labels-sample {self.labels_sample} must be >= 2")
        if self.min_support < 1:
            raise ConfigError(f"--min-support {self.min_support} must be >= 1")
        if not self.use_labels and (self.needs_labels or self.labels is not None):
            what = self.labels_flag if self.needs_labels else "--labels"
            raise ConfigError(f"--no-labels excludes {what}", "drop one of them")
        stores.parse_subset(self.subset)  # the --subset match parses
        stores.check_seed(self.seed)
        check_choice("--engine", self.engine, engine_names())
        check_device(self.device)

    @property
    def needs_labels(self) -> bool:
        """Whether the options measure precision, so the store must have labels."""
        return self.target_precision is not None or self.labels_sample is not None

    @property
    def labels_flag(self) -> str:
        """The option that asks for labels, named when they are missing."""
        return "--target-precision" if self.target_precision is not None else "--labels-sample"


# ---------------------------------------------------------------------------------------------
# pairmine eval-pairs


@dataclass(frozen=True, kw_only=True)
class EvalPairsConfig(StageConfig):
    """What ``pairmine.quality.eval_pairs`` measures next to the pair accuracy: the
    neighbour baselines (ks) and the precision–yield grid."""

    labels: str | Path | None = setting(  # noqa: RUF009 - a None default, immutable
        None, kind="path", metavar="FILE", help=LABELS_HELP)
    # the CLI spells it 1,5,10 (kind "ints"); any sequence of integers is kept as a tuple
    ks: Sequence[int] = setting(
        DEFAULT_KS, flag="--k", kind="ints", metavar="TEXT",
        help="Neighbour baselines: each image's k nearest neighbours.")
    grid_floor: float | None = setting(
        None, help="Lowest bound of the precision–yield grid [default: the band's min - 0.05].")
    grid_step: float = setting(0.01, minimum=0.0, minimum_open=True,
                               help="Spacing of the grid's lower bounds.")
    grid: bool = setting(True, negate="--no-grid",
                         help="Skip the precision–yield grid (one search).")
    engine: str = setting("auto", choices=engine_names, help="Band-search engine for the grid.")
    device: str = setting("auto", kind="device", help="Where the grid's search runs.")
    out: str | Path | None = setting(  # noqa: RUF009 - a None default, immutable
        None, kind="path", metavar="JSON", help="Also write every figure as JSON.")

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "ks", parse_ks(self.ks))  # frozen: normalised once, here
        check_optional_number("--grid-floor", self.grid_floor)
        if self.grid_floor is not None and not -1.0 <= self.grid_floor <= 1.0:
            raise ConfigError(f"--grid-floor {self.grid_floor} is outside [-1, 1]",
                              "e.g. --grid-floor 0.9")
        check_number("--grid-step", self.grid_step)
        check_bool("--no-grid", self.grid)
        if self.grid_step <= 0:
            raise ConfigError(f"--grid-step {self.grid_step} must be > 0", "e.g. --grid-step 0.01")
        check_choice("--engine", self.engine, engine_names())
        check_device(self.device)


def parse_ks(value: object) -> tuple[int, ...]:
    """``--k``: integers >= 1, as a sequence or as the CLI's comma-separated text."""
    if isinstance(value, str):
        try:
            value = [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--k {value!r} is not a comma-separated list of integers",
                              "e.g. --k 1,5,10") from None
    if not isinstance(value, Sequence) or not value or \
            any(isinstance(k, bool) or not isinstance(k, numbers.Integral) for k in value):
        raise ConfigError(f"--k {value!r} is not a list of integers", "e.g. --k 1,5,10")
    ks = tuple(int(k) for k in value)  # numpy integers too
    if any(k < 1 for k in ks):
        raise ConfigError(f"k must be >= 1 (got {', '.join(map(str, ks))})",
                          "give integers >= 1, e.g. --k 1,5,10")
    return ks
