"""``EmbedConfig``, the embed stage's API: the config and the same keyword arguments write the
same bytes, every bad value is a ``ConfigError`` before anything is written (one line, exit 1,
from the CLI), and ``pairmine embed``'s options are the config's fields."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import pairmine
from pairmine.cli import cli
from pairmine.embed import EmbedConfig, EmbedResult

# options away from their defaults, so a field lost between the API and the store shows
NON_DEFAULT: dict[str, Any] = {"encoder": "toy:2", "labels": False, "batch_size": 3,
                               "workers": 0, "device": "cpu", "precision": "fp32",
                               "dtype": "float32", "shard_size": 8, "draft": False,
                               "max_image_bytes": 1 << 20, "max_image_pixels": 1 << 16}


def _store_files(store: Path) -> dict[str, bytes]:
    """Every file of a store except the run log (timings legitimately differ)."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.name != "runs.jsonl"}


def test_kwargs_and_config_write_identical_stores(image_folder: Path, tmp_path: Path) -> None:
    options = {**NON_DEFAULT, "root": image_folder}
    by_kwargs = pairmine.embed(image_folder, tmp_path / "kwargs", **options)
    by_config = pairmine.embed(image_folder, tmp_path / "config", EmbedConfig(**options))
    # a config with one field overridden by a keyword is that config, replaced
    overridden = pairmine.embed(image_folder, tmp_path / "override",
                                EmbedConfig(**{**options, "dtype": "float16"}), dtype="float32")
    files = _store_files(tmp_path / "kwargs")
    assert len([name for name in files if name.startswith("emb/")]) == 3  # 21 images / 8
    assert _store_files(tmp_path / "config") == files
    assert _store_files(tmp_path / "override") == files
    assert by_kwargs.images == by_config.images == overridden.images == 21
    manifest = pairmine.open_embeddings(tmp_path / "config").manifest
    assert manifest["config"]["labels"] is False and manifest["config"]["draft"] is False
    assert manifest["config"]["shard_size"] == 8 and manifest["config"]["batch_size"] == 3
    assert manifest["config"]["root"] == str(image_folder.resolve())


def test_the_cli_writes_the_store_the_api_writes(image_folder: Path, tmp_path: Path) -> None:
    pairmine.embed(image_folder, tmp_path / "api", **NON_DEFAULT)
    result = CliRunner().invoke(cli, [
        "embed", str(image_folder), str(tmp_path / "cli"), "--encoder", "toy:2", "--no-labels",
        "--batch-size", "3", "--workers", "0", "--device", "cpu", "--precision", "fp32",
        "--dtype", "float32", "--shard-size", "8", "--no-draft",
        "--max-image-bytes", str(1 << 20), "--max-image-pixels", str(1 << 16)])
    assert result.exit_code == 0, result.output
    assert _store_files(tmp_path / "cli") == _store_files(tmp_path / "api")


# ---------------------------------------------------------------------------------------------
# bad values: a ConfigError naming the flag, from the config and from the stage, nothing written


BAD_VALUES = [
    ("encoder", "", "--encoder"),
    ("features", "logits", "--features"),
    ("source_kind", "nosuch", "--source-kind"),
    ("batch_size", 0, "--batch-size"),
    ("batch_size", "8", "--batch-size"),
    ("workers", -1, "--workers"),
    ("device", "tpu", "unknown device 'tpu'"),
    ("precision", "fp8", "--precision"),
    ("dtype", "float64", "--dtype"),
    ("shard_size", 0, "--shard-size"),
    ("decode", "gpu", "--decode"),
    ("max_image_bytes", 0, "--max-image-bytes"),
    ("max_image_pixels", 0, "--max-image-pixels"),
    ("root", "/no/such/folder", "--root"),
    ("ray_workers", 0, "--ray-workers"),
    ("gpus_per_worker", -1.0, "--gpus-per-worker"),
    ("cpus_per_worker", float("nan"), "--cpus-per-worker"),
    ("max_retries", -1, "--max-retries"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD_VALUES,
                         ids=[f"{n}={v!r}" for n, v, _ in BAD_VALUES])
def test_a_bad_value_is_a_config_error(name: str, value: Any, message: str,
                                       image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(pairmine.ConfigError, match=message):
        EmbedConfig(**{"encoder": "toy:0", name: value})
    with pytest.raises(pairmine.ConfigError, match=message):
        pairmine.embed(image_folder, tmp_path / "e", **{"encoder": "toy:0", name: value})
    assert not (tmp_path / "e").exists()


def test_an_unknown_or_missing_option_names_itself(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(pairmine.ConfigError, match="no option 'batchsize'") as info:
        pairmine.embed(image_folder, tmp_path / "e", encoder="toy:0", batchsize=4)
    assert "batch_size" in str(info.value)  # the close match is offered
    with pytest.raises(pairmine.ConfigError, match="needs encoder"):
        pairmine.embed(image_folder, tmp_path / "e")
    with pytest.raises(pairmine.ConfigError, match="expected a EmbedConfig"):
        pairmine.embed(image_folder, tmp_path / "e", {"encoder": "toy:0"})  # type: ignore[arg-type]
    assert not (tmp_path / "e").exists()


def _fails_cleanly(args: list[str], expect: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output  # a refused option value: a usage error
    assert "Traceback" not in result.output
    assert expect in result.output, result.output
    assert result.output.strip().count("\n") == 0, result.output


def test_cli_bad_values_are_one_line_and_exit_2(image_folder: Path, tmp_path: Path) -> None:
    base = ["embed", str(image_folder), str(tmp_path / "e"), "--encoder", "toy:0"]
    _fails_cleanly([*base, "--device", "tpu"], "unknown device 'tpu'")
    _fails_cleanly([*base, "--device", "cuda:x"], "unknown device 'cuda:x'")
    _fails_cleanly([*base, "--root", str(tmp_path / "nowhere")], "--root")
    _fails_cleanly([*base, "--ray", "local", "--gpus-per-worker", "0",
                    "--cpus-per-worker", "0"], "--gpus-per-worker and --cpus-per-worker")
    assert not (tmp_path / "e").exists()


# ---------------------------------------------------------------------------------------------
# the CLI options are the config's fields


def test_help_lists_every_field_with_its_default() -> None:
    result = CliRunner().invoke(cli, ["embed", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    help_text = " ".join(result.output.split())
    for f, s in EmbedConfig.settings():
        assert f" {s.flag_for(f.name)} " in help_text, f.name
        if s.show_default and f.default not in (None, True, False, dataclasses.MISSING):
            assert f"[default: {f.default}" in help_text, f.name
    assert " --overwrite " in help_text and "[required]" in help_text  # --encoder


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The arguments the command passes to the stage, instead of running it."""
    calls: list[dict[str, Any]] = []

    def fake_embed(source: str, out: Path, config: EmbedConfig, **kwargs: Any) -> EmbedResult:
        calls.append({"source": source, "out": out, "config": config, **kwargs})
        return EmbedResult(path=Path(out), images=1, errors=0, dim=16, shards=1,
                           resumed_shards=0, seconds=1.0, device="cpu", precision="fp32")

    monkeypatch.setattr(sys.modules["pairmine.embed"], "embed", fake_embed)
    return calls


def test_cli_defaults_are_the_config_defaults(captured: list[dict[str, Any]],
                                              tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["embed", "src", str(tmp_path / "e"), "--encoder", "x:1"])
    assert result.exit_code == 0, result.output
    (call,) = captured
    assert call["config"] == EmbedConfig(encoder="x:1")
    assert call["overwrite"] is False and call["source"] == "src"


def test_every_flag_reaches_its_field(captured: list[dict[str, Any]], tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    result = CliRunner().invoke(cli, [
        "embed", "src", str(tmp_path / "e"), "--encoder", "x:1", "--arch", "resnet18",
        "--features", "backbone", "--source-kind", "folder", "--no-labels",
        "--batch-size", "7", "--workers", "3", "--device", "cuda:1", "--precision", "bf16",
        "--dtype", "float32", "--shard-size", "9", "--no-draft", "--decode", "device",
        "--max-image-bytes", "100", "--max-image-pixels", "200", "--root", str(root),
        "--ray", "auto", "--ray-workers", "2", "--gpus-per-worker", "0.5",
        "--cpus-per-worker", "2", "--max-retries", "1", "--overwrite"])
    assert result.exit_code == 0, result.output
    (call,) = captured
    assert call["config"] == EmbedConfig(
        encoder="x:1", arch="resnet18", features="backbone", source_kind="folder",
        labels=False, batch_size=7, workers=3, device="cuda:1", precision="bf16",
        dtype="float32", shard_size=9, draft=False, decode="device", max_image_bytes=100,
        max_image_pixels=200, root=root, ray="auto", ray_workers=2, gpus_per_worker=0.5,
        cpus_per_worker=2.0, max_retries=1)
    assert call["overwrite"] is True
