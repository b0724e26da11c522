"""Ground-truth labels for judging pairs, and the images a pairs store was drawn from.

Labels come from the embeddings metadata (folder classes, CIFAR labels) or from a file that
maps ``key -> label`` (csv or parquet, columns ``key,label``). A label may be an integer or a
class name; either way it becomes a dense integer code here, ``-1`` meaning unknown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from pairmine.stores import Embeddings, Pairs

log = logging.getLogger(__name__)

UNKNOWN = -1
LABEL_FLAGS = "--labels FILE (a .csv or .parquet with columns key,label)"


@dataclass(frozen=True)
class Labels:
    """One label code per store row (``-1`` = unknown) and, where known, the class names."""

    codes: np.ndarray  # (n,) int64
    names: list[str] | None  # code -> class name
    origin: str  # "embeddings metadata" or the label file's path

    @property
    def known(self) -> int:
        return int((self.codes != UNKNOWN).sum())

    def name(self, code: int) -> str:
        if code == UNKNOWN:
            return "?"
        if self.names is not None and 0 <= code < len(self.names):
            return self.names[code]
        return str(code)


def load_labels(emb: Embeddings, labels_file: str | Path | None = None, *,
                required: bool = True, what: str = "this") -> Labels | None:
    """Labels for every row of ``emb``: from ``labels_file`` if given, else from its metadata.

    With ``required`` a store without any label is an InputError that names the flag that
    provides them; otherwise ``None`` is returned.
    """
    labels = _from_file(emb, Path(labels_file)) if labels_file is not None else _from_meta(emb)
    if labels.known == 0:
        if labels_file is not None:
            raise InputError(f"the label file {labels_file} gives no label to any image of "
                             f"{emb.path}",
                             "its `key` column must hold the keys the embeddings store "
                             "recorded (e.g. relative paths such as cat/0001.jpg)")
        if required:
            raise InputError(f"no labels: the embeddings store {emb.path} has no labels in "
                             f"its metadata, and {what} needs them",
                             f"pass {LABEL_FLAGS}")
        return None
    return labels


def _from_meta(emb: Embeddings) -> Labels:
    import numpy as np

    column = emb.meta.column("label")
    codes = np.asarray(column.fill_null(UNKNOWN).to_numpy(zero_copy_only=False),
                       dtype=np.int64)
    names = emb.manifest.get("source", {}).get("class_names")
    if not (isinstance(names, list) and all(isinstance(x, str) for x in names)):
        names = None
    return Labels(codes=codes, names=names, origin="embeddings metadata")


def _from_file(emb: Embeddings, path: Path) -> Labels:
    import numpy as np
    import pyarrow as pa

    table = _read_label_table(path)
    keys = table.column("key").cast(pa.string()).to_pylist()
    raw = table.column("label").to_pylist()
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        dupes = [k for k in keys if k in seen or seen.add(k)]  # type: ignore[func-returns-value]
        raise InputError(f"label file {path} lists some keys more than once "
                         f"(e.g. {', '.join(map(str, dupes[:3]))})", "keep one row per key")
    names, values = _encode(raw)
    by_key = dict(zip(keys, values, strict=True))
    store_keys = emb.meta.column("key").to_pylist()
    codes = np.fromiter((by_key.get(k, UNKNOWN) for k in store_keys), dtype=np.int64,
                        count=len(store_keys))
    missing = int((codes == UNKNOWN).sum())
    if missing and missing < len(store_keys):
        log.warning("label file %s has no label for %d of %d images; pairs that touch them "
                    "are not counted", path, missing, len(store_keys))
    return Labels(codes=codes, names=names, origin=str(path))


def _read_label_table(path: Path) -> Any:
    if not path.is_file():
        raise InputError(f"label file {path} does not exist", "check the path")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path)
        elif suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            raise InputError(f"label file {path} is neither .csv nor .parquet",
                             "write it as a .csv or .parquet with columns key,label")
    except InputError:
        raise
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise InputError(f"cannot read label file {path}: {exc}") from None
    missing = {"key", "label"} - set(table.column_names)
    if missing:
        raise InputError(f"label file {path} has no {' or '.join(sorted(missing))} column "
                         f"(it has: {', '.join(table.column_names)})",
                         "it needs the columns key,label")
    return table


def _encode(raw: list[Any]) -> tuple[list[str] | None, list[int]]:
    """Integer labels stay as they are; names become codes in sorted order (like ImageFolder)."""
    present = [v for v in raw if v is not None and v != ""]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        if any(v < 0 for v in present):
            raise InputError("integer labels must be >= 0", "use 0, 1, 2, ... or class names")
        return None, [UNKNOWN if v is None else int(v) for v in raw]
    names = sorted({str(v) for v in present})
    index = {name: i for i, name in enumerate(names)}
    return names, [UNKNOWN if v is None or v == "" else index[str(v)] for v in raw]


# ---------------------------------------------------------------------------------------------
# the images a pairs store was drawn from


@dataclass(frozen=True)
class Scope:
    """The anchors (the paper's K subset, sorted row ids) and what they were matched against:
    ``"anchors"`` (Algorithm 1: the subset with itself) or ``"all"`` (every row)."""

    anchors: np.ndarray  # (k,) int64, sorted
    against: str
    n_rows: int

    def is_anchor(self) -> np.ndarray:
        import numpy as np

        mask = np.zeros(self.n_rows, dtype=bool)
        mask[self.anchors] = True
        return mask

    def targets(self) -> np.ndarray:
        import numpy as np

        return self.anchors if self.against == "anchors" else np.arange(self.n_rows,
                                                                          dtype=np.int64)


# the match stage says "subset"/"all"; the engines say "anchors"/"all"
_AGAINST = {"subset": "anchors", "anchors": "anchors", "all": "all"}


def pairs_scope(pairs: Pairs, n_rows: int) -> Scope:
    """The anchors and targets of a pairs store: the anchors its match run drew, the targets
    its ``against``."""
    import numpy as np

    config = pairs.manifest.get("config", {})
    against = _AGAINST.get(str(config.get("against", pairs.info.subset.against)))
    if against is None:
        raise InputError(f"pairs store {pairs.path} records an unknown against="
                         f"{config.get('against')!r}")
    ids = np.unique(pairs.subset_ids())
    if ids.size and (ids[0] < 0 or ids[-1] >= n_rows):
        raise InputError(f"{pairs.path / pairs.info.subset.file} names rows outside the "
                         f"embeddings store (0..{n_rows - 1})",
                         "the stores do not belong together; re-run match")
    return Scope(anchors=ids, against=against, n_rows=n_rows)
