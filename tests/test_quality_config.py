"""The quality tools' configs are their API: ``EvalConfig`` (``pairmine eval``),
``CalibrateConfig`` (``pairmine calibrate``) and ``EvalPairsConfig`` (``pairmine eval-pairs``).
Keyword arguments, the dataclass and the CLI give the same report; every bad value is a
``ConfigError`` from the API before any work and one line, exit 1, from the CLI; an unknown
keyword names itself; every field is a flag of its command."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_evaluate import colour_split
from test_quality import clustered, write_emb, write_pairs

from pairmine import stores
from pairmine.cli import cli
from pairmine.config import StageConfig
from pairmine.errors import ConfigError
from pairmine.quality import (
    CalibrateConfig,
    EvalConfig,
    EvalPairsConfig,
    calibrate,
    eval_pairs,
    evaluate,
)


def report(path: Path) -> str:
    """A JSON report as written, without its wall-clock timings (key order kept)."""
    data = json.loads(path.read_text())
    data.pop("timings")
    return json.dumps(data)


@pytest.fixture(scope="module")
def emb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x, y = clustered(240, 12, 4, 0.45, seed=7)
    return write_emb(tmp_path_factory.mktemp("emb"), x, y,
                     class_names=["ant", "bee", "cow", "doe"])


@pytest.fixture(scope="module")
def pairs(emb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    subset = np.arange(0, 240, 2, dtype=np.int64)
    return write_pairs(tmp_path_factory.mktemp("pairs"), emb, 0.9, 0.99, subset=subset)


@pytest.fixture(scope="module")
def labels_file(emb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every key with its label as a class name: the --labels path of both tools."""
    store = stores.open_embeddings(emb)
    keys = store.meta.column("key").to_pylist()
    codes = store.meta.column("label").to_pylist()
    path = tmp_path_factory.mktemp("labels") / "labels.csv"
    path.write_text("key,label\n" + "".join(f"{k},class{c}\n" for k, c in zip(keys, codes,
                                                                             strict=True)))
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Labelled train/test colour folders and a randomly initialised CIFAR ResNet-20."""
    from pairmine.encoders.he_resnet import CifarResNet

    root = tmp_path_factory.mktemp("toy")
    torch.manual_seed(0)
    weights = root / "resnet20.th"
    torch.save({"state_dict": CifarResNet(20, 4).state_dict()}, weights)
    return colour_split(root / "train", 6, seed=1), colour_split(root / "test", 3, seed=2), \
        weights


# ---------------------------------------------------------------------------------------------
# keywords, the dataclass and the CLI: one report


def test_calibrate_keywords_config_and_cli_agree(emb: Path, labels_file: Path,
                                                 tmp_path: Path) -> None:
    # every option away from its default, so that a field lost on the way would show
    options: dict[str, Any] = {
        "target_precision": 0.6, "labels": labels_file, "labels_sample": 120, "floor": 0.85,
        "step": 0.02, "max_cap": 0.98, "min_support": 5, "subset": 0.5, "seed": 3,
        "engine": "torch", "device": "cpu", "max_pairs": 1_000_000}
    flags = ["--target-precision", "0.6", "--labels", str(labels_file), "--labels-sample",
             "120", "--floor", "0.85", "--step", "0.02", "--max-cap", "0.98", "--min-support",
             "5", "--subset", "0.5", "--seed", "3", "--engine", "torch", "--device", "cpu"]
    by_keywords = calibrate(emb, out=tmp_path / "kwargs.json", **options)
    by_config = calibrate(emb, CalibrateConfig(**options), out=tmp_path / "config.json")
    # a config with keywords on top: the keywords win
    on_top = calibrate(emb, CalibrateConfig(**{**options, "floor": 0.5, "seed": 9}),
                       floor=0.85, seed=3, out=tmp_path / "mixed.json")
    res = CliRunner().invoke(cli, ["calibrate", str(emb), *flags,
                                   "--out", str(tmp_path / "cli.json")])
    assert res.exit_code == 0, res.output
    assert by_keywords.anchors == 120 and by_keywords.labels_sample == 120
    assert by_keywords.suggestion is not None and by_keywords.pairs_above_floor > 0
    assert by_keywords.labels == str(labels_file)
    reference = report(tmp_path / "kwargs.json")
    for name in ("config", "mixed", "cli"):
        assert report(tmp_path / f"{name}.json") == reference, name
    assert by_config.bands == by_keywords.bands == on_top.bands


def test_eval_pairs_keywords_config_and_cli_agree(pairs: Path, labels_file: Path,
                                                  tmp_path: Path) -> None:
    options: dict[str, Any] = {"labels": labels_file, "ks": (1, 3), "grid_floor": 0.8,
                               "grid_step": 0.02, "engine": "torch", "device": "cpu"}
    flags = ["--labels", str(labels_file), "--k", "1,3", "--grid-floor", "0.8", "--grid-step",
             "0.02", "--engine", "torch", "--device", "cpu"]
    by_keywords = eval_pairs(pairs, out=tmp_path / "kwargs.json", **options)
    eval_pairs(pairs, EvalPairsConfig(**options), out=tmp_path / "config.json")
    # the CLI's text and a list name the same ks
    eval_pairs(pairs, EvalPairsConfig(**{**options, "ks": "1,3"}), out=tmp_path / "text.json")
    res = CliRunner().invoke(cli, ["eval-pairs", str(pairs), *flags,
                                   "--out", str(tmp_path / "cli.json")])
    assert res.exit_code == 0, res.output
    assert [nb.k for nb in by_keywords.baselines] == [1, 3]
    assert by_keywords.grid_floor == 0.8 and by_keywords.bands
    assert by_keywords.labels == str(labels_file)
    reference = report(tmp_path / "kwargs.json")
    for name in ("config", "text", "cli"):
        assert report(tmp_path / f"{name}.json") == reference, name
    no_grid = eval_pairs(pairs, EvalPairsConfig(**options), grid=False)
    assert no_grid.bands == [] and no_grid.accuracy == by_keywords.accuracy


def test_evaluate_keywords_config_and_cli_agree(toy: tuple[Path, Path, Path],
                                                tmp_path: Path) -> None:
    train, test, weights = toy
    spec = f"cifar-resnet:{weights}"
    options: dict[str, Any] = {"features": "head", "k": 5, "t": 0.1, "linear_epochs": 3,
                               "linear_optimizer": "lbfgs", "linear_lr": 0.5,
                               "linear_weight_decay": 1e-4, "batch_size": 7, "device": "cpu",
                               "workers": 0, "seed": 4}
    flags = ["--features", "head", "--k", "5", "--t", "0.1", "--linear-epochs", "3",
             "--linear-optimizer", "lbfgs", "--linear-lr", "0.5", "--linear-weight-decay",
             "1e-4", "--batch-size", "7", "--device", "cpu", "--workers", "0", "--seed", "4"]
    torch.set_num_threads(1)  # one thread: the same float sums in every run
    by_keywords = evaluate(spec, train, test, out=tmp_path / "kwargs.json", **options)
    evaluate(spec, train, test, EvalConfig(**options), out=tmp_path / "config.json")
    res = CliRunner().invoke(cli, ["eval", spec, "--train", str(train), "--test", str(test),
                                   *flags, "--out", str(tmp_path / "cli.json")])
    assert res.exit_code == 0, res.output
    assert by_keywords.features == "head" and by_keywords.dim == 4
    assert by_keywords.knn is not None and by_keywords.knn["k"] == 5
    assert by_keywords.linear is not None and by_keywords.linear["optimizer"] == "lbfgs"
    assert by_keywords.linear["epochs"] == 3 and by_keywords.linear["lr"] == 0.5
    reference = report(tmp_path / "kwargs.json")
    for name in ("config", "cli"):
        assert report(tmp_path / f"{name}.json") == reference, name
    knn_only = evaluate(spec, train, test, EvalConfig(**options), linear=False)
    assert knn_only.linear is None and knn_only.knn == by_keywords.knn


def test_text_lists_and_numbers_give_one_config() -> None:
    listed = EvalPairsConfig(ks=[1, 5])
    assert EvalPairsConfig(ks="1,5") == listed  # type: ignore[arg-type]  # the CLI's text
    assert EvalPairsConfig(ks=(np.int64(1), 5)) == listed  # type: ignore[arg-type]  # numpy
    assert EvalPairsConfig(ks=[1, 5]).ks == (1, 5)
    assert EvalPairsConfig().ks == (1, 5, 10)
    assert CalibrateConfig(target_yield=1) == CalibrateConfig(target_yield=1)
    assert EvalConfig.build(EvalConfig(k=7), {"t": 0.2}) == EvalConfig(k=7, t=0.2)


# ---------------------------------------------------------------------------------------------
# bad values: a ConfigError from the API, before any work


BAD: list[tuple[type[StageConfig], dict[str, Any], str]] = [
    (EvalConfig, {"k": 0}, "--k must be >= 1 and --t > 0"),
    (EvalConfig, {"t": 0.0}, "--k must be >= 1 and --t > 0"),
    (EvalConfig, {"k": 2.5}, "--k 2.5 is not an integer"),
    (EvalConfig, {"t": "hot"}, "--t 'hot' is not a finite number"),
    (EvalConfig, {"features": "pooled"}, "unknown --features 'pooled'"),
    (EvalConfig, {"arch": 50}, "--arch 50 is not a name"),
    (EvalConfig, {"knn": "no"}, "--knn 'no' is not True or False"),
    (EvalConfig, {"linear_optimizer": "adam"}, "unknown --linear-optimizer 'adam'"),
    (EvalConfig, {"linear_epochs": 0}, "--linear-epochs must be >= 1 (or pass --no-linear)"),
    (EvalConfig, {"knn": False, "linear": False}, "nothing to evaluate"),
    (EvalConfig, {"linear_lr": float("nan")}, "--linear-lr nan is not a finite number"),
    (EvalConfig, {"batch_size": 0}, "--batch-size must be at least 1, got 0"),
    (EvalConfig, {"workers": -1}, "--workers must be at least 0, got -1"),
    (EvalConfig, {"seed": "one"}, "--seed 'one' is not an integer"),
    (EvalConfig, {"device": "tpu"}, "unknown device 'tpu'"),
    (EvalConfig, {"device": 0}, "--device 0 is not a device name"),
    (CalibrateConfig, {"target_precision": 0.9, "target_yield": 1.0}, "are alternatives"),
    (CalibrateConfig, {"target_precision": 0.9, "use_labels": False},
     "--no-labels excludes --target-precision"),
    (CalibrateConfig, {"labels_sample": 10, "use_labels": False},
     "--no-labels excludes --labels-sample"),
    (CalibrateConfig, {"labels": "l.csv", "use_labels": False}, "--no-labels excludes --labels"),
    (CalibrateConfig, {"use_labels": 0}, "--no-labels 0 is not True or False"),
    (CalibrateConfig, {"floor": 1.0}, "--floor 1.0 is outside [-1, 1)"),
    (CalibrateConfig, {"floor": "high"}, "--floor 'high' is not a finite number"),
    (CalibrateConfig, {"step": 0.0}, "--step 0.0 is outside (0, 0.5]"),
    (CalibrateConfig, {"max_cap": 0.5}, "--max-cap 0.5 must lie in (0.9, 1]"),
    (CalibrateConfig, {"target_precision": 1.5}, "--target-precision 1.5 is outside (0, 1]"),
    (CalibrateConfig, {"target_yield": -1.0}, "--target-yield -1.0 must be > 0"),
    (CalibrateConfig, {"labels_sample": 1}, "--labels-sample 1 must be >= 2"),
    (CalibrateConfig, {"labels_sample": 2.5}, "--labels-sample 2.5 is not an integer"),
    (CalibrateConfig, {"min_support": 0}, "--min-support 0 must be >= 1"),
    (CalibrateConfig, {"subset": "ten"}, "--subset 'ten' is neither a fraction nor a count"),
    (CalibrateConfig, {"subset": 0}, "--subset 0 is not a count >= 1"),
    (CalibrateConfig, {"subset": 1.5}, "--subset 1.5 is not a fraction in (0, 1]"),
    (CalibrateConfig, {"seed": -1}, "--seed -1 is not an integer >= 0"),
    (CalibrateConfig, {"engine": "fast"}, "unknown --engine 'fast'"),
    (CalibrateConfig, {"device": "tpu"}, "unknown device 'tpu'"),
    (CalibrateConfig, {"max_pairs": 0}, "max_pairs must be at least 1, got 0"),
    (EvalPairsConfig, {"ks": (0, 5)}, "k must be >= 1 (got 0, 5)"),
    (EvalPairsConfig, {"ks": "1,five"}, "--k '1,five' is not a comma-separated list of integers"),
    (EvalPairsConfig, {"ks": ()}, "--k () is not a list of integers"),
    (EvalPairsConfig, {"ks": 5}, "--k 5 is not a list of integers"),
    (EvalPairsConfig, {"grid_floor": 2.0}, "--grid-floor 2.0 is outside [-1, 1]"),
    (EvalPairsConfig, {"grid_step": 0}, "--grid-step 0 must be > 0"),
    (EvalPairsConfig, {"grid": "no"}, "--no-grid 'no' is not True or False"),
    (EvalPairsConfig, {"engine": "fast"}, "unknown --engine 'fast'"),
    (EvalPairsConfig, {"device": "tpu"}, "unknown device 'tpu'"),
]


@pytest.mark.parametrize(("cls", "options", "message"), BAD)
def test_a_bad_value_is_a_config_error_before_any_work(
        tmp_path: Path, cls: type[StageConfig], options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        cls(**options)
    # no store, no encoder: a ConfigError says the options were checked before either is read
    out = tmp_path / "report.json"
    missing = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match=re.escape(message)):
        if cls is EvalConfig:
            evaluate("nosuchkind:x", missing, missing, out=out, **options)
        elif cls is CalibrateConfig:
            calibrate(missing, out=out, **options)
        else:
            eval_pairs(missing, out=out, **options)
    assert not out.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["calibrate", "EMB", "--floor", "1"], "--floor 1.0 is outside [-1, 1)"),
    (["calibrate", "EMB", "--subset", "ten"], "--subset 'ten' is neither a fraction nor a count"),
    (["calibrate", "EMB", "--seed", "-1"], "--seed -1 is not an integer >= 0"),
    (["calibrate", "EMB", "--no-labels", "--target-precision", "0.9"],
     "--no-labels excludes --target-precision"),
    (["calibrate", "EMB", "--device", "tpu"], "unknown device 'tpu'"),
    (["eval-pairs", "PAIRS", "--grid-floor", "2"], "--grid-floor 2.0 is outside [-1, 1]"),
    (["eval-pairs", "PAIRS", "--device", "cuda:x"], "unknown device 'cuda:x'"),
    (["eval", "CKPT", "--train", "T", "--test", "T", "--t", "0"],
     "--k must be >= 1 and --t > 0"),
    (["eval", "CKPT", "--train", "T", "--test", "T", "--no-knn", "--no-linear"],
     "nothing to evaluate"),
    (["eval", "CKPT", "--train", "T", "--test", "T", "--device", "tpu"], "unknown device 'tpu'"),
])
def test_a_bad_flag_is_one_line_and_exit_2(tmp_path: Path, args: list[str],
                                           message: str) -> None:
    # the inputs do not exist: the options fail first, and nothing is written
    out = tmp_path / "report.json"
    args = [str(tmp_path / a) if a in ("EMB", "PAIRS", "CKPT", "T") else a for a in args]
    res = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert res.exit_code == 2, res.output  # a refused option value: a usage error
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.output
    assert "Traceback" not in res.output
    assert not out.exists()


def test_a_k_list_click_cannot_read_is_a_usage_error(pairs: Path) -> None:
    # as before the config: --k is parsed by its click type, exit 2 with the usage line
    for text, message in (("1,x", "is not a comma-separated list of integers"),
                          ("0,5", "give integers >= 1")):
        res = CliRunner().invoke(cli, ["eval-pairs", str(pairs), "--k", text])
        assert res.exit_code == 2 and message in res.output, res.output


def test_an_unknown_keyword_names_itself(emb: Path, pairs: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CalibrateConfig has no option 'flor'") as caught:
        calibrate(emb, flor=0.9)
    assert "did you mean 'floor'?" in str(caught.value)
    with pytest.raises(ConfigError, match="EvalPairsConfig has no option 'k'") as caught:
        eval_pairs(pairs, k=(1, 5))
    assert "did you mean 'ks'?" in str(caught.value)
    with pytest.raises(ConfigError, match=r"EvalConfig has no option 'zzz'.*its options: arch"):
        evaluate("nosuchkind:x", tmp_path, tmp_path, EvalConfig(), zzz=1)
    with pytest.raises(ConfigError, match="expected a CalibrateConfig, got EvalPairsConfig"):
        calibrate(emb, EvalPairsConfig())  # type: ignore[arg-type]


@pytest.mark.parametrize(("command", "cls", "count"), [
    ("eval", EvalConfig, 15), ("calibrate", CalibrateConfig, 15),
    ("eval-pairs", EvalPairsConfig, 8)])
def test_help_lists_every_field(command: str, cls: type[StageConfig], count: int) -> None:
    res = CliRunner().invoke(cli, [command, "--help"])
    assert res.exit_code == 0, res.output
    flags = set(re.findall(r"(--[a-z][a-z-]*)", res.output))
    settings = cls.settings()
    assert len(settings) == count
    for f, s in settings:
        if s.cli:
            assert set(s.flag_for(f.name).split("/")) <= flags, f.name
        else:  # an API-only option stays out of the CLI
            assert "--" + f.name.replace("_", "-") not in flags, f.name
    assert (command == "eval") == ({"--train", "--test"} <= flags)
