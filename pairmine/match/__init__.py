"""The match stage: every pair of different images whose embeddings score in ``[min, max]``.

reader (an embeddings store) → band search, block by block (``pairmine.engines``) → writer (one
pair shard per block; a block's shard is renamed into place last, so its presence marks the
block done and an interrupted run resumes where it stopped) → ``manifest.json`` last.

Algorithm 1 of the paper (``sim = E_K @ E_K.T``, keep ``Min <= sim <= Max``) with its K subset
drawn by a seeded generator. A pair ``{a, b}`` is stored once with ``a < b``; Algorithm 1 lists
both orders, so the ordered count is twice the unordered one. Images with the same content hash
are never a pair: they go to ``duplicates.parquet``.

The modules, in pipeline order: ``config`` (:class:`MatchConfig`, the options), ``plan`` (the
resolved plan, the blocks), ``search`` (the resumable block loop), ``cap``
(``--max-per-anchor``), ``duplicates``, ``stats`` (histogram, sweep, positives per image),
``manifest`` (the store's record) and ``stage`` (:func:`match`, which runs them).
``pairmine.scale.match`` runs the same blocks on Ray with the names exported here.
"""

from pairmine.match.config import MatchConfig
from pairmine.match.plan import (
    BlockJob,
    MatchPlan,
    SearchInputs,
    Sweep,
    engine_anchors,
    plan_units,
)
from pairmine.match.search import collect_stats, run_blocks
from pairmine.match.stage import MatchResult, match

__all__ = ["BlockJob", "MatchConfig", "MatchPlan", "MatchResult", "SearchInputs", "Sweep",
           "collect_stats", "engine_anchors", "match", "plan_units", "run_blocks"]
