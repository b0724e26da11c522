"""``ExportConfig`` is the export stage's API: the config and the keyword arguments write the
same bytes, the CLI options come from its fields, bad values are ``ConfigError``s that name
the flag, and the manifest records what it always recorded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_export import Stores, export_bytes, make_stores

from pairmine.cli import cli
from pairmine.errors import ConfigError
from pairmine.export import ExportConfig, export

RECORDED_KEYS = ["format", "combined", "shuffle", "seed", "shard_size", "max_shard_bytes",
                 "skip_missing"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Stores:
    """12 images (3 PNG), 15 pairs; no test changes them."""
    return make_stores(tmp_path_factory.mktemp("stores"))


def _manifest(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / "manifest.json").read_text(encoding="utf-8")))


# ---------------------------------------------------------------------------------------------
# the config and the keyword arguments are one call


@pytest.mark.parametrize("fields", [
    {"combined": True, "shard_size": 5, "seed": 3},
    {"fmt": "parquet", "combined": True},
    {"shard_size": 4, "shuffle": True, "max_shard_bytes": 40 << 10},
])
def test_config_and_keywords_write_the_same_bytes(stores: Stores, tmp_path: Path,
                                                  fields: dict[str, Any]) -> None:
    by_keywords = export(stores.pairs, tmp_path / "kw", **fields)
    by_config = export(stores.pairs, tmp_path / "cfg", ExportConfig(**fields))
    # a keyword overrides the config's field
    overridden = export(stores.pairs, tmp_path / "over",
                        ExportConfig(**{**fields, "seed": 99}), seed=fields.get("seed", 0))
    reference = export_bytes(by_keywords.path)
    assert len(reference) > 2  # a manifest and data files, compared byte for byte
    assert export_bytes(by_config.path) == reference
    assert export_bytes(overridden.path) == reference
    assert by_config.samples == by_keywords.samples > 0


@pytest.mark.parametrize(("size", "max_shard_bytes"), [("60K", 60 << 10), ("none", None)])
def test_the_cli_writes_what_the_api_writes(stores: Stores, tmp_path: Path, size: str,
                                            max_shard_bytes: int | None) -> None:
    api = export(stores.pairs, tmp_path / "api", combined=True, shard_size=5, seed=2,
                 max_shard_bytes=max_shard_bytes)
    run = CliRunner().invoke(cli, ["export", str(stores.pairs), str(tmp_path / "cli"),
                                   "--combined", "--shard-size", "5", "--seed", "2",
                                   "--max-shard-bytes", size])
    assert run.exit_code == 0, run.output
    assert export_bytes(tmp_path / "cli") == export_bytes(api.path)
    assert _manifest(tmp_path / "cli")["config"]["max_shard_bytes"] == max_shard_bytes


def test_the_manifest_records_the_resolved_config(stores: Stores, tmp_path: Path) -> None:
    shards = _manifest(export(stores.pairs, tmp_path / "wds", combined=True,
                              shard_size=6).path)
    assert sorted(shards["config"]) == sorted(RECORDED_KEYS)  # the manifest sorts its keys
    assert shards["config"] == {"format": "webdataset", "combined": True, "shuffle": True,
                                "seed": 0, "shard_size": 6, "max_shard_bytes": 1 << 30,
                                "skip_missing": False}
    table = _manifest(export(stores.pairs, tmp_path / "pq", fmt="parquet").path)
    assert sorted(table["config"]) == sorted(RECORDED_KEYS)
    assert list(ExportConfig(combined=True).recorded()) == RECORDED_KEYS[:-1]
    # no shards: never shuffled, no byte limit
    assert (table["config"]["shuffle"], table["config"]["max_shard_bytes"]) == (False, None)
    # the Ray fields say where shards are written, not what they hold: never recorded
    assert not {"ray", "ray_workers", "max_retries"} & set(shards["config"])


def test_resolved_decides_the_defaults_that_depend_on_the_format() -> None:
    assert ExportConfig().resolved().shuffle is False
    assert ExportConfig(combined=True).resolved().shuffle is True
    assert ExportConfig(combined=True, shuffle=False).resolved().shuffle is False
    assert ExportConfig(fmt="parquet", combined=True).resolved().shuffle is False
    assert ExportConfig(fmt="parquet").resolved().max_shard_bytes is None
    assert ExportConfig(max_shard_bytes=None).resolved().max_shard_bytes is None
    once = ExportConfig(combined=True).resolved()
    assert once.resolved() == once


# ---------------------------------------------------------------------------------------------
# bad values: ConfigError from the API, one line and exit 1 from the CLI


@pytest.mark.parametrize(("fields", "match"), [
    ({"fmt": "zip"}, r"unknown export format 'zip' \(choose one of: webdataset, parquet\)"),
    ({"shard_size": 0}, "--shard-size must be at least 1, got 0"),
    ({"shard_size": "10"}, "--shard-size '10' is not an integer"),
    ({"max_shard_bytes": 100}, "--max-shard-bytes 100 is too small"),
    ({"fmt": "parquet", "shuffle": True}, "--shuffle orders shard samples"),
    ({"seed": -1}, "--seed -1 is not an integer >= 0"),
    ({"ray_workers": 0}, "--ray-workers must be at least 1"),
    ({"cpus_per_worker": -1.0}, "--cpus-per-worker must be at least 0"),
])
def test_bad_values_are_config_errors(stores: Stores, tmp_path: Path, fields: dict[str, Any],
                                      match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ExportConfig(**fields)
    with pytest.raises(ConfigError, match=match):
        export(stores.pairs, tmp_path / "spps", **fields)
    assert not (tmp_path / "spps").exists()  # checked before anything is written


def test_an_unknown_keyword_is_named(stores: Stores, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no option 'shard_sise'.*did you mean 'shard_size'"):
        export(stores.pairs, tmp_path / "spps", shard_sise=3)
    with pytest.raises(ConfigError, match="expected a ExportConfig"):
        export(stores.pairs, tmp_path / "spps", {"shard_size": 3})  # type: ignore[arg-type]
    assert not (tmp_path / "spps").exists()


@pytest.mark.parametrize(("args", "words"), [
    (["--max-shard-bytes", "100"], "too small"),
    (["--format", "parquet", "--shuffle"], "--shuffle orders shard samples"),
    (["--seed", "-3"], "--seed -3 is not an integer >= 0"),
])
def test_cli_bad_values_are_one_line_and_exit_2(stores: Stores, tmp_path: Path,
                                                args: list[str], words: str) -> None:
    run = CliRunner().invoke(cli, ["export", str(stores.pairs), str(tmp_path / "spps"), *args])
    assert run.exit_code == 2, run.output  # a refused option value: a usage error
    assert words in run.output and len(run.output.strip().splitlines()) == 1
    assert "Traceback" not in run.output and not (tmp_path / "spps").exists()


def test_cli_bad_size_is_a_usage_error(stores: Stores, tmp_path: Path) -> None:
    run = CliRunner().invoke(cli, ["export", str(stores.pairs), str(tmp_path / "spps"),
                                   "--max-shard-bytes", "lots"])
    assert run.exit_code == 2 and "'lots' is not a size" in run.output


# ---------------------------------------------------------------------------------------------
# --help comes from the fields


def test_help_lists_every_field_flag_in_the_order_it_always_had() -> None:
    run = CliRunner().invoke(cli, ["export", "--help"])
    assert run.exit_code == 0
    flags = []
    for f, s in ExportConfig.settings():
        for flag in s.flag_for(f.name).split("/"):
            assert flag in run.output, flag
            flags.append(flag)
    assert "--format [webdataset|parquet]" in run.output  # the registry's formats
    assert "[default: 1G]" in run.output  # a size shown as it is written
    # --overwrite stays between the export's own options and the Ray ones
    at = [run.output.index(f"  {flag} ") for flag in
          ["--format", "--skip-missing", "--overwrite", "--ray", "--max-retries"]]
    assert at == sorted(at)
