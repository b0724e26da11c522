"""``MatchConfig``: the match stage's options, each declared once (help, flag, choices), checked
when the config is built, so the API and the CLI refuse the same values with the same words."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pairmine.config import check_bool, check_choice, check_device, setting
from pairmine.errors import ConfigError
from pairmine.match.plan import AGAINST, MatchPlan, Sweep
from pairmine.scale.options import ScaleSettings
from pairmine.stores import check_seed, parse_subset


def _engine_names() -> list[str]:
    # read when the choices are first needed (help, parsing, checking): no engine at import
    from pairmine.engines import engine_names

    return engine_names()


@dataclass(frozen=True, kw_only=True)
class MatchConfig(ScaleSettings):
    """The options of a match run: the band ``[min_score, max_score]``, the paper's K subset
    (``subset`` drawn with ``seed``) matched against itself or every image (``against``), an
    optional cap per image (``max_per_anchor``), the engine and device, the sweep and histogram
    records, the block and tile sizes, and the Ray fields (``ray=None`` runs in this process)."""

    min_score: float = setting(0.97, flag="--min", help="Lower bound of the band (inclusive).")
    max_score: float = setting(
        0.99, flag="--max",
        help="Upper bound of the band (inclusive); keeps near-identical images out.")
    subset: str | int | float | None = setting(
        None, metavar="FRACTION|COUNT",
        help="The paper's K: a float in (0, 1] is a fraction, an integer a count. "
             "Default: the whole store.")
    seed: int = setting(0, help="Seed of the subset draw.")
    against: str = setting(
        "subset", choices=AGAINST,
        help="subset: the subset against itself (Algorithm 1); all: subset anchors against "
             "every image.")
    max_per_anchor: int | None = setting(
        None, metavar="K", minimum=1,
        help="Keep each image's K best positives (a pair stays if either end keeps it).")
    engine: str = setting("auto", choices=_engine_names, help="Exact search engine.")
    device: str = setting("auto", kind="device", help="Where the search runs.")
    sweep: str | Sequence[float] | None = setting(
        None, metavar="LO:HI:STEP",
        help="Also count pairs for every band [m, M] (m < M) on this grid, from the same "
             "search, e.g. 0.90:1.0:0.01.")
    wide_histogram: bool = setting(
        False,
        help="Widen the one search to [min-0.05, 1.0] so the manifest's score histogram shows "
             "the scores near the band (slower: more pairs to rescore).")
    block_rows: int | None = setting(
        None, minimum=1,
        help="Anchors per engine block (one pair shard each). Default: the engine's.")
    tile_rows: int | None = setting(
        None, minimum=1,
        help="Target rows per tile, the unit of work (anchors per tile: whole blocks, at most "
             "this many). Default: the device's (131072 on a CPU, 1048576 on CUDA). The pairs "
             "do not depend on it.")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.plan()  # every check; the plan itself is built again when the run starts

    def plan(self) -> MatchPlan:
        """The options checked and resolved: the subset parsed, the sweep's grid built. A bad
        value is a :class:`ConfigError` naming its CLI flag."""
        _check_band(self.min_score, self.max_score)
        if self.against not in AGAINST:
            raise ConfigError(f"--against {self.against!r} is not one of {', '.join(AGAINST)}",
                              "subset: the subset against itself (Algorithm 1); all: every "
                              "image")
        _check_count("--max-per-anchor", self.max_per_anchor)
        _check_count("--block-rows", self.block_rows)
        _check_count("--tile-rows", self.tile_rows)
        subset, seed = parse_subset(self.subset), check_seed(self.seed)
        sweep = None if self.sweep is None else Sweep.parse(self.sweep)
        check_bool("--wide-histogram", self.wide_histogram)
        check_choice("--engine", self.engine, _engine_names())
        check_device(self.device)
        return MatchPlan(min_score=float(self.min_score), max_score=float(self.max_score),
                         subset=subset, seed=seed, against=self.against,
                         max_per_anchor=self.max_per_anchor, engine=self.engine,
                         device=self.device, sweep=sweep, wide_histogram=self.wide_histogram,
                         block_rows=self.block_rows, tile_rows=self.tile_rows)


def _check_band(min_score: float, max_score: float) -> None:
    for name, v in (("--min", min_score), ("--max", max_score)):
        if isinstance(v, bool) or not (isinstance(v, int | float) and -1.0 <= float(v) <= 1.0):
            raise ConfigError(f"{name} {v} is outside [-1, 1]",
                              "scores are cosines of unit vectors; e.g. --min 0.97 --max 0.99")
    if min_score > max_score:
        raise ConfigError(f"--min {min_score} is greater than --max {max_score}",
                          "the band is [min, max], both inclusive; e.g. --min 0.97 --max 0.99")


def _check_count(flag: str, value: int | None) -> None:
    """None, or an integer >= 1 (a bool is not a count)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise ConfigError(f"{flag} {value} is not an integer >= 1")
