"""`pairmine pairs`: a few pairs with keys, labels and scores; shards read one at a time."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pairmine import stores
from pairmine.cli import cli
from pairmine.errors import ConfigError, InputError
from pairmine.quality.listing import COLUMNS, list_pairs


@pytest.fixture
def store(image_folder: Path, tmp_path: Path) -> Path:
    """Pairs of the conftest image folder (classes cat, dog, emu) in several pair shards."""
    runner = CliRunner()
    emb, pairs = tmp_path / "emb", tmp_path / "pairs"
    res = runner.invoke(cli, ["embed", str(image_folder), str(emb), "--encoder", "toy:0",
                              "--workers", "0", "--dtype", "float32"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["match", str(emb), str(pairs), "--min", "0.5", "--max", "0.9999",
                              "--block-rows", "4"])
    assert res.exit_code == 0, res.output
    assert len(stores.open_pairs(pairs).info.shards) > 2
    return pairs


def whole(pairs: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[int]]:
    p = stores.open_pairs(pairs)
    emb = stores.open_pairs_embeddings(p)
    return (p.table.column("a").to_numpy(), p.table.column("b").to_numpy(),
            p.table.column("score").to_numpy(), emb.meta.column("key").to_pylist(),
            emb.meta.column("label").to_pylist())


@pytest.fixture
def no_whole_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The listing must read shard by shard: reading the whole pair table fails the test."""
    def refuse(self: object) -> None:
        raise AssertionError("Pairs.table read: the listing must use iter_shards")

    monkeypatch.setattr(stores.Pairs, "table", property(refuse))


def test_top_is_the_highest_scores_with_keys_and_class_names(store: Path) -> None:
    a, b, s, keys, labels = whole(store)
    listing = list_pairs(store, top=5)
    assert listing.total == a.size > 5 and listing.selection == "top 5"
    want = sorted(zip(-s.astype(np.float64), a.tolist(), b.tolist(), strict=True))[:5]
    assert [(r.a, r.b) for r in listing.rows] == [(x, y) for _, x, y in want]
    names = ["cat", "dog", "emu"]
    for r in listing.rows:
        assert r.key_a == keys[r.a] and r.key_b == keys[r.b]
        assert r.label_a == names[labels[r.a]] and r.label_b == names[labels[r.b]]
        assert r.score == pytest.approx(float(s[(a == r.a) & (b == r.b)][0]), abs=1e-6)
    assert list_pairs(store).selection == "top 20"


def test_sample_is_seeded_and_key_finds_every_pair_of_an_image(store: Path,
                                                                no_whole_table: None) -> None:
    first = list_pairs(store, sample=6, seed=3)
    assert [(r.a, r.b) for r in first.rows] == [(r.a, r.b) for r in
                                               list_pairs(store, sample=6, seed=3).rows]
    assert len({(r.a, r.b) for r in first.rows}) == 6
    assert [r.score for r in first.rows] == sorted((r.score for r in first.rows), reverse=True)
    draws = {tuple((r.a, r.b) for r in list_pairs(store, sample=6, seed=k).rows)
             for k in range(5)}
    assert len(draws) > 1
    everything = list_pairs(store, sample=10_000)
    assert len(everything.rows) == everything.total  # more than there are: all of them
    key = first.rows[0].key_a
    touching = list_pairs(store, key=key)
    assert touching.rows and all(key in (r.key_a, r.key_b) for r in touching.rows)
    assert len(touching.rows) == sum(key in (r.key_a, r.key_b) for r in everything.rows)


def test_bad_selections(store: Path) -> None:
    with pytest.raises(ConfigError, match="--top and --key both given"):
        list_pairs(store, top=3, key="x")
    with pytest.raises(ConfigError, match="--sample 0"):
        list_pairs(store, sample=0)
    with pytest.raises(InputError, match="no image with key 'nope'"):
        list_pairs(store, key="nope")


def test_cli_table_csv_json(store: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["pairs", str(store), "--top", "3"])
    assert res.exit_code == 0, res.output
    assert "top 3 of" in res.output and "score" in res.output and "cat" in res.output
    res = runner.invoke(cli, ["pairs", str(store), "--sample", "4", "--seed", "1",
                              "--format", "csv"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.output)))
    assert len(rows) == 4 and tuple(rows[0]) == COLUMNS
    assert all(r["label_a"] in ("cat", "dog", "emu") for r in rows)
    res = runner.invoke(cli, ["pairs", str(store), "--key", rows[0]["key_a"], "--format",
                              "json"])
    assert res.exit_code == 0, res.output
    listed = json.loads(res.output)
    assert listed and all(rows[0]["key_a"] in (r["key_a"], r["key_b"]) for r in listed)
    assert isinstance(listed[0]["score"], float) and isinstance(listed[0]["a"], int)


def test_cli_errors_are_one_line(store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    for args in (["--top", "2", "--sample", "2"], ["--key", "nope"]):
        res = runner.invoke(cli, ["pairs", str(store), *args])
        assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    res = runner.invoke(cli, ["pairs", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    res = runner.invoke(cli, ["pairs", str(store), "--top", "0"])
    assert res.exit_code == 2
