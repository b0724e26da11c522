"""Pair accuracy of a pairs store, next to the neighbour baselines a researcher compares with.

Pair accuracy = share of pairs whose two images have the same label (the paper's Table 1:
92.03% with a MoCo-v2 sampler on ImageNet). Three counting views:

- unordered: each pair ``{a, b}`` once, as the store holds it;
- ordered (Algorithm 1): each pair once per end that is an anchor, i.e. ``sim[i, j]`` and
  ``sim[j, i]`` both count (for a subset matched with itself the share equals the unordered
  one, the counts double);
- per anchor: each anchor's share of same-label positives, averaged over anchors that have
  any, so that an image with 200 positives weighs as much as one with 1.

Baselines from the same embeddings and the same images: each anchor's nearest neighbour (what
NNCLR treats as positive) and its top-k neighbours, exact (FAISS ``IndexFlatIP``), self
excluded. Chance = sum_c p_c^2 over the labelled anchors: the accuracy of random pairs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import ConfigError
from pairmine.quality.config import DEFAULT_KS, EvalPairsConfig

if TYPE_CHECKING:
    import numpy as np

    from pairmine.progress import Progress
    from pairmine.quality.bands import BandStats
    from pairmine.quality.labels import Scope

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassAccuracy:
    """Ordered pairs whose anchor has this label: how many partners share it."""

    label: int
    name: str
    anchors: int  # labelled anchors of this class
    share: float  # p_c: the chance that a random partner has this label
    ordered: int
    correct: int
    accuracy: float | None


@dataclass(frozen=True)
class PairAccuracy:
    pairs: int  # unordered pairs in the store
    per_image: float  # positives per anchor (ordered pairs, labelled or not / anchors)
    labelled: int  # ... whose two labels are known
    correct: int  # ... and equal
    unordered: float | None
    ordered_pairs: int  # Algorithm 1's count over labelled pairs
    ordered_correct: int
    ordered: float | None
    anchors_with_pairs: int  # anchors with at least one labelled positive
    per_anchor: float | None  # mean over those anchors of their same-label share
    chance: float  # sum_c p_c^2 over the labelled anchors
    per_class: list[ClassAccuracy]


def pair_accuracy(a: np.ndarray, b: np.ndarray, codes: np.ndarray, is_anchor: np.ndarray,
                  name: Callable[[int], str]) -> PairAccuracy:
    """Accuracy of pairs ``(a[i], b[i])`` given label ``codes`` (-1 = unknown) per row."""
    import numpy as np

    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    la, lb = codes[a], codes[b]
    known = (la >= 0) & (lb >= 0)
    same = known & (la == lb)
    labelled, correct = int(known.sum()), int(same.sum())

    # ordered view: (anchor, partner) once per end of a labelled pair that is an anchor
    from_a = known & is_anchor[a]
    from_b = known & is_anchor[b]
    anchor = np.concatenate([a[from_a], b[from_b]])
    hit = np.concatenate([same[from_a], same[from_b]])
    n_rows = codes.shape[0]
    per_anchor_n = np.bincount(anchor, minlength=n_rows)
    per_anchor_hit = np.bincount(anchor, weights=hit, minlength=n_rows)
    has = per_anchor_n > 0
    per_anchor = float(np.mean(per_anchor_hit[has] / per_anchor_n[has])) if has.any() else None

    anchor_codes = codes[is_anchor & (codes >= 0)]
    n_classes = int(max(codes.max(initial=-1), 0)) + 1
    class_anchors = np.bincount(anchor_codes, minlength=n_classes)
    p = class_anchors / max(int(anchor_codes.size), 1)
    class_n = np.bincount(codes[anchor], minlength=n_classes)
    class_hit = np.bincount(codes[anchor], weights=hit, minlength=n_classes).astype(np.int64)
    per_class = [
        ClassAccuracy(label=c, name=name(c), anchors=int(class_anchors[c]), share=float(p[c]),
                      ordered=int(class_n[c]), correct=int(class_hit[c]),
                      accuracy=float(class_hit[c] / class_n[c]) if class_n[c] else None)
        for c in range(n_classes) if class_anchors[c] or class_n[c]]
    return PairAccuracy(
        pairs=int(a.size),
        per_image=float(is_anchor[a].sum() + is_anchor[b].sum()) / max(int(is_anchor.sum()), 1),
        labelled=labelled, correct=correct,
        unordered=correct / labelled if labelled else None,
        ordered_pairs=int(anchor.size), ordered_correct=int(hit.sum()),
        ordered=float(hit.mean()) if anchor.size else None,
        anchors_with_pairs=int(has.sum()), per_anchor=per_anchor,
        chance=float(np.sum(p * p)), per_class=per_class)


@dataclass(frozen=True)
class NeighbourBaseline:
    """Each anchor's k nearest neighbours (self excluded) as its positives."""

    k: int
    queries: int  # anchors searched
    labelled: int  # (anchor, neighbour) pairs whose two labels are known
    correct: int
    accuracy: float | None


def knn_accuracy(vectors: np.ndarray, scope: Scope, codes: np.ndarray,
                 ks: Sequence[int] = DEFAULT_KS, *, block_rows: int = 4096,
                 progress: Progress | None = None) -> list[NeighbourBaseline]:
    """Same-label share of each anchor's top-k neighbours among the scope's targets."""
    import faiss
    import numpy as np

    targets = scope.targets()
    usable = sorted({k for k in ks if 1 <= k <= targets.size - 1})
    if len(usable) < len(set(ks)):
        log.warning("skipping k > %d: only %d images to search", targets.size - 1, targets.size)
    if not usable:
        return []
    kmax = usable[-1]
    index = faiss.IndexFlatIP(vectors.shape[1])
    for start in range(0, targets.size, block_rows):  # fp16 stores: convert a block at a time
        index.add(np.ascontiguousarray(vectors[targets[start:start + block_rows]],
                                       dtype=np.float32))
    labelled = dict.fromkeys(usable, 0)
    correct = dict.fromkeys(usable, 0)
    anchors = scope.anchors
    if progress is not None:
        progress.start("neighbours", total=int(anchors.size), unit="images")
    for start in range(0, anchors.size, block_rows):
        q = anchors[start:start + block_rows]
        _, pos = index.search(np.ascontiguousarray(vectors[q], dtype=np.float32), kmax + 1)
        nb = np.where(pos >= 0, targets[np.clip(pos, 0, None)], -1)
        nb = _drop_self(nb, q, kmax)  # (q, kmax), nearest first
        lq = codes[q][:, None]
        ln = np.where(nb >= 0, codes[np.clip(nb, 0, None)], -1)
        known = (lq >= 0) & (ln >= 0)
        same = known & (lq == ln)
        for k in usable:
            labelled[k] += int(known[:, :k].sum())
            correct[k] += int(same[:, :k].sum())
        if progress is not None:
            progress.advance(int(q.size))
    if progress is not None:
        progress.finish()
    return [NeighbourBaseline(k=k, queries=int(anchors.size), labelled=labelled[k],
                              correct=correct[k],
                              accuracy=correct[k] / labelled[k] if labelled[k] else None)
            for k in usable]


def _drop_self(nb: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Remove each query's own id from its k+1 results (by id, not position: an identical
    vector may tie with it and come first); where it is absent, drop the last column."""
    keep = nb != q[:, None]
    no_self = keep.all(axis=1)
    keep[no_self, -1] = False
    kept: np.ndarray = nb[keep].reshape(nb.shape[0], k)
    return kept


@dataclass
class EvalReport:
    """What ``eval-pairs`` measured; ``as_dict`` is its JSON form."""

    pairs_path: str
    embeddings_path: str
    band: tuple[float, float]
    anchors: int
    against: str
    n_rows: int
    labels: str
    labelled_anchors: int
    accuracy: PairAccuracy
    baselines: list[NeighbourBaseline]
    bands: list[BandStats] = field(default_factory=list)
    grid_floor: float | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["bands"] = [row.as_dict() for row in self.bands]
        return out

    def band_row(self, lo: float, hi: float) -> BandStats | None:
        return next((r for r in self.bands if r.lo == lo and r.hi == hi), None)


def eval_pairs(pairs: str | Path, config: EvalPairsConfig | None = None, *,
               progress: Progress | None = None, **options: Any) -> EvalReport:
    """Pair accuracy of a pairs store, neighbour baselines and a precision–yield grid."""
    config = EvalPairsConfig.build(config, options)
    import numpy as np

    from pairmine import stores
    from pairmine.quality import bands as bd
    from pairmine.quality.labels import load_labels, pairs_scope

    store = stores.open_pairs(pairs)
    emb = stores.open_pairs_embeddings(store)
    lab = load_labels(emb, config.labels, what="eval-pairs")
    assert lab is not None  # required=True
    scope = pairs_scope(store, len(emb))
    lo, hi = store.info.min, store.info.max
    grid_floor = config.grid_floor
    if grid_floor is not None and not -1.0 <= grid_floor <= lo:
        raise ConfigError(f"--grid-floor {grid_floor} must lie in [-1, {lo}] (the band's min)")
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    a = store.table.column("a").to_numpy()
    b = store.table.column("b").to_numpy()
    if a.size and (a.min() < 0 or max(a.max(), b.max()) >= len(emb)):
        raise ConfigError(f"{store.path} names rows beyond its embeddings store "
                          f"({len(emb)} rows)", "the stores do not belong together")
    acc = pair_accuracy(a, b, lab.codes, scope.is_anchor(), lab.name)
    timings["accuracy_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # the quality tools read the whole matrix (a one-shard store: its memory map, no copy)
    vectors = np.asarray(emb.vectors)
    baselines = knn_accuracy(vectors, scope, lab.codes, config.ks, progress=progress)
    timings["neighbours_s"] = time.perf_counter() - t0

    rows: list[BandStats] = []
    floor = None
    if config.grid:
        t0 = time.perf_counter()
        floor = round(max(-1.0, lo - 0.05), 6) if grid_floor is None else grid_floor
        lows = sorted(set(bd.grid(floor, hi, config.grid_step)) | {lo})
        lows = [x for x in lows if x < hi] or [lo]
        scored = bd.scan_scores(vectors, floor, scope, engine=config.engine,
                                device=config.device, content=bd.duplicate_codes(emb.meta),
                                progress=progress)
        rows = bd.band_table(scored, scope, lab.codes, bd.all_bands(lows, {hi, 1.0}))
        timings["grid_s"] = time.perf_counter() - t0

    report = EvalReport(
        pairs_path=str(store.path.resolve()), embeddings_path=str(emb.path.resolve()),
        band=(lo, hi), anchors=int(scope.anchors.size), against=scope.against,
        n_rows=len(emb), labels=lab.origin,
        labelled_anchors=int(np.sum(lab.codes[scope.anchors] >= 0)),
        accuracy=acc, baselines=baselines, bands=rows, grid_floor=floor, timings=timings)
    if config.out is not None:
        stores.write_json_atomic(Path(config.out), report.as_dict())
    return report
