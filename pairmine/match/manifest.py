"""The pairs store's ``manifest.json`` as a match run writes it (docs/artefacts.md); readers get
its typed core from ``pairmine.stores.PairsManifest``. It is written with sorted keys
(``write_json_atomic``); it records timings, so unlike the data files it differs run to run
and ``tests/test_golden.py`` leaves it out."""

from __future__ import annotations

from typing import Any

from pairmine.match.plan import ENGINE_FILE, TILE_PLAN_FILE, MatchJob
from pairmine.match.stats import histogram_record, sweep_record
from pairmine.stores import DUPLICATES_FILE, PAIRS_DIR, PAIRS_FORMAT, SUBSET_FILE, read_json


def pairs_manifest(job: MatchJob, inputs: dict[str, Any], *, images: int,
                   hash_column: str | None, stats: list[dict[str, Any]],
                   counts: dict[str, int], per_anchor: dict[str, float],
                   timings: dict[str, float]) -> dict[str, Any]:
    """The manifest of a finished run: ``stats`` are every block's statistics, ``counts``
    and ``per_anchor`` come from the final shards (``pairmine.match.stats``)."""
    plan = job.plan
    lo, hi = plan.search_range
    engine_plan = {k: v for k, v in read_json(job.block_dir / ENGINE_FILE).items()
                   if k != "arrays"}
    tiles = read_json(job.block_dir / TILE_PLAN_FILE)
    return {
        "format": PAIRS_FORMAT,
        "inputs": inputs,
        "config": plan.config(),
        "min": plan.min_score,
        "max": plan.max_score,
        "shards": [f"{PAIRS_DIR}/{p.name}" for p in job.final_shards()],
        "duplicates": {"file": DUPLICATES_FILE, "hash_column": hash_column,
                       "pairs": counts["duplicates"], "groups": counts["duplicate_groups"]},
        "subset": {"file": SUBSET_FILE, "count": counts["anchors"], "of": images,
                   "seed": plan.seed, "requested": plan.subset, "against": plan.against},
        "engine": {"name": job.resolved[0], "device": job.resolved[1], **engine_plan},
        "search": {"lo": lo, "hi": hi, "blocks": job.n_blocks,
                   "block_rows": job.block_rows, "tiles": tiles,
                   "candidates": sum(s["candidates"] for s in stats),
                   "pairs_in_range": sum(s["found"] for s in stats)},
        "counts": counts,
        "per_anchor": per_anchor,
        "histogram": histogram_record(plan, stats),
        "sweep": sweep_record(plan, stats),
        "timings": timings,
    }
