"""The match stage against numpy oracles: band, subset, --against all, --max-per-anchor,
duplicates, histogram, sweep, resume byte-identity, and every bad input through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import pairmine
from pairmine.cli import cli
from pairmine.match import match
from pairmine.stores import (
    EMBEDDINGS_FORMAT,
    FORMAT_VERSION,
    META_SCHEMA,
    save_npy_atomic,
    write_json_atomic,
    write_parquet_atomic,
)

TOL = 1e-6  # pairs this close to a bound may fall either way (float32 vs float64 scores)
Pair = tuple[int, int]


# ---------------------------------------------------------------------------------------------
# building embeddings stores the way open_embeddings reads them


def clustered(n: int, dim: int, seed: int, clusters: int = 6) -> np.ndarray:
    """Unit vectors around a few centres with varied spread: scores fill [0.85, 1.0]."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.02, 0.09, size=(n, 1))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_store(path: Path, vectors: np.ndarray, *, shards: int = 1, dtype: str = "float32",
               sha: list[str | None] | None = None, dims: list[int] | None = None) -> Path:
    n, dim = vectors.shape
    sha = sha if sha is not None else [f"{i:064x}" for i in range(n)]
    entries = []
    start = 0
    for k, rows in enumerate(np.array_split(np.arange(n), shards)):
        emb = f"emb/emb-{k:05d}.npy"
        meta = f"meta/meta-{k:05d}.parquet"
        block = vectors[rows].astype(dtype)
        if dims is not None:  # a damaged store: this shard has another width
            block = np.zeros((len(rows), dims[k]), dtype=dtype)
        save_npy_atomic(path / emb, block)
        write_parquet_atomic(path / meta, pa.table({
            "id": pa.array(rows, pa.int64()),
            "key": [f"img{i:05d}.jpg" for i in rows],
            "source": ["/data/images"] * len(rows),
            "member": pa.nulls(len(rows), pa.string()),
            "label": pa.array([int(i) % 10 for i in rows], pa.int64()),
            "sha256": pa.array([sha[i] for i in rows], pa.string()),
        }, schema=META_SCHEMA()))
        entries.append({"emb": emb, "meta": meta, "rows": len(rows), "id_start": start})
        start += len(rows)
    write_json_atomic(path / "manifest.json", {
        "format": EMBEDDINGS_FORMAT, "version": FORMAT_VERSION, "count": n, "dim": dim,
        "dtype": dtype, "shards": entries})
    return path


# ---------------------------------------------------------------------------------------------
# oracles


def stored(store: Path) -> np.ndarray:
    """The store's vectors exactly as stored, in float64 (the exact dot product's input)."""
    return pairmine.open_embeddings(store).vectors.astype(np.float64)


def oracle_scores(v: np.ndarray, anchors: np.ndarray | None = None,
                  against: str = "subset") -> dict[Pair, float]:
    """Every considered unordered pair (a < b) and its exact score."""
    n = len(v)
    anchors = np.arange(n) if anchors is None else anchors
    is_anchor = np.zeros(n, bool)
    is_anchor[anchors] = True
    sim = v @ v.T
    a, b = np.triu_indices(n, k=1)
    keep = (is_anchor[a] & is_anchor[b]) if against == "subset" else (is_anchor[a] | is_anchor[b])
    return {(int(x), int(y)): float(sim[x, y]) for x, y in zip(a[keep], b[keep], strict=True)}


def in_band(scores: dict[Pair, float], lo: float, hi: float) -> tuple[set[Pair], set[Pair]]:
    """(pairs in [lo, hi], pairs within TOL of a bound that may go either way)."""
    sure = {p for p, s in scores.items() if lo <= s <= hi}
    unsure = {p for p, s in scores.items() if abs(s - lo) <= TOL or abs(s - hi) <= TOL}
    return sure, unsure


def read_pairs(out: Path) -> dict[Pair, float]:
    t = pairmine.open_pairs(out).table
    a, b, s = (t.column(c).to_numpy() for c in ("a", "b", "score"))
    assert (a < b).all()
    found = {(int(x), int(y)): float(z) for x, y, z in zip(a, b, s, strict=True)}
    assert len(found) == len(a), "a pair is stored twice"
    return found


def assert_same_pairs(found: dict[Pair, float], sure: set[Pair], unsure: set[Pair],
                      scores: dict[Pair, float]) -> None:
    assert set(found) ^ sure <= unsure, sorted(set(found) ^ sure)[:10]
    for p, s in found.items():
        assert abs(s - scores[p]) <= TOL


def store_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file()}


def without_timings(manifest: bytes) -> dict[str, Any]:
    """A manifest without what records how the work was cut and how long it took: the
    timings, the tile shape and the prefilter's candidate count (each tile sets its margin
    from its own rows' norms); the data it describes stays."""
    m: dict[str, Any] = json.loads(manifest)
    m.pop("timings")
    m["search"].pop("tiles")
    m["search"].pop("candidates")
    return m


@pytest.fixture(scope="module")
def emb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 clustered vectors in 2 float16 shards (the default embed dtype)."""
    return make_store(tmp_path_factory.mktemp("emb") / "emb", clustered(300, 12, seed=1),
                      shards=2, dtype="float16")


# ---------------------------------------------------------------------------------------------
# results


@pytest.mark.parametrize("engine", ["torch", "faiss"])
def test_pairs_equal_the_oracle(emb: Path, tmp_path: Path, engine: str) -> None:
    out = tmp_path / "pairs"
    r = match(emb, out, min_score=0.97, max_score=0.99, engine=engine, device="cpu",
              wide_histogram=True)
    scores = oracle_scores(stored(emb))
    sure, unsure = in_band(scores, 0.97, 0.99)
    found = read_pairs(out)
    assert len(sure) > 200  # the data has plenty of pairs on both sides of each bound
    assert_same_pairs(found, sure, unsure, scores)
    m = r.manifest
    assert m["format"] == "pairmine/pairs" and m["min"] == 0.97 and m["max"] == 0.99
    assert r.pairs == m["counts"]["unordered"] == len(found)
    assert r.ordered == m["counts"]["ordered"] == 2 * len(found)
    assert m["engine"]["name"] == engine
    assert m["subset"]["count"] == 300 and m["config"]["subset"] is None
    assert m["inputs"]["embeddings"]["path"] == str(emb.resolve())
    assert all((out / s).exists() for s in m["shards"])
    assert not (out / ".partial").exists()
    # positives per image over the considered images
    degree = np.zeros(300, int)
    for a, b in found:
        degree[a] += 1
        degree[b] += 1
    pa_ = m["per_anchor"]
    assert pa_["max"] == degree.max() and pa_["min"] == degree.min()
    assert pa_["median"] == np.median(degree) and pa_["mean"] == pytest.approx(degree.mean())
    assert m["counts"]["anchors_with_pairs"] == (degree > 0).sum()
    # histogram: the widened search [0.92, 1.0] in 0.005 bins, the oracle's counts
    h = m["histogram"]
    assert h["edges"][0] == pytest.approx(0.92) and h["edges"][-1] == 1.0
    assert len(h["counts"]) == 16
    s = np.array(list(scores.values()))
    expected = np.histogram(np.clip(s[s >= 0.92], None, 1.0), bins=np.array(h["edges"]))[0]
    near_edge = sum(int((np.abs(s - e) <= TOL).sum()) for e in h["edges"])
    assert np.abs(np.array(h["counts"]) - expected).sum() <= near_edge
    assert sum(h["counts"][10:14]) == pytest.approx(len(found), abs=near_edge)


def test_band_is_inclusive_and_self_pairs_never_appear(tmp_path: Path) -> None:
    # exact scores: e0.e1 = 0.5 and e0.e2 = 0.75 (float32-exact), a band [0.5, 0.75]
    v = np.zeros((4, 3), np.float32)
    v[0] = [1, 0, 0]
    v[1] = [0.5, np.sqrt(0.75), 0]
    v[2] = [0.75, 0, np.sqrt(1 - 0.75**2)]
    v[3] = [-1, 0, 0]
    emb = make_store(tmp_path / "emb", v)
    for engine in ("torch", "faiss"):
        out = tmp_path / engine
        match(emb, out, min_score=0.5, max_score=0.75, engine=engine, device="cpu")
        found = read_pairs(out)
        assert {(0, 1), (0, 2)} <= set(found)
        assert all(a != b for a, b in found) and (0, 3) not in found


def test_subset_is_seeded_sorted_and_recorded(emb: Path, tmp_path: Path) -> None:
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        match(emb, tmp_path / name, subset=0.5, seed=seed, min_score=0.95,
                       max_score=0.99, device="cpu")
        runs[name] = pq.read_table(tmp_path / name / "subset.parquet").column("id").to_numpy()
    ids = runs["a"]
    assert len(ids) == 150 and (np.diff(ids) > 0).all()
    expected = np.sort(np.random.default_rng(7).choice(300, size=150, replace=False))
    np.testing.assert_array_equal(ids, expected)
    assert store_files(tmp_path / "a")["pairs/pairs-00000.parquet"] == \
        store_files(tmp_path / "b")["pairs/pairs-00000.parquet"]
    assert not np.array_equal(ids, runs["c"])
    scores = oracle_scores(stored(emb), ids)
    sure, unsure = in_band(scores, 0.95, 0.99)
    assert_same_pairs(read_pairs(tmp_path / "a"), sure, unsure, scores)
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m["subset"] == {"file": "subset.parquet", "count": 150, "of": 300, "seed": 7,
                           "requested": 0.5, "against": "subset"}
    # a count instead of a fraction
    r = match(emb, tmp_path / "d", subset="40", seed=7, device="cpu")
    assert r.anchors == 40 and r.manifest["subset"]["requested"] == 40


def test_against_all(emb: Path, tmp_path: Path) -> None:
    out = tmp_path / "pairs"
    r = match(emb, out, subset=30, seed=3, against="all", min_score=0.96,
                       max_score=0.99, device="cpu", block_rows=8)
    anchors = pq.read_table(out / "subset.parquet").column("id").to_numpy()
    scores = oracle_scores(stored(emb), anchors, against="all")
    sure, unsure = in_band(scores, 0.96, 0.99)
    found = read_pairs(out)
    assert_same_pairs(found, sure, unsure, scores)
    assert any(a not in anchors or b not in anchors for a, b in found)
    assert r.manifest["search"]["blocks"] == 4  # 30 anchors in blocks of 8
    assert len(r.manifest["shards"]) == 4


def oracle_cap(pairs: dict[Pair, float], k: int) -> set[Pair]:
    """The documented rule, written the slow way: each image ranks its partners by score
    (desc), ties by the partner's id (asc), and keeps the first k; a pair stays if either end
    keeps it."""
    partners: dict[int, list[tuple[float, int]]] = {}
    for (a, b), s in pairs.items():
        s32 = float(np.float32(s))
        partners.setdefault(a, []).append((-s32, b))
        partners.setdefault(b, []).append((-s32, a))
    keeps = {x: {o for _, o in sorted(lst)[:k]} for x, lst in partners.items()}
    return {(a, b) for a, b in pairs if b in keeps[a] or a in keeps[b]}


@pytest.mark.parametrize("k", [1, 3])
def test_max_per_anchor_rule(emb: Path, tmp_path: Path, k: int) -> None:
    full = tmp_path / "full"
    match(emb, full, min_score=0.95, max_score=0.995, device="cpu", block_rows=64)
    capped = tmp_path / "capped"
    r = match(emb, capped, min_score=0.95, max_score=0.995, device="cpu",
                       block_rows=64, max_per_anchor=k)
    all_pairs = read_pairs(full)
    kept = read_pairs(capped)
    assert set(kept) == oracle_cap(all_pairs, k)
    assert len(kept) < len(all_pairs)
    assert r.manifest["counts"]["unordered_before_max_per_anchor"] == len(all_pairs)
    assert len(r.manifest["shards"]) == 5  # one final shard per block, as without the cap


def test_max_per_anchor_ties_go_to_the_smaller_id(tmp_path: Path) -> None:
    # image 0 scores exactly c with 1, 2 and 3 (a tie); each of 1, 2, 3 has a better partner
    # (4, 5, 6 at 0.99); every other score is outside [0.97, 0.995]
    c, s = 0.98, np.sqrt(1 - 0.98**2)
    cos, sin = 0.99, np.sqrt(1 - 0.99**2)
    e = np.eye(4)
    v = np.zeros((7, 4))
    v[0] = e[0]
    for k in (1, 2, 3):
        v[k] = c * e[0] + s * e[k]
        v[k + 3] = cos * v[k] - sin * (s * e[0] - c * e[k])
    emb = make_store(tmp_path / "emb", v.astype(np.float32))
    out = tmp_path / "p"
    match(emb, out, min_score=0.97, max_score=0.995, device="cpu")
    assert set(read_pairs(out)) == {(0, 1), (0, 2), (0, 3), (1, 4), (2, 5), (3, 6)}
    out1 = tmp_path / "p1"
    match(emb, out1, min_score=0.97, max_score=0.995, max_per_anchor=1, device="cpu")
    # 0 keeps 1 (the tie goes to the smaller id); 1, 2, 3 keep 4, 5, 6; nobody keeps (0, 2)
    assert set(read_pairs(out1)) == {(0, 1), (1, 4), (2, 5), (3, 6)}
    assert set(read_pairs(out1)) == oracle_cap(read_pairs(out), 1)


def test_duplicates_by_hash_are_never_pairs(tmp_path: Path) -> None:
    v = clustered(60, 8, seed=5)
    sha: list[str | None] = [f"{i:064x}" for i in range(60)]
    rng = np.random.default_rng(0)
    for i in (10, 11, 12):  # the same image four times (vectors a little apart: score < 1)
        v[i] = v[3] + 0.01 * rng.standard_normal(8)
        v[i] /= np.linalg.norm(v[i])
    for i in (3, 10, 11, 12):
        sha[i] = "d" * 64
    sha[30] = sha[31] = "e" * 64  # same content hash, different vectors (a hash says so)
    sha[40] = sha[41] = None  # no hash: never a duplicate
    v[41] = v[40] + 0.01 * rng.standard_normal(8)
    v[41] /= np.linalg.norm(v[41])
    emb = make_store(tmp_path / "emb", v, sha=sha)
    out = tmp_path / "pairs"
    r = match(emb, out, min_score=-1.0, max_score=1.0, device="cpu")
    found = read_pairs(out)
    dups = {(3, 10), (3, 11), (3, 12), (10, 11), (10, 12), (11, 12), (30, 31)}
    scores = oracle_scores(stored(emb))
    assert all(-1 <= scores[p] < 0.9999 for p in dups | {(40, 41)})
    assert set(found) == {p for p, s in scores.items() if s <= 1.0} - dups
    assert (40, 41) in found
    table = pq.read_table(out / "duplicates.parquet").to_pydict()
    got = set(zip(table["a"], table["b"], strict=True))
    assert got == dups and r.duplicates == 7
    assert table["sha256"][table["a"].index(30)] == "e" * 64
    assert r.manifest["counts"]["duplicate_groups"] == 2
    # with a subset only the duplicates among the considered images are listed
    out2 = tmp_path / "sub"
    r2 = match(emb, out2, subset=30, seed=1, min_score=-1.0, max_score=1.0,
                        device="cpu")
    ids = set(pq.read_table(out2 / "subset.parquet").column("id").to_pylist())
    got2 = set(zip(*pq.read_table(out2 / "duplicates.parquet").to_pydict().values(),
                   strict=False))
    assert {(a, b) for a, b, _ in got2} == {p for p in dups if set(p) <= ids}
    assert r2.duplicates == len(got2)


def test_sweep_counts_equal_the_oracle(emb: Path, tmp_path: Path) -> None:
    out = tmp_path / "pairs"
    r = match(emb, out, sweep="0.9:1.0:0.02", device="cpu", block_rows=100)
    sweep = r.manifest["sweep"]
    assert sweep == r.sweep
    grid = sweep["grid"]
    assert grid == [0.9, 0.92, 0.94, 0.96, 0.98, 1.0]
    scores = oracle_scores(stored(emb))
    s = np.array(list(scores.values()))
    for i, lo in enumerate(grid):
        for j, hi in enumerate(grid):
            if i >= j:
                assert sweep["counts"][i][j] is None
                continue
            want = int(((s >= lo) & (s <= hi)).sum())
            unsure = int(((np.abs(s - lo) <= TOL) | (np.abs(s - hi) <= TOL)).sum())
            assert abs(sweep["counts"][i][j] - want) <= unsure, (lo, hi)
    # the sweep comes from the same search: its [0.96, 0.98] cell is this run's band filter
    r2 = match(emb, tmp_path / "b", min_score=0.96, max_score=0.98, device="cpu")
    assert sweep["counts"][3][4] == r2.pairs


def test_histogram_covers_the_one_search(emb: Path, tmp_path: Path) -> None:
    band = match(emb, tmp_path / "n", device="cpu")
    m = band.manifest
    assert (m["search"]["lo"], m["search"]["hi"]) == (0.97, 0.99)
    assert m["histogram"]["edges"] == [0.97, 0.975, 0.98, 0.985, 0.99]
    assert sum(m["histogram"]["counts"]) == band.pairs == m["search"]["pairs_in_range"]
    wide = match(emb, tmp_path / "w", device="cpu", wide_histogram=True)
    assert store_files(tmp_path / "w")["pairs/pairs-00000.parquet"] == \
        store_files(tmp_path / "n")["pairs/pairs-00000.parquet"]
    assert wide.manifest["search"]["pairs_in_range"] > 2 * band.pairs
    # a sweep widens the one search; the histogram covers what was searched, at no extra cost
    swept = match(emb, tmp_path / "s", device="cpu", sweep="0.9:1.0:0.05")
    h, search = swept.manifest["histogram"], swept.manifest["search"]
    assert (search["lo"], search["hi"]) == (0.9, 1.0)
    assert len(h["counts"]) == 20 and sum(h["counts"]) == search["pairs_in_range"]
    assert h["counts"][14:18] == m["histogram"]["counts"]


# ---------------------------------------------------------------------------------------------
# resume and overwrite


class StopAfter:
    """A progress sink that interrupts the run after ``n`` finished blocks."""

    def __init__(self, n: int) -> None:
        self.n = n

    def start(self, description: str, total: int | None, unit: str = "items") -> None:
        pass

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.n -= n
        if self.n <= 0:
            raise KeyboardInterrupt

    def finish(self) -> None:
        pass


@pytest.mark.parametrize("cap", [None, 2])
def test_resume_is_byte_identical(emb: Path, tmp_path: Path, cap: int | None) -> None:
    # 240 anchors in 5 blocks of 50; tiles of one block x 50 targets: group g has 5 - g
    # tiles. Interrupted after 6 tiles: block 0 assembled, group 1 with 1 of its 4 tiles
    opts: dict[str, Any] = {"min_score": 0.96, "max_score": 0.99, "subset": 0.8, "seed": 4,
                            "max_per_anchor": cap, "sweep": "0.9:1.0:0.05",
                            "block_rows": 50, "device": "cpu"}
    ref = tmp_path / "ref"
    match(emb, ref, **opts)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        match(emb, out, progress=StopAfter(6), tile_rows=50, **opts)
    assert not (out / "manifest.json").exists() and (out / ".partial").is_dir()
    block_dir = out / "pairs" if cap is None else out / ".partial" / "blocks"
    assert len(list(block_dir.glob("pairs-*.parquet"))) == 1
    assert len(list((out / ".partial" / "tiles").glob("tile-*.parquet"))) == 1
    with pytest.raises(pairmine.StoreError, match="incomplete"):
        pairmine.open_pairs(out)
    r = match(emb, out, **opts)  # the recorded tile shape is kept
    assert r.resumed and r.blocks_skipped == 1
    assert r.tiles == 15 and r.tiles_run == 15 - 6
    a, b = store_files(ref), store_files(out)
    assert a.keys() == b.keys()
    assert len(a) == 5 + 3  # 5 block shards + subset, duplicates, manifest
    for name in a:
        if name == "manifest.json":
            assert without_timings(a[name]) == without_timings(b[name])
        else:
            assert a[name] == b[name], name


def test_resume_with_other_options_is_refused(emb: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        match(emb, out, block_rows=100, device="cpu", progress=StopAfter(1))
    with pytest.raises(pairmine.StoreError, match="other options"):
        match(emb, out, block_rows=100, min_score=0.9, device="cpu")
    # --overwrite starts again
    r = match(emb, out, block_rows=100, min_score=0.9, device="cpu", overwrite=True)
    assert not r.resumed


def test_complete_store_needs_overwrite(emb: Path, tmp_path: Path) -> None:
    out = tmp_path / "pairs"
    runner = CliRunner()
    args = ["match", str(emb), str(out), "--device", "cpu"]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    before = (out / "manifest.json").read_bytes()
    again = runner.invoke(cli, args)
    assert again.exit_code == 1 and "--overwrite" in again.output
    assert (out / "manifest.json").read_bytes() == before
    assert runner.invoke(cli, [*args, "--overwrite"]).exit_code == 0


# ---------------------------------------------------------------------------------------------
# the command


def test_cli_summary_and_sweep_table(emb: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["match", str(emb), str(tmp_path / "p"), "--subset", "0.5",
                                   "--sweep", "0.94:1.0:0.02", "--max-per-anchor", "5",
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    for text in ("pairs (unordered, a < b)", "pairs (ordered, Algorithm 1)", "anchors",
                 "duplicates", "positives per anchor", "sweep", f"{m['counts']['ordered']:,}"):
        assert text in res.output, text


def _bad_stores(tmp: Path) -> dict[str, Path]:
    v = clustered(20, 4, seed=0)
    no_manifest = make_store(tmp / "nomanifest", v)
    (no_manifest / "manifest.json").unlink()
    nan = v.copy()
    nan[7, 2] = np.nan
    return {"ok": make_store(tmp / "ok", v), "nomanifest": no_manifest,
            "nan": make_store(tmp / "nan", nan),
            "mixed": make_store(tmp / "mixed", v, shards=2, dims=[4, 5]),
            "missing": tmp / "does-not-exist"}


@pytest.mark.parametrize(("store", "extra", "message"), [
    ("ok", ["--min", "0.99", "--max", "0.97"], "greater than --max"),
    ("ok", ["--min", "-1.5"], "outside [-1, 1]"),
    ("ok", ["--max", "1.01"], "outside [-1, 1]"),
    ("nomanifest", [], "no manifest.json"),
    ("missing", [], "does not exist"),
    ("mixed", [], "is damaged: emb/emb-00001.npy"),
    ("nan", [], "NaN"),
    ("ok", ["--subset", "0.5", "--seed", "-1"], "--seed -1 is not an integer >= 0"),
    ("ok", ["--subset", "21"], "larger than the store"),
    ("ok", ["--subset", "0"], "not a count"),
    ("ok", ["--subset", "1.5"], "not a fraction"),
    ("ok", ["--subset", "ten"], "neither a fraction nor a count"),
    ("ok", ["--sweep", "0.9:0.8:0.01"], "--sweep"),
    ("ok", ["--sweep", "0.9:1.0:0.03"], "not a multiple"),
    ("ok", ["--device", "tpu"], "device"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, store: str,
                                                  extra: list[str], message: str) -> None:
    stores = _bad_stores(tmp_path / "in")
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["match", str(stores[store]), str(out), *extra])
    # an option value the config refuses is a usage error (2); a store's problems exit 1
    usage = store == "ok" and message != "larger than the store"
    assert res.exit_code == (2 if usage else 1), res.output
    assert message in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    # a NaN is found by the tile that reads its row (no pass over the whole store before the
    # run): the store is left unfinished, and says so
    assert not out.exists() or (store == "nan" and not (out / "manifest.json").exists())


def test_output_inside_the_input_is_refused(emb: Path, tmp_path: Path) -> None:
    with pytest.raises(pairmine.ConfigError, match="overlaps"):
        match(emb, emb, overwrite=True)
    assert (emb / "manifest.json").exists()


def test_resume_is_byte_identical_at_engine_scale(tmp_path: Path) -> None:
    # large enough for the torch engine to plan its pruning from a sample (>= 4096 rows, D > 16)
    emb = make_store(tmp_path / "emb", clustered(6000, 32, seed=2, clusters=40),
                     dtype="float16")
    opts: dict[str, Any] = {"block_rows": 1500, "device": "cpu", "max_per_anchor": 3,
                            "sweep": "0.9:1.0:0.05"}
    match(emb, tmp_path / "ref", **opts)
    with pytest.raises(KeyboardInterrupt):
        match(emb, tmp_path / "out", progress=StopAfter(2), **opts)
    match(emb, tmp_path / "out", **opts)
    a, b = store_files(tmp_path / "ref"), store_files(tmp_path / "out")
    assert a.keys() == b.keys()
    assert without_timings(a.pop("manifest.json")) == without_timings(b.pop("manifest.json"))
    assert a == b


@pytest.mark.gpu
def test_cuda_gives_the_cpu_bytes(emb: Path, tmp_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    for device in ("cpu", "cuda"):
        match(emb, tmp_path / device, device=device, subset=0.5, sweep="0.9:1.0:0.02")
    cpu, gpu = store_files(tmp_path / "cpu"), store_files(tmp_path / "cuda")
    for name in ("pairs/pairs-00000.parquet", "subset.parquet", "duplicates.parquet"):
        assert cpu[name] == gpu[name]
    assert json.loads(cpu["manifest.json"])["sweep"] == json.loads(gpu["manifest.json"])["sweep"]
