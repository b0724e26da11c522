"""Calibrate the band: measure yield and precision over a grid of bands, suggest one.

The paper's fixed ``[0.97, 0.99]`` was tuned for a MoCo-v2 projection head on ImageNet; another
encoder puts its scores elsewhere. One exact search keeps every pair scoring above a floor,
and then every band ``[lo, hi]`` with ``lo >= floor`` on the grid is answered from it:
positives per image, coverage, and precision where labels are known (all of them, a label
file, or a labelled sample of N images: pairs with both ends in the sample).

Suggestion rules (only bands with ``hi <= max_cap``: the paper's upper bound exists to keep
near-identical images out, which precision alone would never penalise):

- ``target_precision P``: among bands whose precision's Wilson 95% lower bound is >= P over at
  least ``min_support`` labelled pairs, the one with the most positives per image (ties: the
  higher precision, then the narrower band);
- ``target_yield Y`` (positives per image): among bands with yield >= Y, the most precise when
  labels are known (ties: more yield), else the one with the highest lower bound (the most
  similar pairs), then the highest upper bound.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import ConfigError
from pairmine.quality.config import CalibrateConfig

if TYPE_CHECKING:
    import numpy as np

    from pairmine.progress import Progress
    from pairmine.quality.bands import BandStats

log = logging.getLogger(__name__)

PAPER_BAND = (0.97, 0.99)


@dataclass(frozen=True)
class Suggestion:
    lo: float
    hi: float
    stats: BandStats
    rule: str


@dataclass
class Calibration:
    """What ``calibrate`` measured; ``as_dict`` is the JSON it writes."""

    embeddings: str
    n_rows: int
    anchors: int
    against: str
    subset: float | int | None
    seed: int
    floor: float
    step: float
    max_cap: float
    labels: str | None
    labelled_images: int
    labels_sample: int | None
    target: dict[str, float]
    pairs_above_floor: int
    bands: list[BandStats]
    suggestion: Suggestion | None
    note: str
    paper_band: BandStats | None
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["format"] = "pairmine/calibration"
        return out

    def column(self, hi: float) -> list[BandStats]:
        """The precision–yield table: every lower bound at a fixed upper bound."""
        return [r for r in self.bands if r.hi == hi]


def calibrate(emb: str | Path, config: CalibrateConfig | None = None, *,
              progress: Progress | None = None, **options: Any) -> Calibration:
    """Measure a grid of bands on an embeddings store in one pass and suggest one.

    ``subset`` (fraction or count) searches only those anchors, against every image, so
    positives per image stay unbiased for the whole store at a fraction of the cost.
    ``use_labels=False`` ignores every label, so the suggestion is label-free (what a
    self-supervised protocol may use); it excludes the precision options.
    """
    config = CalibrateConfig.build(config, options)
    import numpy as np

    from pairmine import stores
    from pairmine.quality import bands as bd
    from pairmine.quality.labels import Scope, load_labels

    requested = stores.parse_subset(config.subset)  # the --subset match parses
    store = stores.open_embeddings(emb)
    lab = (load_labels(store, config.labels, required=config.needs_labels,
                       what=config.labels_flag) if config.use_labels else None)
    anchors = stores.draw_subset(len(store), requested, config.seed)  # the draw match makes
    scope = Scope(anchors=anchors, against="anchors" if requested is None else "all",
                  n_rows=len(store))
    codes = None if lab is None else _sample_labels(lab.codes, config.labels_sample, config.seed)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    # the quality tools read the whole matrix (a one-shard store: its memory map, no copy)
    scored = bd.scan_scores(np.asarray(store.vectors), config.floor, scope, engine=config.engine,
                            device=config.device, content=bd.duplicate_codes(store.meta),
                            max_pairs=config.max_pairs or bd.DEFAULT_MAX_PAIRS, progress=progress)
    timings["search_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    extra = {x for x in PAPER_BAND if x >= config.floor}
    lows = sorted(set(bd.grid(config.floor, 1.0, config.step)) | extra)
    highs = sorted(set(bd.grid(config.floor, 1.0, config.step)) | extra | {config.max_cap})
    rows = bd.band_table(scored, scope, codes, bd.all_bands(lows, highs))
    timings["table_s"] = time.perf_counter() - t0

    target: dict[str, float] = {}
    if config.target_precision is not None:
        target["precision"] = config.target_precision
        suggestion, note = suggest_for_precision(rows, config.target_precision, config.max_cap,
                                                 config.min_support)
    elif config.target_yield is not None:
        target["yield"] = config.target_yield
        suggestion, note = suggest_for_yield(rows, config.target_yield, config.max_cap,
                                             labelled=codes is not None)
    else:
        suggestion, note = None, "no target given: pass --target-precision or --target-yield"
    result = Calibration(
        embeddings=str(store.path.resolve()), n_rows=len(store), anchors=int(anchors.size),
        against=scope.against, subset=requested, seed=config.seed, floor=config.floor,
        step=config.step, max_cap=config.max_cap, labels=None if lab is None else lab.origin,
        labelled_images=0 if codes is None else int(np.sum(codes >= 0)),
        labels_sample=config.labels_sample, target=target, pairs_above_floor=int(scored.a.size),
        bands=rows, suggestion=suggestion, note=note,
        paper_band=next((r for r in rows if (r.lo, r.hi) == PAPER_BAND), None),
        timings=timings)
    if config.out is not None:
        stores.write_json_atomic(Path(config.out), result.as_dict())
    return result


def _sample_labels(codes: np.ndarray, sample: int | None, seed: int) -> np.ndarray:
    """Keep the labels of ``sample`` labelled images drawn with ``seed``; forget the rest."""
    import numpy as np

    if sample is None:
        return codes
    labelled = np.flatnonzero(codes >= 0)
    if sample > labelled.size:
        raise ConfigError(f"--labels-sample {sample} is more than the {labelled.size} "
                          "labelled images", f"use at most {labelled.size}")
    keep = np.random.default_rng(seed).choice(labelled, size=sample, replace=False)
    out = np.full_like(codes, -1)
    out[keep] = codes[keep]
    return out


def suggest_for_precision(rows: list[BandStats], target: float, max_cap: float,
                          min_support: int) -> tuple[Suggestion | None, str]:
    ok = [r for r in rows if r.hi <= max_cap and r.labelled >= min_support
          and r.ci_low is not None and r.ci_low >= target]
    if not ok:
        best = max((r for r in rows if r.hi <= max_cap and r.labelled >= min_support
                    and r.ci_low is not None), key=lambda r: r.ci_low or 0.0, default=None)
        where = ("" if best is None else
                 f"; the best is [{best.lo}, {best.hi}] at {best.precision:.1%} "
                 f"(95% lower bound {best.ci_low:.1%}, {best.labelled} labelled pairs)")
        return None, (f"no band with hi <= {max_cap} reaches precision {target:.1%} "
                      f"(Wilson 95% lower bound, >= {min_support} labelled pairs){where}")
    pick = max(ok, key=lambda r: (r.per_image, r.precision or 0.0, -(r.hi - r.lo)))
    rule = (f"most positives per image among bands whose precision is >= {target:.1%} "
            f"with 95% confidence (>= {min_support} labelled pairs), hi <= {max_cap}")
    return Suggestion(lo=pick.lo, hi=pick.hi, stats=pick, rule=rule), rule


def suggest_for_yield(rows: list[BandStats], target: float, max_cap: float, *,
                      labelled: bool) -> tuple[Suggestion | None, str]:
    ok = [r for r in rows if r.hi <= max_cap and r.per_image >= target]
    if not ok:
        most = max((r.per_image for r in rows if r.hi <= max_cap), default=0.0)
        return None, (f"no band with hi <= {max_cap} gives {target:g} positives per image "
                      f"(at most {most:.3g}); lower --floor or raise --max-cap")
    if labelled and any(r.precision is not None for r in ok):
        pick = max(ok, key=lambda r: (r.precision if r.precision is not None else -1.0,
                                      r.per_image))
        rule = (f"highest precision among bands with >= {target:g} positives per image, "
                f"hi <= {max_cap}")
    else:
        pick = max(ok, key=lambda r: (r.lo, r.hi))
        rule = (f"highest lower bound among bands with >= {target:g} positives per image, "
                f"hi <= {max_cap} (no labels: the most similar pairs)")
    return Suggestion(lo=pick.lo, hi=pick.hi, stats=pick, rule=rule), rule
