"""The match stage: every pair of different images whose embeddings score in ``[min, max]``.

reader (an embeddings store, opened lazily) → band search by tiles (``pairmine.engines``: a few
blocks of anchors against a run of target rows, each tile reading only its rows, the engine's
rotation and margins fitted once per run from a sample) → writer (each tile's pairs under the
work folder; when a group's tiles are all there, one pair shard per block, renamed into place
last, so its presence marks the block done and an interrupted run resumes where it stopped)
→ ``manifest.json`` last.

Algorithm 1 of the paper (``sim = E_K @ E_K.T``, keep ``Min <= sim <= Max``) with its K subset
drawn by a seeded generator. A pair ``{a, b}`` is stored once with ``a < b``; Algorithm 1 lists
both orders, so the ordered count is twice the unordered one. Images with the same content hash
are never a pair: they go to ``duplicates.parquet``.

The modules, in pipeline order: ``config`` (:class:`MatchConfig`, the options), ``plan`` (the
resolved plan, the job a tile gets), ``search`` (the tile unit and the block assembly),
``unitplan`` (``--plan``: bytes, memory and time per tile), ``cap`` (``--max-per-anchor``),
``duplicates``, ``stats`` (histogram, sweep, positives per image), ``manifest`` (the store's
record) and ``stage`` (:func:`match`, which runs them and hands the tiles to
``pairmine.scale.executor``, here or on Ray).
"""

from pairmine.match.config import MatchConfig
from pairmine.match.plan import MatchJob, MatchPlan, Sweep, draw_anchors, engine_anchors
from pairmine.match.search import assemble_group, collect_stats, match_tile
from pairmine.match.stage import MatchResult, match
from pairmine.match.unitplan import plan_summary

__all__ = ["MatchConfig", "MatchJob", "MatchPlan", "MatchResult", "Sweep", "assemble_group",
           "collect_stats", "draw_anchors", "engine_anchors", "match", "match_tile",
           "plan_summary"]
