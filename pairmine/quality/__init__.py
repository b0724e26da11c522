"""Pair quality: how good are the pairs, which band to choose, and a page to look at them.

- ``eval_pairs``: pair accuracy (unordered, ordered as Algorithm 1, per anchor, per class)
  with the chance level, next to nearest-neighbour baselines and a precision–yield grid;
- ``calibrate``: one search above a floor answers a whole grid of bands; suggests one for a
  target precision or yield;
- ``show``: a static HTML report of pairs with thumbnails of the original images;
- ``evaluate``: kNN and linear-probe accuracy of a frozen encoder (``pairmine eval``).

``eval_pairs``, ``calibrate`` and ``evaluate`` each take their config (``EvalPairsConfig``,
``CalibrateConfig``, ``EvalConfig``) or the same fields as keyword arguments. Heavy libraries
are imported inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pairmine.lazy import lazy_getattr

# `calibrate` is also the name of its module: importing the function here, eagerly (the module
# is light), keeps `pairmine.quality.calibrate` the function once the module has been loaded
from pairmine.quality.calibrate import Calibration, calibrate
from pairmine.quality.config import CalibrateConfig, EvalConfig, EvalPairsConfig

_LAZY = {
    "eval_pairs": ("pairmine.quality.accuracy", "eval_pairs"),
    "EvalReport": ("pairmine.quality.accuracy", "EvalReport"),
    "pair_accuracy": ("pairmine.quality.accuracy", "pair_accuracy"),
    "knn_accuracy": ("pairmine.quality.accuracy", "knn_accuracy"),
    "show": ("pairmine.quality.report", "show"),
    "pairs_from_labels": ("pairmine.quality.curated", "pairs_from_labels"),
    "PairsFromLabelsConfig": ("pairmine.quality.curated", "PairsFromLabelsConfig"),
    "CuratedResult": ("pairmine.quality.curated", "CuratedResult"),
    "ShowResult": ("pairmine.quality.report", "ShowResult"),
    "load_labels": ("pairmine.quality.labels", "load_labels"),
    "list_pairs": ("pairmine.quality.listing", "list_pairs"),
    "PairListing": ("pairmine.quality.listing", "PairListing"),
    "BAND_HEADERS": ("pairmine.quality.bands", "BAND_HEADERS"),
    "format_row": ("pairmine.quality.bands", "format_row"),
    "evaluate": ("pairmine.quality.encoder_eval", "evaluate"),
    "EvalResult": ("pairmine.quality.encoder_eval", "EvalResult"),
    "knn_predict": ("pairmine.quality.encoder_eval", "knn_predict"),
    "linear_probe": ("pairmine.quality.encoder_eval", "linear_probe"),
    "resolve_encoder_spec": ("pairmine.quality.encoder_eval", "resolve_encoder_spec"),
}

if TYPE_CHECKING:
    from pairmine.quality.accuracy import EvalReport, eval_pairs, knn_accuracy, pair_accuracy
    from pairmine.quality.bands import BAND_HEADERS, format_row
    from pairmine.quality.curated import CuratedResult, PairsFromLabelsConfig, pairs_from_labels
    from pairmine.quality.encoder_eval import (
        EvalResult,
        evaluate,
        knn_predict,
        linear_probe,
        resolve_encoder_spec,
    )
    from pairmine.quality.labels import load_labels
    from pairmine.quality.listing import PairListing, list_pairs
    from pairmine.quality.report import ShowResult, show


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = ["BAND_HEADERS", "CalibrateConfig", "Calibration", "CuratedResult", "EvalConfig",
           "EvalPairsConfig", "EvalReport", "EvalResult", "PairListing", "PairsFromLabelsConfig",
           "ShowResult", "calibrate", "eval_pairs", "evaluate",
           "format_row", "knn_accuracy", "knn_predict", "linear_probe", "list_pairs", "load_labels",
           "pair_accuracy", "pairs_from_labels", "resolve_encoder_spec", "show"]
