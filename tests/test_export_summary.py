"""The export's summary names the shards to paste into a trainer and warns about too few."""

from __future__ import annotations

from pathlib import Path

import braceexpand
from click.testing import CliRunner

from pairmine.cli import cli
from pairmine.commands.export import USUAL_LOADER_WORKERS, shard_pattern


def test_shard_pattern_names_exactly_the_shards() -> None:
    assert shard_pattern(Path("spps"), 3) == "spps/shards/spps-{000000..000002}.tar"
    assert shard_pattern(Path("out/x"), 1) == "out/x/shards/spps-000000.tar"
    assert list(braceexpand.braceexpand(shard_pattern(Path("s"), 12)))[-1] == \
        "s/shards/spps-000011.tar"


def test_summary_prints_the_pattern_and_warns_below_the_usual_workers(
        image_folder: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    emb, pairs, spps = tmp_path / "emb", tmp_path / "pairs", tmp_path / "spps"
    for args in (["embed", str(image_folder), str(emb), "--encoder", "toy:0", "--workers", "0"],
                 ["match", str(emb), str(pairs), "--min", "0.5", "--max", "0.9999"]):
        res = runner.invoke(cli, args)
        assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["export", str(pairs), str(spps), "--combined", "--shard-size",
                              "60"])
    assert res.exit_code == 0, res.output
    tars = sorted((spps / "shards").glob("spps-*.tar"))
    assert 1 < len(tars) < USUAL_LOADER_WORKERS
    pattern = shard_pattern(spps, len(tars))
    assert f"shards for a trainer: {pattern}" in res.stdout
    assert sorted(braceexpand.braceexpand(pattern)) == [str(t) for t in tars]
    # the pairs view of a combined export, its own line: what to load for the pairs alone
    view = sorted((spps / "pairs" / "shards").glob("spps-*.tar"))
    alone = shard_pattern(spps / "pairs", len(view))
    assert view and f"the pairs alone: {alone}" in res.stdout
    assert sorted(braceexpand.braceexpand(alone)) == [str(t) for t in view]
    warning = " ".join(res.stderr.split())
    assert f"only {len(tars)} shards" in warning and f"num_workers <= {len(tars)}" in warning
    assert "--shard-size 60" in warning and "--max-shard-bytes" in warning
    res = runner.invoke(cli, ["export", str(pairs), str(tmp_path / "many"), "--combined",
                              "--shard-size", "10"])
    assert res.exit_code == 0, res.output
    assert "shards for a trainer:" in res.stdout and "only" not in res.stderr
