"""Label-curated pairs and their augmented control: the two matched sets of the authors'
semantic-pairs study (Alkhalefi et al., arXiv 2510.08722), built from any labelled
embeddings store.

``pairs_from_labels`` writes a normal pairs store (the format ``match`` writes), so ``export``,
``train``, ``eval-pairs`` and ``show`` read it unchanged:

- *label-curated pairs*: two different images of the same class, chosen with the labels; never
  two images with the same content (exact duplicates by content hash);
- *the control* (``control=True``): the same number of pairs per class, each an image with
  itself (``a == b``), which an export writes as a pair sample whose two members hold the same
  bytes: a trainer's two augmentations of it are the control's two views of one image.

The per-class counts are those of a mined pairs store (``like``) or ``per_class`` for every
class. A mined pair's class is the label of its image ``a`` (the lower id, the export's
``anchor``) and, when ``a`` has none, the label of ``b``: a pair whose two images have
different labels is a wrong pair of ``a``'s class, and the study keeps the class composition
of what the trainer saw. Pairs with no label at either end cannot be matched and are counted
in the manifest (``unclassed_pairs``).

Each class is drawn with its own generator, ``default_rng((seed, class code))``, so a class's
pairs do not depend on the other classes; a class's draw holds O(pairs of that class) in
memory (numpy's draw without replacement enumerates the candidates only when more than 1/50
of them are asked), never all m(m-1)/2 candidate pairs of a large class. The score of a pair
is the cosine of the stored vectors computed as match computes it (float64 dot of the stored
rows, stored as float32: ``pairmine.engines.band.exact_band``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine import stores
from pairmine.config import StageConfig, check_bool, check_int, setting
from pairmine.errors import ConfigError, InputError
from pairmine.progress import NullProgress, Progress

if TYPE_CHECKING:
    import numpy as np

    from pairmine.quality.labels import Labels

log = logging.getLogger(__name__)

METHOD_LABELS = "labels"
METHOD_CONTROL = "control"
# the pairs manifest's record of how a store was curated, and the flag that lets its pairs be
# (i, i): an export reads it (``pairmine.export.plan``) to accept self pairs
CURATION_KEY = "curation"
SELF_PAIRS_KEY = "self_pairs"
SHARD_ROWS = 1 << 20  # pairs per shard of the output store


@dataclass(frozen=True, kw_only=True)
class PairsFromLabelsConfig(StageConfig):
    """What ``pairs_from_labels`` draws: the per-class counts (from a mined store, ``like``,
    or ``per_class`` for every class), the seed, and whether it is the control."""

    like: str | Path | None = setting(  # noqa: RUF009 - a None default, immutable
        None, kind="path", metavar="PAIRS",
        help="Copy the per-class pair counts of this (mined) pairs store.")
    per_class: int | None = setting(None, metavar="N", minimum=1,
                                    help="N pairs for every labelled class (instead of --like).")
    seed: int = setting(0, help="Seed of the draw (each class draws with (seed, class)).")
    control: bool = setting(
        False, help="The augmented control: the same counts as pairs of an image with itself "
                    "(exported as two views of one image).")
    labels: str | Path | None = setting(  # noqa: RUF009 - a None default, immutable
        None, kind="path", metavar="FILE",
        help="A .csv or .parquet with columns key,label [default: the labels in the "
             "embeddings metadata].")

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.like is None) == (self.per_class is None):
            raise ConfigError("give exactly one of --like PAIRS and --per-class N",
                              "--like copies a mined store's per-class counts; --per-class "
                              "draws N pairs for every class")
        check_int("--per-class", self.per_class, minimum=1, optional=True)
        stores.check_seed(self.seed)
        check_bool("--control", self.control)

    @property
    def method(self) -> str:
        return METHOD_CONTROL if self.control else METHOD_LABELS


@dataclass
class CuratedResult:
    """What ``pairs_from_labels`` wrote: the store, its pairs, and the pairs per class."""

    path: Path
    method: str
    pairs: int
    per_class: dict[str, int]
    unclassed_pairs: int = 0  # pairs of ``like`` with no label at either end (not copied)
    mixed_pairs: int = 0  # pairs of ``like`` whose ends have different labels (a's class)
    seconds: float = 0.0
    manifest: dict[str, Any] = field(default_factory=dict)


def pairs_from_labels(embeddings: str | Path, out: str | Path,
                      config: PairsFromLabelsConfig | None = None, *, overwrite: bool = False,
                      progress: Progress | None = None, **options: Any) -> CuratedResult:
    """Write to ``out`` a pairs store of label-curated pairs of the embeddings store
    ``embeddings`` (or, with ``control``, of each image with itself), with the per-class
    counts of ``like`` or ``per_class`` per class. Fields of ``config`` may be given as
    keyword arguments."""
    import numpy as np

    from pairmine.quality.labels import load_labels

    config = PairsFromLabelsConfig.build(config, options)
    progress = progress or NullProgress()
    t0 = time.perf_counter()
    emb_path, out = Path(embeddings), Path(out)
    emb = stores.open_embeddings(emb_path)
    labels = load_labels(emb, config.labels, what="pairs-from-labels")
    assert labels is not None  # required=True
    like = None if config.like is None else stores.open_pairs(config.like)
    inputs: dict[str, Any] = {"embeddings": stores.input_record(emb_path)}
    if like is not None:
        inputs["like"] = stores.input_record(like.path)
        wanted, unclassed, mixed = _like_counts(like, emb, labels, config.labels)
    else:
        assert config.per_class is not None
        present = np.unique(labels.codes[labels.codes >= 0])
        wanted = {int(c): config.per_class for c in present}
        unclassed = mixed = 0
    if out.resolve() in {emb.path.resolve()} | ({like.path.resolve()} if like else set()):
        raise ConfigError(f"output {out} is an input store", "choose another output path")

    codes = _content_codes(emb)
    members = _class_members(labels.codes)
    _check_feasible(wanted, members, codes, labels, control=config.control)

    record = _config_record(config, labels)
    identity = {"config": record, "inputs": inputs}
    total = sum(wanted.values())
    with stores.begin_run(out, stores.PAIRS_FORMAT, identity, overwrite=overwrite) as run:
        shards: list[str] = []
        buffer: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        buffered = 0
        lo, hi = math.inf, -math.inf
        progress.start("pairs-from-labels", total=total, unit="pairs")
        for code in sorted(wanted):
            k = wanted[code]
            if k == 0:
                continue
            rng = np.random.default_rng((config.seed, code))
            ids = members[code]
            if config.control:
                a, b = _self_pairs(rng, ids, codes, k)
            else:
                a, b = _class_pairs(rng, emb, ids, codes, k)
            score = _scores(emb, a, b)
            lo, hi = min(lo, float(score.min())), max(hi, float(score.max()))
            buffer.append((a, b, score))
            buffered += k
            progress.advance(k)
            if buffered >= SHARD_ROWS:
                shards.append(_write_shard(out, len(shards), buffer))
                buffer, buffered = [], 0
        if buffer or not shards:
            shards.append(_write_shard(out, len(shards), buffer))
        progress.finish()
        dup_pairs, dup_groups = _write_duplicates(out / stores.DUPLICATES_FILE, emb, codes)
        subset = np.flatnonzero(labels.codes >= 0).astype(np.int64)
        _write_subset(out / stores.SUBSET_FILE, subset)
        per_class = {labels.name(c): wanted[c] for c in sorted(wanted)}
        manifest = {
            "inputs": inputs,
            "config": record,
            # the band the pairs' scores span: eval-pairs and show read it as match's band
            "min": lo if total else 0.0,
            "max": hi if total else 0.0,
            "shards": shards,
            "duplicates": {"file": stores.DUPLICATES_FILE, "hash_column": emb.hash_column,
                           "pairs": dup_pairs, "groups": dup_groups},
            "subset": {"file": stores.SUBSET_FILE, "count": int(subset.size), "of": len(emb),
                       "seed": config.seed, "requested": None, "against": "all"},
            "counts": {"pairs": total, "anchors": int(subset.size),
                       "classes": sum(1 for v in wanted.values() if v),
                       "duplicates": dup_pairs, "duplicate_groups": dup_groups},
            CURATION_KEY: {
                "method": config.method, "seed": config.seed,
                "like": None if like is None else inputs["like"],
                "per_class_requested": config.per_class,
                "labels": labels.origin,
                "pairs_per_class": per_class,
                "unclassed_pairs": unclassed,
                "mixed_label_pairs": mixed,
                "rule": _RULE,
            },
            SELF_PAIRS_KEY: config.control,
        }
        run.finish(manifest)
    seconds = time.perf_counter() - t0
    log.info("wrote %d %s pairs of %d classes to %s in %.1f s", total, config.method,
             len(per_class), out, seconds)
    return CuratedResult(path=out, method=config.method, pairs=total, per_class=per_class,
                         unclassed_pairs=unclassed, mixed_pairs=mixed, seconds=seconds,
                         manifest=manifest)


_RULE = ("a pair's class is the label of image a (the lower id), or of b when a has none; "
         "pairs with no label at either end are not copied")


def _config_record(config: PairsFromLabelsConfig, labels: Labels) -> dict[str, Any]:
    # `against: all` tells eval-pairs (pairs_scope) that every labelled image is an anchor
    return {"method": config.method, "seed": config.seed, "per_class": config.per_class,
            "like": None if config.like is None else str(Path(config.like).resolve()),
            "labels": labels.origin, "against": "all"}


def _like_counts(like: stores.Pairs, emb: stores.Embeddings, labels: Labels,
                 labels_file: str | Path | None) -> tuple[dict[int, int], int, int]:
    """Pairs per class code of ``labels`` in the mined store ``like`` (classes by name when
    ``like`` was mined from another embeddings store), and the pairs left unclassed / with
    mixed labels."""
    import numpy as np

    from pairmine.quality.labels import UNKNOWN, load_labels

    like_emb = stores.open_pairs_embeddings(like)
    same = stores.sha256_file(like_emb.path / stores.MANIFEST) == \
        stores.sha256_file(emb.path / stores.MANIFEST)
    like_labels = labels if same else load_labels(like_emb, labels_file,
                                                  what="pairs-from-labels --like")
    assert like_labels is not None
    counts: dict[int, int] = {}
    unclassed = mixed = 0
    for a, b in _iter_pairs(like):
        if a.size and max(int(a.max()), int(b.max())) >= like_labels.codes.shape[0]:
            raise InputError(f"{like.path} names rows beyond its embeddings store",
                             "the stores do not belong together; re-run match")
        la, lb = like_labels.codes[a], like_labels.codes[b]
        cls = np.where(la != UNKNOWN, la, lb)
        mixed += int(np.sum((la != UNKNOWN) & (lb != UNKNOWN) & (la != lb)))
        unclassed += int(np.sum(cls == UNKNOWN))
        found, n = np.unique(cls[cls != UNKNOWN], return_counts=True)
        for c, k in zip(found.tolist(), n.tolist(), strict=True):
            counts[c] = counts.get(c, 0) + k
    if not same:
        counts = _map_classes(counts, like_labels, labels, like.path)
    if unclassed:
        log.warning("%d pairs of %s have no label at either end: not copied", unclassed,
                    like.path)
    return counts, unclassed, mixed


def _iter_pairs(like: stores.Pairs) -> Any:
    """The (a, b) id arrays of a pairs store, shard by shard where the store reads lazily."""
    import numpy as np

    iter_shards = getattr(like, "iter_shards", None)
    tables = iter_shards() if iter_shards is not None else [like.table]
    for table in tables:
        yield (np.asarray(table.column("a").to_numpy(), dtype=np.int64),
               np.asarray(table.column("b").to_numpy(), dtype=np.int64))


def _map_classes(counts: dict[int, int], src: Labels, dst: Labels,
                 where: Path) -> dict[int, int]:
    """Class codes of ``src`` as codes of ``dst``, by class name (codes when either side has
    no names)."""
    if src.names is None or dst.names is None:
        return counts
    index = {name: code for code, name in enumerate(dst.names)}
    out: dict[int, int] = {}
    for code, k in counts.items():
        name = src.name(code)
        if name not in index:
            raise InputError(f"class {name!r} of {where} is not a class of the embeddings "
                             "store", "give --labels so both stores share class names")
        out[index[name]] = out.get(index[name], 0) + k
    return out


def _content_codes(emb: stores.Embeddings) -> np.ndarray:
    """Every row's content code (uint64; 0 = no hash): equal hashes, equal codes."""
    import numpy as np

    parts = [codes for _, codes in emb.iter_codes()]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def _class_members(codes: np.ndarray) -> dict[int, np.ndarray]:
    """Sorted row ids of each labelled class."""
    import numpy as np

    labelled = np.flatnonzero(codes >= 0)
    order = np.argsort(codes[labelled], kind="stable")
    ids = labelled[order]
    cls = codes[ids]
    starts = np.flatnonzero(np.r_[True, cls[1:] != cls[:-1]]) if ids.size else \
        np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], ids.size].astype(np.int64)
    return {int(cls[s]): ids[s:e] for s, e in zip(starts, ends, strict=True)}


def _distinct(ids: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``ids`` with one row per content (the lowest id of each group of equal hashes)."""
    import numpy as np

    c = codes[ids]
    hashed = c != 0
    _, first = np.unique(c[hashed], return_index=True)
    return np.sort(np.concatenate([ids[hashed][first], ids[~hashed]]))


def _available(ids: np.ndarray, codes: np.ndarray) -> int:
    """Pairs of different, non-duplicate images among ``ids``."""
    import numpy as np

    m = int(ids.size)
    c = codes[ids]
    _, sizes = np.unique(c[c != 0], return_counts=True)
    return m * (m - 1) // 2 - int(np.sum(sizes * (sizes - 1) // 2))


def _check_feasible(wanted: dict[int, int], members: dict[int, np.ndarray], codes: np.ndarray,
                    labels: Labels, *, control: bool) -> None:
    short = []
    for code, k in sorted(wanted.items()):
        ids = members.get(code)
        if ids is None:
            short.append(f"{labels.name(code)} (no image of it; {k} asked)")
            continue
        have = int(_distinct(ids, codes).size) if control else _available(ids, codes)
        if k > have and not (control and have > 0):
            short.append(f"{labels.name(code)} ({have} possible, {k} asked)")
    if short:
        raise InputError(f"too few images for the pairs asked in {len(short)} class(es): "
                         f"{'; '.join(short[:5])}" + (" ..." if len(short) > 5 else ""),
                         "ask fewer pairs (--per-class), or use a store with more images "
                         "of these classes")


def _unrank(t: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Index ``t`` in ``[0, m(m-1)/2)`` → ``(i, j)``, ``i < j``, in row-major order of the
    upper triangle (row i starts at i(2m - i - 1)/2)."""
    import numpy as np

    t = t.astype(np.int64)
    two_m = 2 * m - 1
    i = np.floor((two_m - np.sqrt(np.maximum(two_m * two_m - 8.0 * t, 0.0))) / 2).astype(
        np.int64)
    i = np.clip(i, 0, m - 2)

    def start(r: np.ndarray) -> np.ndarray:
        return np.asarray(r * (2 * m - r - 1) // 2, dtype=np.int64)

    # float rounding can put i one row off either way
    i = np.where(start(i) > t, i - 1, i)
    i = np.where(start(i + 1) <= t, i + 1, i)
    j = t - start(i) + i + 1
    return i, j


def _class_pairs(rng: np.random.Generator, emb: stores.Embeddings, ids: np.ndarray,
                 codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` distinct pairs of different, non-duplicate images of ``ids``, sorted by (a, b).

    Draws ``size`` distinct pair indices (a bit more than ``k``) and keeps the first ``k``
    that are no duplicates; a class rich in duplicates redraws with twice the size, up to
    every pair (the feasibility check guarantees ``k`` exist)."""
    import numpy as np

    m = int(ids.size)
    total = m * (m - 1) // 2
    size = min(total, k + k // 8 + 16)
    while True:
        picked = rng.choice(total, size=size, replace=False)
        i, j = _unrank(np.asarray(picked, dtype=np.int64), m)
        a, b = ids[i], ids[j]
        ok = ~emb.same_content(a, b)
        keep = np.flatnonzero(ok)[:k]
        if keep.size == k or size == total:
            break
        size = min(total, 2 * size)
    a, b = a[keep], b[keep]
    order = np.lexsort((b, a))
    return a[order], b[order]


def _self_pairs(rng: np.random.Generator, ids: np.ndarray, codes: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` pairs (i, i) of distinct-content images of ``ids``: every image ``k // m`` times
    and ``k % m`` of them (drawn) once more, so no image repeats more than it must."""
    import numpy as np

    pool = _distinct(ids, codes)
    rounds, rest = divmod(k, int(pool.size))
    extra = np.sort(rng.choice(pool, size=rest, replace=False)) if rest else pool[:0]
    a = np.sort(np.concatenate([np.repeat(pool, rounds), extra]))
    return a, a.copy()


def _scores(emb: stores.Embeddings, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """match's score of each pair: the float64 dot of the stored rows, as float32."""
    import numpy as np

    from pairmine.engines.band import Band, exact_band

    # the rows of this class only (bounded memory), each read once
    rows, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    vectors = np.asarray(emb.vectors[rows])
    # an unbounded band: only the float32 rounding decides which dots are summed exactly
    _, score = exact_band(vectors, inverse[:a.size], inverse[a.size:],
                          Band(lo=-math.inf, hi=math.inf))
    return score


def _write_shard(out: Path, number: int,
                 parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> str:
    import numpy as np
    import pyarrow as pa

    if parts:
        a = np.concatenate([p[0] for p in parts])
        b = np.concatenate([p[1] for p in parts])
        s = np.concatenate([p[2] for p in parts])
        order = np.lexsort((b, a))  # (a, b) order, as match writes its shards
        a, b, s = a[order], b[order], s[order]
    else:
        a = b = np.zeros(0, dtype=np.int64)
        s = np.zeros(0, dtype=np.float32)
    name = f"{stores.PAIRS_DIR}/{stores.shard_name('pairs', number, '.parquet')}"
    stores.write_parquet_atomic(out / name, pa.table({"a": a, "b": b, "score": s},
                                                     schema=stores.PAIRS_SCHEMA()))
    return name


def _write_duplicates(path: Path, emb: stores.Embeddings, codes: np.ndarray) -> tuple[int, int]:
    """``duplicates.parquet`` as match writes it with ``--against all``: every pair of
    images with the same content hash (a, b, hash)."""
    import numpy as np
    import pyarrow as pa

    schema = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("sha256", pa.string())])
    hashed = np.flatnonzero(codes != 0)
    order = np.argsort(codes[hashed], kind="stable")
    ids, cs = hashed[order], codes[hashed][order]
    starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]]) if ids.size else \
        np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], ids.size].astype(np.int64)
    a_parts, b_parts = [], []
    groups = 0
    for s, e in zip(starts, ends, strict=True):
        if e - s < 2:
            continue
        group = np.sort(ids[s:e])
        ia, ib = np.triu_indices(group.size, k=1)
        a, b = group[ia], group[ib]
        same = emb.same_content(a, b)  # equal codes, checked on the full hashes
        if same.any():
            groups += 1
            a_parts.append(a[same])
            b_parts.append(b[same])
    a = np.concatenate(a_parts) if a_parts else np.zeros(0, dtype=np.int64)
    b = np.concatenate(b_parts) if b_parts else np.zeros(0, dtype=np.int64)
    column = emb.hash_column
    hashes = emb.take(a, [column]).column(0) if column is not None and a.size else \
        pa.array([None] * int(a.size), type=pa.string())
    table = pa.table({"a": a, "b": b, "sha256": hashes.cast(pa.string())}, schema=schema)
    stores.write_parquet_atomic(path, table)
    return int(a.size), groups


def _write_subset(path: Path, ids: np.ndarray) -> None:
    import pyarrow as pa

    stores.write_parquet_atomic(path, pa.table({"id": ids}))
