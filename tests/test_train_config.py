"""``TrainConfig`` is the trainer's API: the config, the keyword arguments and the CLI train the
same model, the CLI options come from its fields, bad values are ``ConfigError``s naming the
flag, and a run that fails on good options (a diverged loss) is a ``TrainingError``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pairmine.cli import cli
from pairmine.errors import ConfigError, PairmineError, TrainingError
from pairmine.train import TrainConfig, train
from pairmine.train.trainer import LAST, LOG, load_training_checkpoint

# a tiny but real run: resnet18-cifar on 8-px crops, 32 images in batches of 16 (2 steps)
TINY: dict[str, Any] = {"arch": "resnet18-cifar", "image_size": 8, "batch_size": 16,
                        "moco_k": 64, "workers": 0, "bn_groups": 4, "epochs": 1, "seed": 5,
                        "lam": 0.5, "precision": "fp32", "threads": 1}
TINY_ARGS = ["--arch", "resnet18-cifar", "--image-size", "8", "--batch-size", "16",
             "--moco-k", "64", "--workers", "0", "--bn-groups", "4", "--epochs", "1",
             "--seed", "5", "--lambda", "0.5", "--precision", "fp32", "--threads", "1"]
TIMINGS = ("seconds", "images_per_s", "time")
# what a checkpoint's "config" has always held
CHECKPOINT_CONFIG_KEYS = {
    "arch", "epochs", "batch_size", "lr", "weight_decay", "momentum", "cos", "moco_dim",
    "moco_k", "moco_m", "temperature", "lam", "image_size", "bn_groups", "augment",
    "pair_directions", "random_duplicates", "seed", "device", "precision", "workers",
    "save_every", "method", "leoclr_queue", "threads", "max_steps"}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models: one thread is as fast, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 random 20x18 PNGs in 2 class folders."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(11)
    for i in range(32):
        (root / f"c{i % 2}").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (18, 20, 3), np.uint8)).save(
            root / f"c{i % 2}" / f"{i:03d}.png")
    return root


def _log_without_timings(run: Path) -> list[dict[str, Any]]:
    lines = (run / LOG).read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(ln).items() if k not in TIMINGS} for ln in lines]


def _assert_same_run(a: Path, b: Path) -> None:
    ca, cb = load_training_checkpoint(a / LAST), load_training_checkpoint(b / LAST)
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    for name, tensor in ca["state_dict"].items():
        assert torch.equal(tensor, cb["state_dict"][name]), name
    momentum_a = [s["momentum_buffer"] for s in ca["optimizer"]["state"].values()]
    momentum_b = [s["momentum_buffer"] for s in cb["optimizer"]["state"].values()]
    assert len(momentum_a) == len(momentum_b) > 0
    assert all(torch.equal(x, y) for x, y in zip(momentum_a, momentum_b, strict=True))
    assert ca["config"] == cb["config"] and ca["preprocess"] == cb["preprocess"]
    log_a = _log_without_timings(a)
    assert log_a == _log_without_timings(b) and len(log_a) == 1


# ---------------------------------------------------------------------------------------------
# the config, the keyword arguments and the CLI are one call


def test_config_and_keywords_train_the_same_model(folder: Path, tmp_path: Path) -> None:
    by_keywords = train(folder, tmp_path / "kw", **TINY)
    # a keyword overrides the config's field
    by_config = train(folder, tmp_path / "cfg", TrainConfig(**{**TINY, "seed": 9}), seed=5)
    assert by_keywords.complete and by_config.complete and by_config.epochs_done == 1
    _assert_same_run(tmp_path / "kw", tmp_path / "cfg")

    config = load_training_checkpoint(tmp_path / "cfg" / LAST)["config"]
    assert set(config) == CHECKPOINT_CONFIG_KEYS
    # the arch's defaults, resolved, are what the checkpoint records
    assert (config["moco_m"], config["temperature"], config["moco_k"]) == (0.99, 0.1, 64)
    assert config == TrainConfig(**TINY).resolved().to_json()
    summary = json.loads((tmp_path / "cfg" / "train.json").read_text(encoding="utf-8"))
    assert summary["config"] == config


def test_the_cli_makes_the_same_call(folder: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Its options' defaults are the fields' defaults: the command passes the very config
    (the runs above show a config trains what its keywords train)."""
    import pairmine.train

    calls: list[tuple[Any, ...]] = []

    def recording(data: str, out: Path, config: TrainConfig, **kwargs: Any) -> Any:
        calls.append((data, out, config, kwargs))
        raise TrainingError("recorded")  # stop here: no training

    monkeypatch.setattr(pairmine.train, "train", recording)
    runner = CliRunner()
    run = runner.invoke(cli, ["train", str(folder), str(tmp_path / "cli"), *TINY_ARGS])
    assert run.exit_code == 1 and "recorded" in run.output
    plain = runner.invoke(cli, ["train", str(folder), str(tmp_path / "cli"), "--stop-after",
                                "2", "--resume", "--no-cos"])
    assert plain.exit_code == 1
    (_, out, config, kwargs), (_, _, defaults, switches) = calls
    assert out == tmp_path / "cli" and config == TrainConfig(**TINY)
    assert kwargs["resume"] is False and kwargs["stop_after"] is None
    assert defaults == TrainConfig(cos=False)
    assert switches["resume"] is True and switches["stop_after"] == 2


# ---------------------------------------------------------------------------------------------
# bad values: ConfigError from the API, one line and exit 1 from the CLI


@pytest.mark.parametrize(("fields", "message"), [
    ({"arch": "vgg16"}, "unknown --arch 'vgg16'"),
    ({"epochs": 0}, "--epochs must be >= 1"),
    ({"epochs": "3"}, "--epochs '3' is not an integer"),
    ({"batch_size": 1}, "--batch-size must be >= 2"),
    ({"lr": 0.0}, "--lr must be > 0"),
    ({"lr": float("nan")}, "--lr nan is not a finite number"),
    ({"momentum": 1.0}, "--momentum must be in [0, 1)"),
    ({"moco_m": 1.5}, "--moco-m must be in [0, 1)"),
    ({"temperature": 0.0}, "--temperature must be > 0"),
    ({"lam": 1.5}, "--lambda must be in [0, 1] (Eq. 2), not 1.5"),
    ({"image_size": 4}, "--image-size must be >= 8"),
    ({"augment": "gpu"}, "unknown --augment 'gpu'"),
    ({"pair_directions": 3}, "--pair-directions must be 1 or 2"),
    ({"precision": "fp16"}, "unknown --precision 'fp16'"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"batch_size": 10, "bn_groups": 4}, "--batch-size 10 does not split into 4 batch-norm"),
    ({"method": "simclr"}, "unknown --method 'simclr'"),
    ({"leoclr_queue": "k2"}, "unknown --leoclr-queue 'k2'"),
    ({"method": "leoclr", "augment": "device"}, "--method leoclr crops in the CPU workers"),
    ({"threads": 0}, "--threads must be >= 1"),
    ({"max_steps": 0}, "--max-steps must be >= 1"),
])
def test_bad_values_are_config_errors(folder: Path, tmp_path: Path, fields: dict[str, Any],
                                      message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        TrainConfig(**fields)
    assert raised.value.message.startswith(message)
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        train(folder, tmp_path / "run", **{**TINY, **fields})
    assert not (tmp_path / "run").exists()  # checked before anything is written


def test_an_unknown_keyword_is_named(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no option 'epoch'.*did you mean 'epochs'"):
        train(folder, tmp_path / "run", epoch=1)
    with pytest.raises(ConfigError, match="--stop-after must be at least 1"):
        train(folder, tmp_path / "run", stop_after=0, **TINY)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("args", "words"), [
    (["--lambda", "2"], "--lambda must be in [0, 1]"),
    (["--batch-size", "10", "--bn-groups", "4"], "does not split into 4 batch-norm groups"),
    (["--momentum", "1"], "--momentum must be in [0, 1)"),
])
def test_cli_bad_values_are_one_line_and_exit_2(folder: Path, tmp_path: Path,
                                                args: list[str], words: str) -> None:
    run = CliRunner().invoke(cli, ["train", str(folder), str(tmp_path / "run"), *args])
    assert run.exit_code == 2, run.output  # a refused option value: a usage error
    assert words in run.output and len(run.output.strip().splitlines()) == 1
    assert "Traceback" not in run.output and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# a run that fails on good options is not a config error


def test_divergence_is_a_training_error(folder: Path, tmp_path: Path) -> None:
    # an absurd but valid learning rate: the second step's loss is NaN
    with pytest.raises(TrainingError, match="training diverged at epoch 1") as raised:
        train(folder, tmp_path / "run", **{**TINY, "lr": 1e30})
    assert isinstance(raised.value, PairmineError) and not isinstance(raised.value, ConfigError)
    assert raised.value.hint is not None and "--lr" in raised.value.hint


# ---------------------------------------------------------------------------------------------
# --help comes from the fields


def test_help_lists_every_field_flag() -> None:
    run = CliRunner().invoke(cli, ["train", "--help"])
    assert run.exit_code == 0
    for f, s in TrainConfig.settings():
        for flag in s.flag_for(f.name).split("/"):
            assert flag in run.output, flag
    for flag in ("--resume", "--stop-after", "--lambda", "--cos / --no-cos"):
        assert flag in run.output
    assert "1<=x<=2" in run.output  # --pair-directions keeps its range
    assert "resnet18-cifar" in run.output  # --arch's choices: the one architecture list
