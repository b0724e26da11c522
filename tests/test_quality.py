"""Pair quality: accuracy views, neighbour baselines, the band grid, calibration, the report.

Stores are written here with the store helpers (the layout open_embeddings/open_pairs
read) and checked against brute-force oracles written out loop by loop; one test runs the
real pipeline (embed → match → eval-pairs, calibrate, show) on a generated image folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from pairmine import stores
from pairmine.cli import cli
from pairmine.errors import ConfigError, InputError, StoreError
from pairmine.quality import bands as bd
from pairmine.quality.accuracy import eval_pairs, knn_accuracy, pair_accuracy
from pairmine.quality.calibrate import calibrate, suggest_for_precision, suggest_for_yield
from pairmine.quality.labels import Scope, load_labels
from pairmine.quality.report import histogram_svg, render_page, show

# ---------------------------------------------------------------------------------------------
# stores written by hand, the way embed and match lay them out


def clustered(n: int, d: int, classes: int, spread: float,
              seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around ``classes`` random centres; labels = the centre."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d))
    labels = rng.integers(0, classes, size=n)
    x = centres[labels] + spread * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels.astype(np.int64)


def write_emb(root: Path, vectors: np.ndarray, labels: list[int | None] | np.ndarray | None, *,
              sources: list[str] | None = None, keys: list[str] | None = None,
              class_names: list[str] | None = None,
              hashes: list[str] | None = None) -> Path:
    n, d = vectors.shape
    (root / "emb").mkdir(parents=True)
    stores.save_npy_atomic(root / "emb" / "emb-00000.npy", vectors)
    keys = keys or [f"c{0 if labels is None else labels[i]}/{i:04d}.png" for i in range(n)]
    meta = pa.table({
        "id": pa.array(np.arange(n), pa.int64()),
        "key": pa.array(keys, pa.string()),
        "source": pa.array(sources or [f"/nowhere/{k}" for k in keys], pa.string()),
        "member": pa.array([None] * n, pa.string()),
        "label": pa.array([None] * n if labels is None else
                          [None if v is None else int(v) for v in labels], pa.int64()),
        "sha256": pa.array(hashes or [hashlib.sha256(k.encode()).hexdigest() for k in keys],
                           pa.string()),
    }, schema=stores.META_SCHEMA())
    stores.write_parquet_atomic(root / "meta" / "meta-00000.parquet", meta)
    stores.finish_store(root, {
        "format": stores.EMBEDDINGS_FORMAT, "count": n, "dim": d, "dtype": str(vectors.dtype),
        "shards": [{"emb": "emb/emb-00000.npy", "meta": "meta/meta-00000.parquet", "rows": n,
                    "id_start": 0}],
        "source": {"kind": "folder", "spec": str(root), "class_names": class_names}})
    return root


def oracle(vectors: np.ndarray, lo: float, hi: float, anchors: np.ndarray | None = None,
           against: str = "anchors") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every unordered pair with lo <= float64 dot <= hi, loop by loop (the definition)."""
    v = vectors.astype(np.float64)
    n = v.shape[0]
    anc = list(range(n)) if anchors is None else [int(i) for i in anchors]
    targets = anc if against == "anchors" else list(range(n))
    found: dict[tuple[int, int], float] = {}
    for i in anc:
        for j in targets:
            if i != j:
                s = float(v[i] @ v[j])
                if lo <= s <= hi:
                    found[(min(i, j), max(i, j))] = s
    keys = sorted(found)
    return (np.array([k[0] for k in keys], np.int64), np.array([k[1] for k in keys], np.int64),
            np.array([found[k] for k in keys], np.float32))


def write_pairs(root: Path, emb: Path, lo: float, hi: float, *,
                subset: np.ndarray | None = None, against: str = "subset",
                pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> Path:
    e = stores.open_embeddings(emb)
    if pairs is None:
        pairs = oracle(np.asarray(e.vectors), lo, hi, subset,
                       "anchors" if against == "subset" else "all")
    a, b, s = pairs
    (root / "pairs").mkdir(parents=True)
    stores.write_parquet_atomic(root / "pairs" / "pairs-00000.parquet",
                             pa.table({"a": a, "b": b, "score": s}, schema=stores.PAIRS_SCHEMA()))
    ids = np.arange(len(e)) if subset is None else np.asarray(subset)
    stores.write_parquet_atomic(root / "subset.parquet",
                             pa.table({"id": pa.array(ids, pa.int64())}))
    stores.finish_store(root, {
        "format": stores.PAIRS_FORMAT, "inputs": {"embeddings": stores.input_record(emb)},
        "config": {"min": lo, "max": hi, "against": against}, "min": lo, "max": hi,
        "shards": ["pairs/pairs-00000.parquet"],
        "subset": stores.SubsetRecord(stores.SUBSET_FILE, len(ids), len(e), 0, None,
                                      against).to_json(),
        "counts": {"unordered": int(a.size), "ordered": 2 * int(a.size)}})
    return root


@pytest.fixture
def blobs(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    x, y = clustered(240, 12, 4, 0.45, seed=7)
    return write_emb(tmp_path / "emb", x, y, class_names=["ant", "bee", "cow", "doe"]), x, y


# ---------------------------------------------------------------------------------------------
# pair accuracy, three views


def brute_accuracy(a: np.ndarray, b: np.ndarray, y: np.ndarray,
                   anchors: set[int]) -> dict[str, Any]:
    lab = [(i, j) for i, j in zip(a.tolist(), b.tolist(), strict=True) if y[i] >= 0 and y[j] >= 0]
    ordered = [(i, j) for i, j in lab if i in anchors] + [(j, i) for i, j in lab if j in anchors]
    rows: dict[int, list[bool]] = {}
    for i, j in ordered:
        rows.setdefault(i, []).append(bool(y[i] == y[j]))
    anchor_labels = [int(y[i]) for i in anchors if y[i] >= 0]
    p = {c: anchor_labels.count(c) / len(anchor_labels) for c in set(anchor_labels)}
    return {
        "unordered": sum(y[i] == y[j] for i, j in lab) / len(lab) if lab else None,
        "ordered": sum(y[i] == y[j] for i, j in ordered) / len(ordered) if ordered else None,
        "ordered_pairs": len(ordered),
        "per_anchor": (sum(sum(v) / len(v) for v in rows.values()) / len(rows)) if rows else None,
        "anchors_with_pairs": len(rows),
        "chance": sum(v * v for v in p.values()),
        "per_class": {c: (sum(y[j] == c for i, j in ordered if y[i] == c),
                          sum(1 for i, _ in ordered if y[i] == c)) for c in p},
    }


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 30), m=st.integers(0, 60), seed=st.integers(0, 10_000),
       all_anchors=st.booleans())
def test_pair_accuracy_matches_brute_force(n: int, m: int, seed: int, all_anchors: bool) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(-1, 3, size=n)  # -1: unknown label
    i, j = rng.integers(0, n, size=(2, m))
    keep = i != j
    a, b = np.minimum(i, j)[keep], np.maximum(i, j)[keep]
    anchors = set(range(n)) if all_anchors else set(rng.choice(n, size=max(1, n // 2),
                                                               replace=False).tolist())
    is_anchor = np.isin(np.arange(n), sorted(anchors))
    got = pair_accuracy(a, b, y, is_anchor, str)
    want = brute_accuracy(a, b, y, anchors)
    for key in ("unordered", "ordered", "per_anchor"):
        assert (getattr(got, key) is None) == (want[key] is None), key
        if want[key] is not None:
            assert getattr(got, key) == pytest.approx(want[key]), key
    assert got.ordered_pairs == want["ordered_pairs"]
    assert got.anchors_with_pairs == want["anchors_with_pairs"]
    assert got.chance == pytest.approx(want["chance"])
    for c in got.per_class:
        hits, total = want["per_class"].get(c.label, (0, 0))
        assert (c.correct, c.ordered) == (hits, total)


def test_ordered_equals_unordered_share_for_a_subset_with_itself() -> None:
    y = np.array([0, 0, 1, 1, 0])
    a, b = np.array([0, 0, 2, 1]), np.array([1, 2, 3, 4])
    acc = pair_accuracy(a, b, y, np.ones(5, bool), str)
    assert acc.unordered == acc.ordered == pytest.approx(0.75)
    assert acc.ordered_pairs == 2 * acc.labelled == 8
    # anchor 0: partners 1 (same), 2 (no) → 0.5; 1: 0, 4 → 1; 2: 0, 3 → 0.5; 3: 2; 4: 1 → 1
    assert acc.per_anchor == pytest.approx((0.5 + 1 + 0.5 + 1 + 1) / 5)
    assert acc.chance == pytest.approx((3 / 5) ** 2 + (2 / 5) ** 2)


# ---------------------------------------------------------------------------------------------
# neighbour baselines


def brute_knn(x: np.ndarray, y: np.ndarray, queries: np.ndarray, targets: np.ndarray,
              k: int) -> float:
    s = x.astype(np.float64) @ x.astype(np.float64).T
    hits = total = 0
    for q in queries:
        cand = [t for t in targets if t != q]
        order = sorted(cand, key=lambda t: (-s[q, t], t))[:k]
        hits += sum(int(y[q] == y[t]) for t in order)
        total += len(order)
    return hits / total


@pytest.mark.parametrize("against", ["anchors", "all"])
def test_knn_matches_brute_force(against: str) -> None:
    x, y = clustered(150, 8, 3, 0.9, seed=3)
    anchors = np.arange(0, 150, 2, dtype=np.int64)
    scope = Scope(anchors=anchors, against=against, n_rows=150)
    got = knn_accuracy(x, scope, y, (1, 5, 10), block_rows=16)
    for nb in got:
        assert nb.queries == 75
        assert nb.labelled == 75 * nb.k
        assert nb.accuracy == pytest.approx(brute_knn(x, y, anchors, scope.targets(), nb.k))


def test_knn_excludes_self_even_when_a_duplicate_ties() -> None:
    x = np.array([[1, 0], [1, 0], [0, 1], [0.6, 0.8]], np.float32)
    y = np.array([0, 1, 1, 1])
    (nn,) = knn_accuracy(x, Scope(np.arange(4), "anchors", 4), y, (1,))
    # 0 ↔ 1 are each other's nearest (labels differ), 2 → 3 and 3 → 2 (same)
    assert (nn.correct, nn.labelled) == (2, 4)


def test_knn_skips_k_larger_than_the_images() -> None:
    x, y = clustered(4, 3, 2, 0.5, seed=1)
    got = knn_accuracy(x, Scope(np.arange(4), "anchors", 4), y, (1, 3, 10))
    assert [nb.k for nb in got] == [1, 3]


# ---------------------------------------------------------------------------------------------
# the band grid


def brute_band(a: np.ndarray, b: np.ndarray, s: np.ndarray, y: np.ndarray | None,
               anchors: set[int], lo: float, hi: float) -> dict[str, Any]:
    sel = [(i, j) for i, j, v in zip(a.tolist(), b.tolist(), s.astype(np.float64).tolist(),
                                     strict=True) if lo <= v <= hi]
    ends = [i for i, j in sel if i in anchors] + [j for i, j in sel if j in anchors]
    out = {"pairs": len(sel), "ordered": len(ends), "covered": len(set(ends))}
    if y is not None:
        known = [(i, j) for i, j in sel if y[i] >= 0 and y[j] >= 0]
        out["labelled"] = len(known)
        out["correct"] = sum(int(y[i] == y[j]) for i, j in known)
    return out


@pytest.mark.parametrize("against", ["anchors", "all"])
def test_band_table_matches_brute_force(against: str) -> None:
    x, y = clustered(120, 6, 3, 0.6, seed=11)
    y[::7] = -1
    anchors = np.sort(np.random.default_rng(0).choice(120, 70, replace=False)).astype(np.int64)
    scope = Scope(anchors=anchors, against=against, n_rows=120)
    floor = 0.8
    scored = bd.scored_from_pairs(*oracle(x, floor, 1.0, anchors, against), floor)
    bands = bd.all_bands(bd.grid(floor, 1.0, 0.025), bd.grid(0.825, 1.0, 0.025))
    rows = bd.band_table(scored, scope, y, bands)
    assert len(rows) == len(bands) > 20
    for row in rows:
        want = brute_band(scored.a, scored.b, scored.score, y, set(anchors.tolist()),
                          row.lo, row.hi)
        assert (row.pairs, row.ordered, row.labelled, row.correct) == (
            want["pairs"], want["ordered"], want["labelled"], want["correct"]), row
        assert row.coverage == pytest.approx(want["covered"] / anchors.size)
        assert row.per_image == pytest.approx(want["ordered"] / anchors.size)


def test_scan_scores_finds_exactly_the_oracle_pairs(blobs: tuple[Path, np.ndarray,
                                                                 np.ndarray]) -> None:
    _, x, _ = blobs
    anchors = np.arange(0, 240, 3, dtype=np.int64)
    for against in ("anchors", "all"):
        scope = Scope(anchors=anchors, against=against, n_rows=240)
        got = bd.scan_scores(x, 0.7, scope)
        a, b, _ = oracle(x, 0.7, 1.0, anchors, against)
        assert set(zip(got.a.tolist(), got.b.tolist(), strict=True)) == set(
            zip(a.tolist(), b.tolist(), strict=True))
        assert np.all(np.diff(got.score) >= 0)


def test_scan_drops_identical_images_and_bounds_memory() -> None:
    x = np.array([[1, 0], [1, 0], [0.99, 0.141], [0, 1]], np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    content = np.array([5, 5, 6, 7])
    scope = Scope(np.arange(4), "anchors", 4)
    got = bd.scan_scores(x, 0.9, scope, content=content)
    assert sorted(zip(got.a.tolist(), got.b.tolist(), strict=True)) == [(0, 2), (1, 2)]
    with pytest.raises(ConfigError, match="raise the floor"):
        bd.scan_scores(x, 0.9, scope, max_pairs=2)


def test_wilson_interval() -> None:
    assert bd.wilson(0, 0) is None
    lo, hi = bd.wilson(90, 100) or (0, 0)
    assert lo == pytest.approx(0.8256, abs=1e-3) and hi == pytest.approx(0.9448, abs=1e-3)
    assert bd.wilson(10, 10) is not None and (bd.wilson(10, 10) or (0, 0))[1] == 1.0


# ---------------------------------------------------------------------------------------------
# suggestions


def row(lo: float, hi: float, per_image: float, labelled: int = 0,
        correct: int = 0) -> bd.BandStats:
    ci = bd.wilson(correct, labelled)
    return bd.BandStats(lo=lo, hi=hi, pairs=int(per_image * 50), ordered=int(per_image * 100),
                        per_image=per_image, coverage=0.5, labelled=labelled, correct=correct,
                        precision=correct / labelled if labelled else None,
                        ci_low=None if ci is None else ci[0],
                        ci_high=None if ci is None else ci[1])


def test_precision_target_picks_the_most_yield_that_is_surely_precise_enough() -> None:
    rows = [row(0.90, 0.99, 5.0, 1000, 800),   # too imprecise
            row(0.94, 0.99, 2.0, 1000, 970),   # 97% (lower bound 95.7%)
            row(0.96, 0.99, 1.0, 1000, 990),   # qualifies, less yield
            row(0.80, 0.99, 9.0, 10, 10),      # too few labelled pairs
            row(0.90, 1.00, 8.0, 1000, 990)]   # hi above the cap
    pick, _ = suggest_for_precision(rows, 0.95, max_cap=0.99, min_support=30)
    assert pick is not None and (pick.lo, pick.hi) == (0.94, 0.99)
    none, note = suggest_for_precision(rows, 0.999, max_cap=0.99, min_support=30)
    assert none is None and "no band" in note and "[0.96, 0.99]" in note


def test_yield_target_with_and_without_labels() -> None:
    rows = [row(0.90, 0.99, 5.0, 100, 70), row(0.93, 0.99, 2.5, 100, 90),
            row(0.95, 0.99, 1.5, 100, 97), row(0.97, 0.99, 0.5, 100, 99)]
    pick, _ = suggest_for_yield(rows, 2.0, 0.99, labelled=True)
    assert pick is not None and pick.lo == 0.93
    unlabelled = [row(r.lo, r.hi, r.per_image) for r in rows]
    pick, _ = suggest_for_yield(unlabelled, 1.0, 0.99, labelled=False)
    assert pick is not None and pick.lo == 0.95
    none, note = suggest_for_yield(rows, 50.0, 0.99, labelled=True)
    assert none is None and "lower --floor" in note


# ---------------------------------------------------------------------------------------------
# calibrate


def test_calibrate_grid_matches_oracle_and_writes_json(
        blobs: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    emb, x, y = blobs
    out = tmp_path / "cal.json"
    result = calibrate(emb, floor=0.8, step=0.02, max_cap=0.99, target_precision=0.9,
                       out=out)
    a, b, s = oracle(x, 0.8, 1.0)
    for r in result.bands:
        want = brute_band(a, b, s, y, set(range(240)), r.lo, r.hi)
        assert (r.pairs, r.labelled, r.correct) == (want["pairs"], want["labelled"],
                                                   want["correct"])
    assert result.pairs_above_floor == a.size
    assert result.paper_band is not None and (result.paper_band.lo,
                                              result.paper_band.hi) == (0.97, 0.99)
    assert result.suggestion is not None and result.suggestion.hi <= 0.99
    assert result.suggestion.stats.ci_low is not None
    assert result.suggestion.stats.ci_low >= 0.9
    saved = json.loads(out.read_text())
    assert saved["format"] == "pairmine/calibration"
    assert saved["suggestion"]["lo"] == result.suggestion.lo
    assert len(saved["bands"]) == len(result.bands)


def test_calibrate_subset_and_label_sample(blobs: tuple[Path, np.ndarray, np.ndarray]) -> None:
    emb, _, _ = blobs
    full = calibrate(emb, floor=0.85, step=0.05)
    part = calibrate(emb, floor=0.85, step=0.05, subset=0.5, seed=3, labels_sample=60,
                     target_yield=0.5)
    assert part.anchors == 120 and part.against == "all"
    assert part.labelled_images == 60
    f = {(r.lo, r.hi): r for r in full.bands}
    for r in part.bands:
        assert r.labelled <= f[(r.lo, r.hi)].labelled
        assert r.pairs <= f[(r.lo, r.hi)].pairs
    again = calibrate(emb, floor=0.85, step=0.05, subset=0.5, seed=3, labels_sample=60,
                      target_yield=0.5)
    assert [r.as_dict() for r in again.bands] == [r.as_dict() for r in part.bands]


def test_calibrate_without_labels(tmp_path: Path) -> None:
    x, _ = clustered(60, 6, 2, 0.5, seed=2)
    emb = write_emb(tmp_path / "emb", x, None)
    result = calibrate(emb, floor=0.9, step=0.01, target_yield=0.2)
    assert result.labels is None and all(r.precision is None for r in result.bands)
    with pytest.raises(InputError, match="--labels FILE"):
        calibrate(emb, target_precision=0.9)


def test_calibrate_no_labels_ignores_the_labels_it_has(
        blobs: tuple[Path, np.ndarray, np.ndarray]) -> None:
    emb, _, _ = blobs
    blind = calibrate(emb, floor=0.85, step=0.05, target_yield=0.5, use_labels=False)
    assert blind.labels is None and all(r.precision is None for r in blind.bands)
    seen = calibrate(emb, floor=0.85, step=0.05, target_yield=0.5)
    assert seen.labels is not None
    # same search, same yields; only the label columns differ
    assert [(r.lo, r.hi, r.pairs) for r in blind.bands] == [(r.lo, r.hi, r.pairs)
                                                           for r in seen.bands]
    assert blind.suggestion is not None and "lower bound" in blind.suggestion.rule


@pytest.mark.parametrize("kwargs, message", [
    ({"target_precision": 0.9, "target_yield": 1.0}, "alternatives"),
    ({"target_precision": 0.9, "use_labels": False}, "--no-labels"),
    ({"labels_sample": 10, "use_labels": False}, "--no-labels"),
    ({"floor": 1.0}, "--floor"),
    ({"step": 0.0}, "--step"),
    ({"max_cap": 0.5}, "--max-cap"),
    ({"target_precision": 1.5}, "--target-precision"),
    ({"target_yield": -1.0}, "--target-yield"),
    ({"labels_sample": 10_000}, "--labels-sample"),
    ({"subset": 0}, "subset"),
])
def test_calibrate_rejects_bad_options(blobs: tuple[Path, np.ndarray, np.ndarray],
                                       kwargs: dict[str, Any], message: str) -> None:
    emb, _, _ = blobs
    with pytest.raises(ConfigError, match=message):
        calibrate(emb, **kwargs)


# ---------------------------------------------------------------------------------------------
# eval-pairs


def test_eval_pairs_on_a_subset(blobs: tuple[Path, np.ndarray, np.ndarray],
                                tmp_path: Path) -> None:
    emb, x, y = blobs
    subset = np.arange(0, 240, 2, dtype=np.int64)
    pairs = write_pairs(tmp_path / "pairs", emb, 0.9, 0.99, subset=subset)
    report = eval_pairs(pairs, ks=(1, 5), grid_step=0.02, out=tmp_path / "eval.json")
    a, b, _ = oracle(x, 0.9, 0.99, subset)
    want = brute_accuracy(a, b, y, set(subset.tolist()))
    assert report.accuracy.unordered == pytest.approx(want["unordered"])
    assert report.accuracy.ordered_pairs == 2 * a.size
    assert report.anchors == 120
    assert [nb.k for nb in report.baselines] == [1, 5]
    assert report.baselines[0].accuracy == pytest.approx(brute_knn(x, y, subset, subset, 1))
    own = report.band_row(0.9, 0.99)
    assert own is not None and own.pairs == a.size  # the grid reproduces the store's band
    assert report.grid_floor == pytest.approx(0.85)
    assert {r.hi for r in report.bands} == {0.99, 1.0}
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["accuracy"]["unordered"] == pytest.approx(want["unordered"])


def test_labels_from_a_file(blobs: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    emb, _, y = blobs
    store = stores.open_embeddings(emb)
    keys = store.meta.column("key").to_pylist()
    names = ["ant", "bee", "cow", "doe"]
    csv = tmp_path / "labels.csv"
    csv.write_text("key,label\n" + "".join(f"{k},{names[v]}\n" for k, v in zip(keys, y,
                                                                              strict=True)))
    lab = load_labels(store, csv)
    assert lab is not None and lab.names == names and np.array_equal(lab.codes, y)
    parquet = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"key": keys[:100], "label": y[:100]}), parquet)
    lab = load_labels(store, parquet)
    assert lab is not None and np.array_equal(lab.codes[:100], y[:100])
    assert np.all(lab.codes[100:] == -1)


@pytest.mark.parametrize("text, message", [
    ("name,label\na,1\n", "no key column"),
    ("key,label\nc0/0000.png,1\nc0/0000.png,2\n", "more than once"),
    ("key,label\nnot-a-key,1\n", "gives no label"),
])
def test_bad_label_files(blobs: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path, text: str,
                         message: str) -> None:
    emb, _, _ = blobs
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    with pytest.raises(InputError, match=message):
        load_labels(stores.open_embeddings(emb), bad)


def test_cli_eval_pairs_errors_are_one_line(tmp_path: Path) -> None:
    x, _ = clustered(40, 6, 2, 0.3, seed=5)
    emb = write_emb(tmp_path / "emb", x, None)
    pairs = write_pairs(tmp_path / "pairs", emb, 0.9, 0.99)
    runner = CliRunner()
    res = runner.invoke(cli, ["eval-pairs", str(pairs)])
    assert res.exit_code == 1
    assert "no labels" in res.output and "--labels FILE" in res.output
    assert "Traceback" not in res.output
    # the embeddings the pairs were made from are gone
    import shutil

    shutil.rmtree(emb)
    for args in (["eval-pairs", str(pairs)], ["show", str(pairs), str(tmp_path / "r")]):
        res = runner.invoke(cli, args)
        assert res.exit_code == 1, res.output
        assert "is gone" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()
    res = runner.invoke(cli, ["calibrate", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "does not exist" in res.output


def test_cli_eval_pairs_and_calibrate_print_tables(blobs: tuple[Path, np.ndarray, np.ndarray],
                                                   tmp_path: Path) -> None:
    emb, _, _ = blobs
    pairs = write_pairs(tmp_path / "pairs", emb, 0.9, 0.99)
    runner = CliRunner()
    res = runner.invoke(cli, ["eval-pairs", str(pairs), "--k", "1,5", "--grid-step", "0.02",
                              "--out", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    for text in ("ordered (Algorithm 1)", "nearest neighbour", "top-5", "chance", "doe",
                 "precision–yield"):
        assert text in res.output
    res = runner.invoke(cli, ["calibrate", str(emb), "--floor", "0.9", "--step", "0.01",
                              "--target-precision", "0.9", "--out", str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    assert "suggested band: --min" in res.output
    assert json.loads((tmp_path / "c.json").read_text())["suggestion"] is not None
    res = runner.invoke(cli, ["calibrate", str(emb), "--target-precision", "0.9",
                              "--target-yield", "1"])
    assert res.exit_code == 2 and "alternatives" in res.output  # contradicting options


# ---------------------------------------------------------------------------------------------
# show (the page as a file; tests/test_show_browser.py opens it in a real browser)


def image_store(tmp_path: Path, n: int = 24, *, png_size: int = 20) -> tuple[Path, Path]:
    """Real image files (some larger than a thumbnail) and a store that points at them."""
    from PIL import Image

    x, y = clustered(n, 6, 3, 0.35, seed=9)
    folder = tmp_path / "images"
    sources, keys = [], []
    rng = np.random.default_rng(0)
    for i in range(n):
        size = png_size if i % 4 else 300  # every 4th is big: re-encoded as a JPEG thumbnail
        path = folder / f"class{y[i]}" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
        sources.append(str(path))
        keys.append(f"class{y[i]}/{i:03d}.png")
    emb = write_emb(tmp_path / "emb", x, y, sources=sources, keys=keys,
                    class_names=["red", "green", "blue"])
    return emb, write_pairs(tmp_path / "pairs", emb, 0.5, 0.99)


def page_data(index: Path) -> dict[str, Any]:
    text = index.read_text(encoding="utf-8")
    start = text.index('<script id="pm-data" type="application/json">') + 45
    data: dict[str, Any] = json.loads(text[start:text.index("</script>", start)])
    return data


def test_show_writes_a_page_with_views_and_thumbnails(tmp_path: Path) -> None:
    emb, pairs = image_store(tmp_path)
    n_pairs = stores.open_pairs(pairs).table.num_rows
    result = show(pairs, tmp_path / "report", per_view=10, page_size=4)
    data = page_data(result.index)
    assert set(data["views"]) == {"top", "random", "lowest", "mismatch"}
    assert result.pairs == n_pairs > 10
    scores = [data["pairs"][i][2] for i in data["views"]["top"]["pairs"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 10
    low = [data["pairs"][i][2] for i in data["views"]["lowest"]["pairs"]]
    assert low == sorted(low)
    assert all(data["pairs"][i][3] == 0 for i in data["views"]["mismatch"]["pairs"])
    thumbs = sorted((tmp_path / "report" / "thumbs").iterdir())
    assert len(thumbs) == result.images == len(data["images"])
    big = [t for t in thumbs if t.suffix == ".jpg"]
    assert big and all(t.stat().st_size < 20_000 for t in big)
    small = next(t for t in thumbs if t.suffix == ".png")  # small PNGs pass through as is
    src = stores.open_embeddings(emb).meta.column("source")[int(small.stem)].as_py()
    assert small.read_bytes() == Path(src).read_bytes()
    html = result.index.read_text()
    assert 'id="pm-hist"' in html and "min 0.5" in html and "max 0.99" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html


def test_show_inline_missing_images_and_overwrite(tmp_path: Path) -> None:
    emb, pairs = image_store(tmp_path, n=12)
    first = int(stores.open_pairs(pairs).table.column("a")[0].as_py())
    Path(stores.open_embeddings(emb).meta.column("source")[first].as_py()).unlink()
    result = show(pairs, tmp_path / "r", inline=True, per_view=1000)
    data = page_data(result.index)
    assert not (tmp_path / "r" / "thumbs").exists()
    srcs = [v["src"] for k, v in data["images"].items() if k != str(first)]
    assert srcs and all(s.startswith("data:image/") for s in srcs)
    assert data["images"][str(first)]["src"] is None and len(result.missing) == 1
    assert "could not be read" in result.index.read_text()
    with pytest.raises(StoreError, match="already holds a report"):
        show(pairs, tmp_path / "r")
    again = show(pairs, tmp_path / "r", overwrite=True, per_view=5)
    assert (tmp_path / "r" / "thumbs").is_dir() and again.index.exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a report"):
        show(pairs, tmp_path / "other", overwrite=True)
    assert (tmp_path / "other" / "keep.txt").exists()


def test_page_escapes_keys_and_script_endings() -> None:
    data = {"pageSize": 1, "pairs": [], "views": {}, "images": {
        "0": {"key": "</script><img src=x onerror=alert(1)>", "label": None, "src": None}}}
    page = render_page(title="<t>", subtitle="s", summary="", histogram="", warning="",
                       data=data, thumb_px=64)
    assert page.count("</script>") == 2  # the data block's end and the code block's end
    assert "<t>" not in page and "&lt;t&gt;" in page


def test_histogram_uses_the_recorded_one(tmp_path: Path) -> None:
    x, y = clustered(30, 4, 2, 0.3, seed=1)
    emb = write_emb(tmp_path / "emb", x, y)
    pairs = write_pairs(tmp_path / "pairs", emb, 0.9, 0.99)
    manifest = json.loads((pairs / "manifest.json").read_text())
    manifest["histogram"] = {"edges": [0.85, 0.9, 0.95, 1.0], "counts": [7, 3, 1]}
    (pairs / "manifest.json").write_text(json.dumps(manifest))
    svg = histogram_svg(stores.open_pairs(pairs), np.zeros(0, np.float32))
    assert svg.count('class="bar"') == 3 and "as match recorded them" in svg
    assert "[0.8500, 0.9000): 7" in svg


def test_histogram_of_the_band_alone_bins_the_store_scores(tmp_path: Path) -> None:
    """match records only the band unless --wide-histogram: 4 bins of 0.005 over [0.97, 0.99]
    say nothing, so the page bins the store's own scores finer; the bounds are labelled."""
    x, y = clustered(60, 4, 2, 0.3, seed=1)
    emb = write_emb(tmp_path / "emb", x, y)
    pairs = write_pairs(tmp_path / "pairs", emb, 0.9, 0.99)
    manifest = json.loads((pairs / "manifest.json").read_text())
    manifest["histogram"] = {"edges": [0.9, 0.95, 0.99], "counts": [5, 5]}
    (pairs / "manifest.json").write_text(json.dumps(manifest))
    store = stores.open_pairs(pairs)
    score = store.table.column("score").to_numpy()
    svg = histogram_svg(store, score)
    assert "as match recorded them" not in svg and "--wide-histogram" in svg
    bars = re.findall(r"<title>\[([0-9.]+), ([0-9.]+)\): ([0-9,]+)</title>", svg)
    assert sum(int(c.replace(",", "")) for _, _, c in bars) == score.size
    assert all(float(hi) - float(lo) == pytest.approx(0.09 / 40, abs=1e-4) for lo, hi, _ in bars)
    assert "min 0.9<" in svg and "max 0.99<" in svg  # the bounds' labels
    assert ">0.900<" in svg and ">0.990<" in svg  # and the bounds among the axis ticks


def test_show_per_class_filter_and_title(tmp_path: Path) -> None:
    emb, pairs = image_store(tmp_path, n=30)
    result = show(pairs, tmp_path / "all", per_view=1000)
    html = result.index.read_text()
    assert "<title>" + "/".join(pairs.resolve().parts[-2:]) in html  # names the store
    # the per-class table holds eval-pairs' own numbers
    report = eval_pairs(pairs, ks=(1,))
    table = html[html.index('id="pm-classes"'):]
    table = table[:table.index("</table>")]
    for c in report.accuracy.per_class:
        assert f'data-class="{c.name}">{c.name}</button></td><td>{c.anchors:,}</td>' in table
        assert f"<td>{c.ordered:,}</td>" in table
    assert 'id="pm-filter"' in html
    # --class keeps the pairs with an image of that class; --key those of one image
    store = stores.open_pairs(pairs)
    a, b = store.table.column("a").to_numpy(), store.table.column("b").to_numpy()
    y = stores.open_embeddings(emb).meta.column("label").to_numpy()
    green = show(pairs, tmp_path / "green", per_view=1000, only_class="green")
    want = int(np.sum((y[a] == 1) | (y[b] == 1)))
    assert green.selected == want == len(page_data(green.index)["views"]["top"]["pairs"]) > 0
    assert green.pairs == a.size  # the summary still counts the whole store
    assert "class green: " in green.index.read_text()
    assert show(pairs, tmp_path / "one", only_class="1").selected == want
    key = stores.open_embeddings(emb).meta.column("key")[int(a[0])].as_py()
    one = show(pairs, tmp_path / "key", per_view=1000, only_key=key)
    assert one.selected == int(np.sum((a == a[0]) | (b == a[0])))
    data = page_data(one.index)
    assert all(key in (data["images"][str(p[0])]["key"], data["images"][str(p[1])]["key"])
               for p in data["pairs"])
    with pytest.raises(InputError, match=r"no such class.*blue, green, red"):
        show(pairs, tmp_path / "bad", only_class="purple")
    with pytest.raises(InputError, match="no image with this key"):
        show(pairs, tmp_path / "bad2", only_key="nope.png")
    runner = CliRunner()
    res = runner.invoke(cli, ["show", str(pairs), str(tmp_path / "cli"), "--class", "red"])
    assert res.exit_code == 0, res.output
    assert "pairs kept by the filter" in res.output


# ---------------------------------------------------------------------------------------------
# the real pipeline, end to end on generated images (toy encoder from conftest)


def test_pipeline_embed_match_eval_calibrate_show(image_folder: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    emb, pairs = tmp_path / "emb", tmp_path / "pairs"
    res = runner.invoke(cli, ["embed", str(image_folder), str(emb), "--encoder", "toy:0",
                              "--workers", "0", "--dtype", "float32"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["match", str(emb), str(pairs), "--min", "0.9", "--max", "0.9999"])
    assert res.exit_code == 0, res.output
    store = stores.open_pairs(pairs)
    assert store.table.num_rows > 0
    report = eval_pairs(pairs, ks=(1, 3), grid_step=0.02)
    vectors = np.asarray(stores.open_embeddings(emb).vectors)
    y = stores.open_embeddings(emb).meta.column("label").to_numpy()
    a = store.table.column("a").to_numpy()
    b = store.table.column("b").to_numpy()
    assert report.accuracy.labelled == a.size
    assert report.accuracy.correct == int(np.sum(y[a] == y[b]))
    assert report.baselines[0].accuracy == pytest.approx(
        brute_knn(vectors, y, np.arange(len(y)), np.arange(len(y)), 1))
    own = report.band_row(0.9, 0.9999)
    assert own is not None and own.pairs == a.size  # the grid agrees with match
    cal = calibrate(emb, floor=0.9, step=0.01, target_yield=0.5)
    assert any(r.pairs for r in cal.bands)
    result = show(pairs, tmp_path / "report")
    assert result.images > 0 and not result.missing
