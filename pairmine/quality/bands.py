"""Many bands from one search: keep every score above a floor, then tabulate a grid of bands.

One ``band_search(floor, 1.0)`` pass finds every pair any band ``[lo, hi]`` with ``lo >= floor``
can hold. With the scores sorted, the pairs of a band are a contiguous run
(``searchsorted``), so yield and precision for a whole grid cost a few binary searches each.
Both bounds are inclusive, as in ``match``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pairmine.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from pairmine.progress import Progress
    from pairmine.quality.labels import Scope

log = logging.getLogger(__name__)

# 20 bytes a pair (a, b, score) plus the sort's working copies: ~1.5 GB at this many pairs
DEFAULT_MAX_PAIRS = 50_000_000


@dataclass(frozen=True)
class Scored:
    """Every pair with score >= floor among the scope, sorted by score (ascending)."""

    a: np.ndarray  # (p,) int64, a < b
    b: np.ndarray  # (p,) int64
    score: np.ndarray  # (p,) float32, the exact dot product rounded to float32
    floor: float
    candidates: int  # pairs the engine's prefilter let through (for the record)


def scan_scores(vectors: np.ndarray, floor: float, scope: Scope, *, engine: str = "auto",
                device: str = "auto", content: np.ndarray | None = None,
                max_pairs: int = DEFAULT_MAX_PAIRS,
                progress: Progress | None = None) -> Scored:
    """All pairs of ``scope`` scoring in ``[floor, 1]``, from one exact band search.

    ``content`` (one code per row, equal for identical bytes; see ``duplicate_codes``) drops
    pairs of identical images, which ``match`` never pairs either."""
    import numpy as np

    from pairmine.engines import band_search

    if not -1.0 <= floor < 1.0:
        raise ConfigError(f"floor {floor} is outside [-1, 1)", "choose a floor such as 0.9")
    whole = scope.anchors.size == scope.n_rows
    a_parts: list[np.ndarray] = []
    b_parts: list[np.ndarray] = []
    s_parts: list[np.ndarray] = []
    kept = candidates = 0
    blocks = band_search(vectors, floor, 1.0, anchors=None if whole else scope.anchors,
                         against=scope.against, engine=engine, device=device,
                         progress=progress)
    for block in blocks:
        candidates += int(block.candidates)
        a_blk, b_blk, s_blk = block.a, block.b, block.score
        if content is not None:
            differ = content[a_blk] != content[b_blk]
            a_blk, b_blk, s_blk = a_blk[differ], b_blk[differ], s_blk[differ]
        kept += int(a_blk.size)
        if kept > max_pairs:
            raise ConfigError(f"more than {max_pairs:,} pairs score above the floor {floor}",
                              "raise the floor, or use a subset of the images")
        a_parts.append(np.asarray(a_blk, dtype=np.int64))
        b_parts.append(np.asarray(b_blk, dtype=np.int64))
        s_parts.append(np.asarray(s_blk, dtype=np.float32))
    a = np.concatenate(a_parts) if a_parts else np.zeros(0, np.int64)
    b = np.concatenate(b_parts) if b_parts else np.zeros(0, np.int64)
    score = np.concatenate(s_parts) if s_parts else np.zeros(0, np.float32)
    order = np.argsort(score, kind="stable")
    log.info("%d pairs score >= %.4f (%d candidates rescored)", a.size, floor, candidates)
    return Scored(a=a[order], b=b[order], score=score[order], floor=floor,
                  candidates=candidates)


def duplicate_codes(meta: pa.Table) -> np.ndarray | None:
    """The store's content codes (``pairmine.stores.content_codes``, the ones match uses), or
    ``None`` when it records no content hash, so there is nothing to drop."""
    from pairmine.stores import content_codes

    codes, column = content_codes(meta)
    return None if column is None else codes


def scored_from_pairs(a: np.ndarray, b: np.ndarray, score: np.ndarray,
                      floor: float) -> Scored:
    """Wrap pairs already in hand (a pairs store's table) as a ``Scored`` run."""
    import numpy as np

    order = np.argsort(np.asarray(score, dtype=np.float32), kind="stable")
    return Scored(a=np.asarray(a, np.int64)[order], b=np.asarray(b, np.int64)[order],
                  score=np.asarray(score, np.float32)[order], floor=floor, candidates=0)


@dataclass(frozen=True)
class BandStats:
    """Yield and precision of one band ``[lo, hi]`` over the scope's anchors."""

    lo: float
    hi: float
    pairs: int  # unordered pairs in the band
    ordered: int  # Algorithm 1's count: each pair once per end that is an anchor
    per_image: float  # positives per anchor image: ordered / anchors
    coverage: float  # share of anchors with at least one positive
    labelled: int  # unordered pairs whose two labels are known
    correct: int  # ... and equal
    precision: float | None  # correct / labelled
    ci_low: float | None  # Wilson 95% interval of the precision
    ci_high: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def grid(lo: float, hi: float, step: float) -> list[float]:
    """``lo, lo+step, ... <= hi`` rounded to 6 decimals (so 0.97 prints and compares as 0.97)."""
    if step <= 0:
        raise ConfigError(f"grid step {step} must be > 0")
    n = math.floor((hi - lo) / step + 1e-9)
    return sorted({round(lo + i * step, 6) for i in range(n + 1)} | {round(hi, 6)})


def all_bands(lows: Iterable[float], highs: Iterable[float]) -> list[tuple[float, float]]:
    """Every ``[lo, hi]`` with ``lo < hi`` from the two grids, sorted."""
    his = sorted(set(highs))
    return [(lo, hi) for lo in sorted(set(lows)) for hi in his if lo < hi]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score interval of a proportion k/n; honest for small n and for k near 0 or n."""
    if n == 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def band_table(scored: Scored, scope: Scope, codes: np.ndarray | None,
               bands: Sequence[tuple[float, float]]) -> list[BandStats]:
    """Yield and (where ``codes`` has labels, -1 = unknown) precision of each band."""
    import numpy as np

    for lo, hi in bands:
        if lo < scored.floor:
            raise ConfigError(f"band [{lo}, {hi}] reaches below the floor {scored.floor} of "
                              "the search", "lower the floor or drop that band")
    s = scored.score.astype(np.float64)
    is_anchor = scope.is_anchor()
    w = is_anchor[scored.a].astype(np.int64) + is_anchor[scored.b]
    cum_w = np.concatenate([[0], np.cumsum(w)])
    if codes is not None:
        la, lb = codes[scored.a], codes[scored.b]
        known = (la >= 0) & (lb >= 0)
        cum_known = np.concatenate([[0], np.cumsum(known)])
        cum_correct = np.concatenate([[0], np.cumsum(known & (la == lb))])
    first_scores = _first_scores_by_lo(scored, is_anchor, sorted({lo for lo, _ in bands}))
    n_anchors = max(int(scope.anchors.size), 1)
    rows: list[BandStats] = []
    for lo, hi in bands:
        left = int(np.searchsorted(s, lo, side="left"))
        right = int(np.searchsorted(s, hi, side="right"))
        right = max(right, left)
        covered = int(np.searchsorted(first_scores[lo], hi, side="right"))
        labelled = correct = 0
        if codes is not None:
            labelled = int(cum_known[right] - cum_known[left])
            correct = int(cum_correct[right] - cum_correct[left])
        ci = wilson(correct, labelled)
        ordered = int(cum_w[right] - cum_w[left])
        rows.append(BandStats(
            lo=lo, hi=hi, pairs=right - left, ordered=ordered,
            per_image=ordered / n_anchors, coverage=covered / n_anchors,
            labelled=labelled, correct=correct,
            precision=correct / labelled if labelled else None,
            ci_low=None if ci is None else ci[0], ci_high=None if ci is None else ci[1]))
    return rows


def _first_scores_by_lo(scored: Scored, is_anchor: np.ndarray,
                        lows: list[float]) -> dict[float, np.ndarray]:
    """For each lower bound: every anchor's lowest score >= lo, sorted (anchors with none are
    absent). An anchor has a positive in [lo, hi] exactly when that score is <= hi."""
    import numpy as np

    ends = np.concatenate([scored.a[is_anchor[scored.a]], scored.b[is_anchor[scored.b]]])
    sc = np.concatenate([scored.score[is_anchor[scored.a]],
                         scored.score[is_anchor[scored.b]]]).astype(np.float64)
    order = np.lexsort((sc, ends))  # by anchor, then score
    ends, sc = ends[order], sc[order]
    out: dict[float, np.ndarray] = {}
    for lo in lows:
        keep = sc >= lo
        e, v = ends[keep], sc[keep]
        if e.size == 0:
            out[lo] = np.zeros(0, np.float64)
            continue
        starts = np.flatnonzero(np.concatenate([[True], e[1:] != e[:-1]]))
        out[lo] = np.sort(v[starts])
    return out


BAND_HEADERS = ("band", "pairs", "per image", "coverage", "labelled", "precision", "95% CI")


def format_row(row: BandStats) -> tuple[str, ...]:
    """One band as the text cells of ``BAND_HEADERS`` (the CLI draws the table)."""
    precision = "—" if row.precision is None else f"{row.precision:.2%}"
    ci = ("—" if row.ci_low is None or row.ci_high is None
          else f"{100 * row.ci_low:.1f}–{100 * row.ci_high:.1f}%")
    return (f"[{row.lo:g}, {row.hi:g}]", f"{row.pairs:,}", f"{row.per_image:.3f}",
            f"{row.coverage:.1%}", f"{row.labelled:,}", precision, ci)
