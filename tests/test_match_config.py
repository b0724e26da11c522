"""``MatchConfig`` is the match stage's API: keyword arguments, the dataclass and the CLI give
the same store; every bad value is a ``ConfigError`` from the API (before the output is
touched) and one line, exit 1, from the CLI; an unknown keyword names itself; every field is a
flag of ``pairmine match``; the result carries the summary's facts, typed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_match import clustered, make_store, store_files

import pairmine
from pairmine.cli import cli
from pairmine.errors import ConfigError
from pairmine.match import MatchConfig, match

# every option away from its default, so that a field lost on the way would show in the bytes
OPTIONS: dict[str, Any] = {"min_score": 0.95, "max_score": 0.995, "subset": 0.6, "seed": 3,
                           "against": "all", "max_per_anchor": 4, "engine": "torch",
                           "device": "cpu", "sweep": "0.9:1.0:0.05", "wide_histogram": True,
                           "block_rows": 64}
FLAGS = ["--min", "0.95", "--max", "0.995", "--subset", "0.6", "--seed", "3", "--against",
         "all", "--max-per-anchor", "4", "--engine", "torch", "--device", "cpu", "--sweep",
         "0.9:1.0:0.05", "--wide-histogram", "--block-rows", "64"]


@pytest.fixture(scope="module")
def emb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("emb") / "emb", clustered(200, 12, seed=5),
                      dtype="float16")


def store_bytes(out: Path) -> dict[str, bytes]:
    """Every file of a store; the manifest without its timings (wall-clock), key order kept."""
    files = store_files(out)
    manifest = json.loads(files["manifest.json"])
    manifest.pop("timings")
    files["manifest.json"] = json.dumps(manifest).encode()
    return files


def test_keywords_the_config_and_the_cli_write_the_same_store(emb: Path, tmp_path: Path) -> None:
    by_keywords = match(emb, tmp_path / "kwargs", **OPTIONS)
    by_config = match(emb, tmp_path / "config", MatchConfig(**OPTIONS))
    # a config with keywords on top: the keywords win
    on_top = match(emb, tmp_path / "mixed", MatchConfig(**{**OPTIONS, "min_score": 0.5}),
                   min_score=OPTIONS["min_score"])
    res = CliRunner().invoke(cli, ["match", str(emb), str(tmp_path / "cli"), *FLAGS])
    assert res.exit_code == 0, res.output
    reference = store_bytes(tmp_path / "kwargs")
    assert len(reference) > 3 and by_keywords.pairs > 0
    for name in ("config", "mixed", "cli"):
        assert store_bytes(tmp_path / name) == reference, name
    assert by_keywords.config == by_config.config == on_top.config == MatchConfig(**OPTIONS)


def test_text_and_numbers_resolve_to_the_same_plan() -> None:
    # the CLI hands over text; the API may give numbers: one plan, one identity, one store
    assert MatchConfig(subset="0.6").plan() == MatchConfig(subset=0.6).plan()
    assert MatchConfig(subset="50").plan().subset == 50
    assert MatchConfig(sweep="0.9:1.0:0.05").plan() == MatchConfig(sweep=(0.9, 1.0, 0.05)).plan()
    assert MatchConfig(min_score=1, max_score=1).plan().config()["min"] == 1.0


BAD: list[tuple[dict[str, Any], str]] = [
    ({"min_score": 0.99, "max_score": 0.97}, "--min 0.99 is greater than --max 0.97"),
    ({"min_score": -1.5}, "--min -1.5 is outside [-1, 1]"),
    ({"max_score": 1.01}, "--max 1.01 is outside [-1, 1]"),
    ({"max_score": float("nan")}, "--max nan is outside [-1, 1]"),
    ({"min_score": True}, "--min True is outside [-1, 1]"),
    ({"against": "both"}, "--against 'both' is not one of subset, all"),
    ({"max_per_anchor": 0}, "--max-per-anchor 0 is not an integer >= 1"),
    ({"max_per_anchor": 2.5}, "--max-per-anchor 2.5 is not an integer >= 1"),
    ({"max_per_anchor": True}, "--max-per-anchor True is not an integer >= 1"),
    ({"block_rows": 0}, "--block-rows 0 is not an integer >= 1"),
    ({"subset": 0}, "--subset 0 is not a count >= 1"),
    ({"subset": 1.5}, "--subset 1.5 is not a fraction in (0, 1]"),
    ({"subset": "ten"}, "--subset 'ten' is neither a fraction nor a count"),
    ({"seed": -1}, "--seed -1 is not an integer >= 0"),
    ({"seed": 1.5}, "--seed 1.5 is not an integer >= 0"),
    ({"sweep": "abc"}, "--sweep 'abc' is not LO:HI:STEP"),
    ({"sweep": "0.9:0.8:0.01"}, "needs -1 <= LO < HI <= 1 and STEP > 0"),
    ({"sweep": "0.9:1.0:0.03"}, "HI - LO is not a multiple of STEP"),
    ({"sweep": "0:1:0.001"}, "has 1001 grid points (at most 201)"),
    ({"engine": "fast"}, "unknown --engine 'fast'"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"device": 0}, "--device 0 is not a device name"),
    ({"wide_histogram": "yes"}, "--wide-histogram 'yes' is not True or False"),
    ({"ray_workers": 0}, "--ray-workers"),
    ({"cpus_per_worker": -1.0}, "--cpus-per-worker"),
    ({"max_retries": -1}, "--max-retries"),
]


@pytest.mark.parametrize(("options", "message"), BAD)
def test_a_bad_value_is_a_config_error_before_the_output_is_touched(
        emb: Path, tmp_path: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        MatchConfig(**options)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=re.escape(message)):
        match(emb, out, **options)
    assert not out.exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--min", "0.99", "--max", "0.97"], "--min 0.99 is greater than --max 0.97"),
    (["--max", "1.5"], "--max 1.5 is outside [-1, 1]"),
    (["--seed", "-1"], "--seed -1 is not an integer >= 0"),
    (["--subset", "ten"], "--subset 'ten' is neither a fraction nor a count"),
    (["--subset", "0"], "--subset 0 is not a count >= 1"),
    (["--sweep", "0:1:0.001"], "has 1001 grid points"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--ray", "local", "--gpus-per-worker", "0", "--cpus-per-worker", "0"],
     "--gpus-per-worker and --cpus-per-worker are both 0"),
])
def test_a_bad_flag_is_one_line_and_exit_2(emb: Path, tmp_path: Path, flags: list[str],
                                           message: str) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["match", str(emb), str(out), *flags])
    assert res.exit_code == 2, res.output  # a refused option value: a usage error
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.output
    assert "Traceback" not in res.output
    assert not out.exists()


def test_an_unknown_keyword_names_itself(emb: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"MatchConfig has no option 'min_scor'") as caught:
        match(emb, tmp_path / "out", min_scor=0.9)
    assert "did you mean 'min_score'?" in str(caught.value)
    with pytest.raises(ConfigError, match=r"has no option 'zzz'.*its options: against"):
        match(emb, tmp_path / "out", MatchConfig(), zzz=1)
    with pytest.raises(ConfigError, match="expected a MatchConfig, got dict"):
        match(emb, tmp_path / "out", {"min_score": 0.9})  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_match_help_lists_every_field() -> None:
    res = CliRunner().invoke(cli, ["match", "--help"])
    assert res.exit_code == 0, res.output
    flags = set(re.findall(r"(--[a-z][a-z-]*)", res.output))
    settings = MatchConfig.settings()
    assert len(settings) == 17  # 12 of the match stage, 5 of Ray
    for f, s in settings:
        assert s.flag_for(f.name) in flags, f.name
    assert {"--overwrite", "--plan"} <= flags
    # the command's own switches stay where they were: after the search's, before Ray's
    assert res.output.index("--block-rows") < res.output.index("--overwrite") \
        < res.output.index("--plan") < res.output.index("--ray ")


def test_the_result_says_what_the_summary_shows(emb: Path, tmp_path: Path) -> None:
    result = match(emb, tmp_path / "capped", **OPTIONS)
    m = json.loads((tmp_path / "capped" / "manifest.json").read_text())
    assert result.band == (m["min"], m["max"]) == (0.95, 0.995)
    assert (result.anchors, result.images, result.against) == (120, 200, "all")
    assert (result.engine, result.device) == (m["engine"]["name"], m["engine"]["device"])
    assert result.blocks == m["search"]["blocks"] == 2
    assert result.pairs_before_cap == m["counts"]["unordered_before_max_per_anchor"]
    assert result.pairs_before_cap is not None and result.pairs_before_cap >= result.pairs
    info = pairmine.open_pairs(tmp_path / "capped").info  # the typed reader agrees
    assert (info.min, info.max, info.subset.of, info.subset.against) == \
        (*result.band, result.images, result.against)
    uncapped = match(emb, tmp_path / "uncapped", MatchConfig(**OPTIONS), max_per_anchor=None)
    assert uncapped.pairs_before_cap is None

    res = CliRunner().invoke(cli, ["match", str(emb), str(tmp_path / "cli"), *FLAGS])
    assert res.exit_code == 0, res.output
    assert "120 of 200 (against all)" in res.output
    assert "[0.95, 0.995]" in res.output
    row = next(line for line in res.output.splitlines() if "before --max-per-anchor" in line)
    assert f"{result.pairs_before_cap:,}" in row
    plain = CliRunner().invoke(cli, ["match", str(emb), str(tmp_path / "plain"),
                                     "--device", "cpu"])
    assert plain.exit_code == 0, plain.output
    assert "before --max-per-anchor" not in plain.output
