"""A match run's plan: the options resolved, the blocks, and what computing a tile needs.

The plan is fixed before anything is written: it is the run's identity (a resumed run must
have the same one), what the manifest records as ``config``, and what every tile computes
from, in this process or in a Ray task.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import ConfigError, StoreError
from pairmine.stores import (
    MANIFEST,
    PAIRS_DIR,
    PARTIAL_DIR,
    Embeddings,
    draw_subset,
    open_embeddings,
    shard_name,
)

if TYPE_CHECKING:
    import numpy as np

AGAINST = ("subset", "all")
# The score histogram has HIST_WIDTH-wide bins over the range the one search covers: the band,
# or with wide_histogram [min - HIST_MARGIN, 1.0], or the sweep's grid. Widening is opt-in:
# on CIFAR-10 ResNet-20 features it put 56x more pairs in range and made the search 3.4x
# slower (docs/matching.md, "The match stage").
HIST_WIDTH = 0.005
HIST_MARGIN = 0.05
MAX_SWEEP_POINTS = 201
BLOCKS_DIR = "blocks"  # under PARTIAL_DIR: per-block statistics (and shards before the cap)
ENGINE_FILE = "engine.json"  # under blocks/: the run-wide engine plan, fitted once
TILES_DIR = "tiles"  # under PARTIAL_DIR: each tile's pairs, until its group is assembled
TILE_PLAN_FILE = "tiles.json"  # under blocks/: the tile shape, so a resumed run keeps it


@dataclass(frozen=True)
class Sweep:
    """Pair counts for every band ``[m, M]`` with ``m < M`` on one grid, from one search."""

    grid: tuple[float, ...]

    @classmethod
    def parse(cls, spec: str | Sequence[float]) -> Sweep:
        """``"LO:HI:STEP"`` (e.g. ``0.90:1.0:0.01``) or ``(lo, hi, step)``."""
        parts: Sequence[Any] = spec.split(":") if isinstance(spec, str) else spec
        try:
            lo, hi, step = (float(p) for p in parts)
        except (TypeError, ValueError):
            raise ConfigError(f"--sweep {spec!r} is not LO:HI:STEP",
                              "e.g. --sweep 0.90:1.0:0.01") from None
        if not (-1.0 <= lo < hi <= 1.0) or not step > 0:
            raise ConfigError(f"--sweep {spec!r} needs -1 <= LO < HI <= 1 and STEP > 0",
                              "e.g. --sweep 0.90:1.0:0.01")
        n = round((hi - lo) / step)
        if n < 1 or abs(lo + n * step - hi) > 1e-9:
            raise ConfigError(f"--sweep {spec!r}: HI - LO is not a multiple of STEP",
                              "e.g. --sweep 0.90:1.0:0.01")
        if n + 1 > MAX_SWEEP_POINTS:
            raise ConfigError(f"--sweep {spec!r} has {n + 1} grid points "
                              f"(at most {MAX_SWEEP_POINTS})", "use a coarser STEP")
        # rounded so that 0.9 + 7 * 0.01 is 0.97, the bound a user types
        return cls(tuple(round(lo + k * step, 10) for k in range(n + 1)))


@dataclass(frozen=True)
class MatchPlan:
    """The run's options, checked and resolved (``MatchConfig.plan()``): the subset parsed,
    the sweep's grid built. Small and picklable: every block computes from it."""

    min_score: float
    max_score: float
    subset: int | float | None
    seed: int
    against: str
    max_per_anchor: int | None
    engine: str
    device: str
    sweep: Sweep | None
    wide_histogram: bool
    block_rows: int | None
    tile_rows: int | None = None  # not in config(): the pairs do not depend on it

    @property
    def search_range(self) -> tuple[float, float]:
        """The one band the engine searches: the pair band, widened for the histogram and the
        sweep; pairs are then filtered to ``[min, max]``. The histogram covers all of it."""
        lo, hi = self.min_score, self.max_score
        if self.wide_histogram:
            lo, hi = max(-1.0, self.min_score - HIST_MARGIN), 1.0
        if self.sweep is not None:
            lo, hi = min(lo, self.sweep.grid[0]), max(hi, self.sweep.grid[-1])
        return lo, hi

    def hist_edges(self) -> list[float]:
        """The histogram's bin edges over the search range, ``HIST_WIDTH`` apart."""
        lo, hi = self.search_range
        n = max(1, math.ceil((hi - lo) / HIST_WIDTH - 1e-9))
        return [round(lo + k * HIST_WIDTH, 10) for k in range(n)] + [hi]

    def config(self) -> dict[str, Any]:
        """The manifest's ``config`` record (and part of the run's identity)."""
        return {"min": self.min_score, "max": self.max_score, "subset": self.subset,
                "seed": self.seed, "against": self.against,
                "max_per_anchor": self.max_per_anchor, "engine": self.engine,
                "device": self.device,
                "sweep": None if self.sweep is None else list(self.sweep.grid),
                "wide_histogram": self.wide_histogram, "block_rows": self.block_rows}


@dataclass(frozen=True)
class MatchJob:
    """Everything computing any tile of one match run needs, as paths and options (small and
    picklable: a Ray task gets this, never an array). The run-wide engine plan and the tile
    shape are files in the work folder, written by the driver before the first tile.

    Output: one pair shard per block of ``block_rows`` anchors. A tile writes its pairs
    (with their block) as one file under the work folder; when every tile of a group is
    written, the group's blocks are assembled: a block is done when its statistics and then
    its pair shard exist (the shard is renamed into place last)."""

    emb: Path
    out: Path
    plan: MatchPlan
    resolved: tuple[str, str]  # (engine, device) as resolved on the machine that computes
    n_blocks: int
    block_rows: int
    emb_manifest_sha256: str
    memory_budget: int

    @property
    def block_dir(self) -> Path:
        return self.out / PARTIAL_DIR / BLOCKS_DIR

    @property
    def tile_dir(self) -> Path:
        return self.out / PARTIAL_DIR / TILES_DIR

    @property
    def shard_dir(self) -> Path:
        # with --max-per-anchor the block shards are an intermediate, capped afterwards
        return self.block_dir if self.plan.max_per_anchor is not None else self.out / PAIRS_DIR

    def stats_path(self, i: int) -> Path:
        return self.block_dir / shard_name("block", i, ".json")

    def shard_path(self, i: int) -> Path:
        return self.shard_dir / shard_name("pairs", i, ".parquet")

    def tile_path(self, i: int) -> Path:
        return self.tile_dir / shard_name("tile", i, ".parquet")

    def final_shards(self) -> list[Path]:
        """The store's pair shards, one per block, in block order."""
        return [self.out / PAIRS_DIR / shard_name("pairs", i, ".parquet")
                for i in range(self.n_blocks)]

    def done_blocks(self) -> set[int]:
        def names(folder: Path) -> set[str]:
            return set(os.listdir(folder)) if folder.is_dir() else set()

        stats, shards = names(self.block_dir), names(self.shard_dir)
        return {i for i in range(self.n_blocks)
                if shard_name("pairs", i, ".parquet") in shards
                and shard_name("block", i, ".json") in stats}

    def done_tiles(self) -> set[str]:
        return set(os.listdir(self.tile_dir)) if self.tile_dir.is_dir() else set()

    def open_store(self) -> Embeddings:
        """The embeddings store (lazily: its manifest), checked to be the run's."""
        from pairmine.stores import sha256_file

        found = sha256_file(self.emb / MANIFEST)
        if found != self.emb_manifest_sha256:
            raise StoreError(f"the embeddings store {self.emb} changed since this match run "
                             "started", "rerun match; one store must not be rewritten during "
                                        "a run")
        return open_embeddings(self.emb)


def engine_anchors(anchors: np.ndarray, n: int) -> np.ndarray | None:
    """The anchor ids as the engine takes them: None for the whole store, so that the engine
    may take its faster all-rows path."""
    return None if len(anchors) == n else anchors


def draw_anchors(n: int, plan: MatchPlan) -> np.ndarray | None:
    """The run's anchors (the seeded subset), None when they are every row: O(K), never
    O(N) for the whole store."""
    from pairmine.stores import subset_size

    if subset_size(plan.subset, n) == n:
        return None
    return draw_subset(n, plan.subset, plan.seed)
