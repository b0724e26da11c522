"""Match by tiles: the bytes of a pairs store do not depend on the tiling, on Ray or not, nor
on where a run was interrupted; statistics and duplicates come out as the whole-array code
computed them; ``--plan`` predicts what a run reads and how long its tiles take."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_match import clustered, make_store, store_files, without_timings

import pairmine
from pairmine.match import match
from pairmine.match.duplicates import write_duplicates
from pairmine.match.stats import count_record, degrees, distribution, per_anchor
from pairmine.stores import content_codes


@pytest.fixture(scope="module")
def emb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 clustered vectors in 3 float16 shards, with exact duplicates (equal hashes, equal
    rows): rows 10..14 repeat rows 0..4, row 100 repeats row 30."""
    v = clustered(240, 12, seed=5)
    sha: list[str | None] = [f"{i:064x}" for i in range(240)]
    for i in range(5):
        v[10 + i] = v[i]
        sha[10 + i] = sha[i]
    v[100], sha[100] = v[30], sha[30]
    sha[200] = None  # no hash: never a duplicate
    return make_store(tmp_path_factory.mktemp("emb") / "emb", v, shards=3, dtype="float16",
                      sha=sha)


def data_files(out: Path) -> dict[str, bytes]:
    files = store_files(out)
    manifest = without_timings(files.pop("manifest.json"))
    manifest.pop("per_anchor")  # rounded statistics of the same degrees: kept, compared below
    return files | {"manifest": repr(sorted(manifest.items())).encode()}


@pytest.mark.parametrize("opts", [
    {"min_score": 0.9, "max_score": 0.995},
    {"min_score": 0.9, "max_score": 0.995, "subset": 0.4, "seed": 2},
    {"min_score": 0.92, "max_score": 0.999, "subset": 60, "seed": 1, "against": "all",
     "sweep": "0.9:1.0:0.05"},
])
def test_tile_sizes_give_byte_identical_stores(emb: Path, tmp_path: Path,
                                               opts: dict[str, Any]) -> None:
    base = {"block_rows": 16, "device": "cpu", **opts}
    ref = match(emb, tmp_path / "default", **base)
    assert ref.tiles >= 1 and ref.pairs > 0
    want = data_files(tmp_path / "default")
    for rows in (37, 64):
        r = match(emb, tmp_path / f"t{rows}", tile_rows=rows, **base)
        assert r.tiles > ref.tiles
        assert data_files(tmp_path / f"t{rows}") == want, rows
        assert r.per_anchor == ref.per_anchor
    if opts.get("against") == "all":
        dup = pq.read_table(tmp_path / "default" / "duplicates.parquet")
        assert dup.num_rows > 0


def test_each_pair_once_with_rest_tiles(emb: Path, tmp_path: Path) -> None:
    """--against all: anchor tiles over anchor positions, rest tiles over row ranges with the
    anchors masked out; every considered pair exactly once, against the brute force."""
    r = match(emb, tmp_path / "out", min_score=0.9, max_score=1.0, subset=50, seed=3,
              against="all", block_rows=8, tile_rows=30, device="cpu")
    t = pairmine.open_pairs(tmp_path / "out").table
    a, b = t.column("a").to_numpy(), t.column("b").to_numpy()
    assert len(set(zip(a.tolist(), b.tolist(), strict=True))) == len(a) == r.pairs
    store = pairmine.open_embeddings(emb)
    v = store.vectors[:].astype(np.float64)
    anchors = pq.read_table(tmp_path / "out" / "subset.parquet").column("id").to_numpy()
    is_anchor = np.zeros(len(v), bool)
    is_anchor[anchors] = True
    sha = store.meta.column("sha256").to_pylist()
    ia, ib = np.triu_indices(len(v), 1)
    s = np.einsum("ij,ij->i", v[ia], v[ib])
    keep = (is_anchor[ia] | is_anchor[ib]) & (s >= 0.9) & (s <= 1.0)
    want = {(int(x), int(y)) for x, y in zip(ia[keep], ib[keep], strict=True)
            if sha[x] is None or sha[x] != sha[y]}
    near = {(int(x), int(y)) for x, y, z in zip(ia, ib, s, strict=True)
            if abs(z - 0.9) < 1e-6 or abs(z - 1.0) < 1e-6}
    got = set(zip(a.tolist(), b.tolist(), strict=True))
    assert got ^ want <= near


def test_statistics_merge_equals_the_whole_array_count(emb: Path, tmp_path: Path) -> None:
    match(emb, tmp_path / "out", min_score=0.85, max_score=0.999, subset=0.5, seed=9,
          block_rows=16, tile_rows=40, device="cpu")
    out = tmp_path / "out"
    shards = sorted((out / "pairs").glob("pairs-*.parquet"))
    n = 240
    old = np.zeros(n, dtype=np.int64)  # the former per-shard bincount(minlength=N)
    for p in shards:
        t = pq.read_table(p)
        old += np.bincount(t.column("a").to_numpy(), minlength=n)
        old += np.bincount(t.column("b").to_numpy(), minlength=n)
    new = degrees(shards, n, tmp_path / "work")
    assert np.array_equal(np.asarray(new), old)
    anchors = pq.read_table(out / "subset.parquet").column("id").to_numpy()
    assert per_anchor(new, anchors) == distribution(old[anchors])
    assert per_anchor(new, None, chunk=7) == distribution(old)
    record = count_record(new, anchors, 0, 0, 0, chunk=11)
    assert record["unordered"] == int(old.sum()) // 2
    assert record["images_with_pairs"] == int((old > 0).sum())
    assert record["anchors_with_pairs"] == int((old[anchors] > 0).sum())
    manifest = pairmine.open_pairs(out).manifest
    assert manifest["counts"] == count_record(old, anchors, manifest["counts"][
        "unordered_before_max_per_anchor"], manifest["counts"]["duplicates"],
        manifest["counts"]["duplicate_groups"])


@pytest.mark.parametrize("against", ["subset", "all"])
def test_duplicates_in_passes_equal_the_whole_table(emb: Path, tmp_path: Path,
                                                    against: str) -> None:
    """Passes over ranges of the code space (here 1, 3 and 240 passes) write the bytes the
    whole-table code wrote: groups in the order of their first row."""
    store = pairmine.open_embeddings(emb)
    anchors = np.sort(np.random.default_rng(0).choice(240, 120, replace=False))
    anchors = np.union1d(anchors, [0, 10, 11, 30]).astype(np.int64)
    files = []
    for rows in (1 << 20, 80, 1):
        path = tmp_path / f"dup-{rows}.parquet"
        total, groups = write_duplicates(path, store, anchors, against, "sha256",
                                         pass_rows=rows)
        files.append(path.read_bytes())
        assert total > 0 and groups > 0
    assert files[0] == files[1] == files[2]
    # the whole-table rule: dictionary codes, groups by first occurrence
    codes, _ = content_codes(store.meta)
    table = pq.read_table(tmp_path / f"dup-{1 << 20}.parquet")
    a, b = table.column("a").to_numpy(), table.column("b").to_numpy()
    assert (codes[a] == codes[b]).all() and (a < b).all()
    assert list(np.unique(codes[a], return_index=True)[1]) == sorted(
        np.unique(codes[a], return_index=True)[1])
    is_anchor = np.isin(np.arange(240), anchors)
    ok = (is_anchor[a] & is_anchor[b]) if against == "subset" else (is_anchor[a] | is_anchor[b])
    assert ok.all()


def test_plan_counts_the_engine_plan_sample(tmp_path: Path) -> None:
    # >= 4096 targets and D > 16: the engine plan is fitted from a sample the driver reads
    emb = make_store(tmp_path / "emb", clustered(5000, 24, seed=3, clusters=30),
                     dtype="float16")
    opts: dict[str, Any] = {"min_score": 0.97, "max_score": 0.99, "block_rows": 1024,
                            "tile_rows": 2048, "device": "cpu"}
    plan = match(emb, tmp_path / "out", dry_run=True, **opts).unit_plan
    assert plan is not None and plan["bytes"]["sample"] > 0
    r = match(emb, tmp_path / "out", **opts)
    assert plan["bytes"]["vectors"] == r.bytes_read
    assert "survivor_rate" in pairmine.open_pairs(tmp_path / "out").manifest["engine"]["pruning"]


def test_plan_predicts_the_bytes_and_the_tile_time(emb: Path, tmp_path: Path) -> None:
    opts: dict[str, Any] = {"min_score": 0.9, "max_score": 0.995, "subset": 100, "seed": 4,
                            "against": "all", "block_rows": 16, "tile_rows": 64,
                            "device": "cpu"}
    plan = match(emb, tmp_path / "out", dry_run=True, **opts).unit_plan
    assert plan is not None and not (tmp_path / "out").exists()
    r = match(emb, tmp_path / "out", **opts)
    assert plan["tiles"] == plan["tiles_todo"] == r.tiles == r.tiles_run
    # every vector byte the run read (its tiles; no sample below 4096 targets) was predicted
    assert plan["bytes"]["vectors"] == r.bytes_read
    assert plan["bytes"]["tiles"] == sum(plan["bytes_per_tile"])
    assert plan["bytes"]["codes"] == 240 * 8
    assert plan["memory"]["worker_peak_bytes"] > plan["memory"]["tile_bytes"] > 0
    # the warm tile's time against the same tile measured again here: a generous factor
    from pairmine.engines import build_engine, make_problem, plan_tiles, run_tile
    from pairmine.engines.band import Band, TileShape

    store = pairmine.open_embeddings(emb)
    anchors = pq.read_table(tmp_path / "out" / "subset.parquet").column("id").to_numpy()
    problem = make_problem(store.vectors, anchors, "all", 16)
    shape = TileShape(**plan["tile_shape"])
    tile = plan_tiles(problem, shape)[plan["measured_tile"]]
    engine = build_engine(problem, Band(0.9, 0.995), "torch", "cpu")
    run_tile(engine, problem, Band(0.9, 0.995), tile)
    import time

    t0 = time.perf_counter()
    run_tile(engine, problem, Band(0.9, 0.995), tile)
    seconds = time.perf_counter() - t0
    engine.close()
    predicted = plan["seconds_per_tile"][plan["tile_index"].index(tile.index)]
    assert seconds / 20 <= predicted <= seconds * 20


def test_ray_writes_the_local_bytes(emb: Path, tmp_path: Path, ray_cluster: Path) -> None:
    opts: dict[str, Any] = {"min_score": 0.9, "max_score": 0.995, "subset": 0.5, "seed": 1,
                            "against": "all", "block_rows": 32, "tile_rows": 64,
                            "device": "cpu"}
    match(emb, tmp_path / "local", **opts)
    r = match(emb, tmp_path / "ray", ray="local", ray_workers=2, **opts)
    assert r.cluster is not None and r.cluster["units_run"] == r.tiles
    assert data_files(tmp_path / "ray") == data_files(tmp_path / "local")
