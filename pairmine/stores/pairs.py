"""The pairs store: ``pairs/pairs-NNNNN.parquet`` (unordered pairs ``a < b`` with their fp32
score), ``duplicates.parquet``, the anchors in ``subset.parquet``, ``manifest.json`` last."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import ConfigError, StoreError
from pairmine.stores.embeddings import Embeddings, open_embeddings
from pairmine.stores.run import MANIFEST, damaged, read_manifest

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

PAIRS_FORMAT = "pairmine/pairs"
PAIRS_DIR = "pairs"
DUPLICATES_FILE = "duplicates.parquet"
SUBSET_FILE = "subset.parquet"


def PAIRS_SCHEMA() -> pa.Schema:
    """Schema of ``pairs/pairs-NNNNN.parquet``: unordered pairs stored once with ``a < b``."""
    import pyarrow as pa

    return pa.schema([("a", pa.int64()), ("b", pa.int64()), ("score", pa.float32())])


@dataclass(frozen=True)
class SubsetRecord:
    """The anchors of a pairs store: ``count`` of ``of`` rows drawn with ``seed``."""

    file: str
    count: int
    of: int
    seed: int
    requested: int | float | None
    against: str

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "count": self.count, "of": self.of, "seed": self.seed,
                "requested": self.requested, "against": self.against}


@dataclass(frozen=True)
class PairsManifest:
    """The typed part of a pairs manifest that readers rely on, validated on open."""

    min: float
    max: float
    shards: tuple[str, ...]
    subset: SubsetRecord
    embeddings: Path  # the input store
    embeddings_manifest_sha256: str | None
    duplicates_file: str

    @classmethod
    def from_json(cls, obj: dict[str, Any], store: Path) -> PairsManifest:
        def bad(reason: str) -> StoreError:
            return damaged(store, MANIFEST, reason, PAIRS_FORMAT)

        try:
            lo, hi = float(obj["min"]), float(obj["max"])
            shards = tuple(str(s) for s in obj["shards"])
            sub = obj["subset"]
            subset = SubsetRecord(file=str(sub.get("file", SUBSET_FILE)), count=int(sub["count"]),
                                  of=int(sub["of"]), seed=int(sub.get("seed", 0)),
                                  requested=sub.get("requested"),
                                  against=str(sub.get("against", "subset")))
            emb = obj["inputs"]["embeddings"]
            dup = obj.get("duplicates") or {}
            return cls(min=lo, max=hi, shards=shards, subset=subset,
                       embeddings=Path(str(emb["path"])),
                       embeddings_manifest_sha256=emb.get("manifest_sha256"),
                       duplicates_file=str(dup.get("file", DUPLICATES_FILE)))
        except KeyError as exc:
            raise bad(f"no {exc.args[0]!r} record") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise bad(f"a record has the wrong type ({exc})") from None


class Pairs:
    """A complete pairs store, opened lazily: ``manifest`` as written and ``info`` its
    validated core are read on open; the pair shards are read when asked for, each checked
    against the pair schema. :meth:`iter_shards` yields them one at a time; ``table`` is the
    whole pair table (a, b, score; O(P) memory: quality tools only). The anchors
    (:meth:`subset_ids`) and the exact duplicates (:meth:`duplicates`) are read on demand."""

    def __init__(self, path: Path, manifest: dict[str, Any], info: PairsManifest) -> None:
        self.path = path
        self.manifest = manifest
        self.info = info

    def __repr__(self) -> str:
        return f"Pairs({self.path}, shards={len(self.info.shards)})"

    @property
    def embeddings_path(self) -> Path:
        return self.info.embeddings

    def read_shard(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """One pair shard (``columns`` of it when given), checked against the schema."""
        table = _read_table(self.path, name, columns)
        if columns is None and not table.schema.equals(PAIRS_SCHEMA(), check_metadata=False):
            raise damaged(self.path, name, f"columns {table.schema.names}, expected a, b, "
                          "score", PAIRS_FORMAT)
        return table

    def iter_shards(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """Every pair shard in order, one table (a, b, score) at a time."""
        for name in self.info.shards:
            yield self.read_shard(name, columns)

    @cached_property
    def table(self) -> pa.Table:
        """The whole pair table, every shard concatenated: O(P) memory. For quality tools; the
        stages read per shard (:meth:`iter_shards`)."""
        import pyarrow as pa

        from pairmine.errors import memory_step

        tables = list(self.iter_shards())
        if not tables:
            return PAIRS_SCHEMA().empty_table()
        with memory_step(f"reading the pair table of {self.path}",
                         "read the shards one at a time (Pairs.iter_shards)"):
            return pa.concat_tables(tables)

    def subset_ids(self) -> np.ndarray:
        """The anchor ids (sorted int64), as the match run drew them."""
        import numpy as np

        table = _read_table(self.path, self.info.subset.file)
        ids = np.asarray(table.column("id").to_numpy(), dtype=np.int64)
        if ids.shape[0] != self.info.subset.count:
            raise damaged(self.path, self.info.subset.file, f"{ids.shape[0]} ids, the manifest "
                          f"says {self.info.subset.count}", PAIRS_FORMAT)
        return ids

    def duplicates(self) -> pa.Table:
        """The exact duplicates found (a, b, sha256; a < b): never pairs."""
        return _read_table(self.path, self.info.duplicates_file)


def _read_table(store: Path, name: str, columns: list[str] | None = None) -> pa.Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pairmine.errors import is_out_of_memory, out_of_memory

    path = store / name
    if not path.is_file():
        raise damaged(store, name, "missing", PAIRS_FORMAT)
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError, MemoryError) as exc:
        if is_out_of_memory(exc):  # an allocation that failed is not a damaged file
            raise out_of_memory(f"reading {path}", "give the process more memory, or fewer "
                                "workers per node") from None
        raise damaged(store, name, f"not a Parquet file ({str(exc)[:80]})",
                      PAIRS_FORMAT) from None


def open_pairs(path: str | os.PathLike[str]) -> Pairs:
    """Open a pairs store: its manifest is read and checked, no pair is (each shard is checked
    when read)."""
    store = Path(path)
    manifest = read_manifest(store, PAIRS_FORMAT)
    info = PairsManifest.from_json(manifest, store)
    return Pairs(path=store, manifest=manifest, info=info)


# ---------------------------------------------------------------------------------------------
# the subset: one draw for every stage (match, calibrate, eval-pairs)


def parse_subset(subset: str | int | float | None) -> int | float | None:
    """``--subset``: a float in (0, 1] is a fraction of the store, an integer >= 1 a count."""
    if subset is None or (isinstance(subset, int | float) and not isinstance(subset, bool)):
        value: int | float | None = subset
    elif isinstance(subset, str):
        text = subset.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise ConfigError(f"--subset {subset!r} is neither a fraction nor a count",
                                  "e.g. --subset 0.1 (10%) or --subset 5000") from None
    else:
        raise ConfigError(f"--subset {subset!r} is neither a fraction nor a count",
                          "e.g. --subset 0.1 (10%) or --subset 5000")
    if isinstance(value, float) and not (0.0 < value <= 1.0 and math.isfinite(value)):
        raise ConfigError(f"--subset {subset} is not a fraction in (0, 1]",
                          "a float is a fraction (0.1 = 10%); an integer is a count")
    if isinstance(value, int) and value < 1:
        raise ConfigError(f"--subset {subset} is not a count >= 1",
                          "a float is a fraction (0.1 = 10%); an integer is a count")
    return value


def check_seed(seed: int) -> int:
    """A seed for numpy's generator: an integer >= 0."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--seed {seed} is not an integer >= 0", "e.g. --seed 0")
    return seed


def subset_size(subset: int | float | None, n: int) -> int:
    """How many anchors ``subset`` means for ``n`` rows: a fraction rounds half up (0.5 of 5
    is 3), and is at least one row."""
    if subset is None:
        k = n
    elif isinstance(subset, float):
        k = max(1, math.floor(subset * n + 0.5))
    else:
        k = subset
        if k > n:
            raise ConfigError(f"--subset {k} is larger than the store ({n} images)",
                              f"give a count <= {n} or a fraction in (0, 1]")
    if n == 0 or k == 0:
        raise ConfigError(f"the subset is empty (--subset {subset} of {n} images)",
                          "give a larger fraction or a count >= 1")
    return k


def draw_subset(n: int, subset: int | float | None, seed: int) -> np.ndarray:
    """The paper's K images: a seeded draw without replacement, sorted ids (int64)."""
    import numpy as np

    k = subset_size(subset, n)
    check_seed(seed)
    if k == n:
        return np.arange(n, dtype=np.int64)
    ids = np.random.default_rng(seed).choice(n, size=k, replace=False)
    return np.sort(ids).astype(np.int64)


def open_pairs_embeddings(pairs: Pairs) -> Embeddings:
    """The embeddings store a pairs store was made from, or a clear error naming it."""
    emb = pairs.embeddings_path
    if not (emb / MANIFEST).exists():
        raise StoreError(f"the embeddings store {emb} that {pairs.path} was made from is gone",
                         "restore it, or re-run embed and match")
    return open_embeddings(emb)
