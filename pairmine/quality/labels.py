"""Ground-truth labels for judging pairs, and the images a pairs store was drawn from.

Labels come from the embeddings metadata (folder classes, CIFAR labels) or from a file that
maps an image to its label (csv or parquet): the image in a ``key``, ``path`` or ``filename``
column, the label in a ``label`` or ``class`` column (:data:`KEY_COLUMNS`,
:data:`LABEL_COLUMNS`), as datasets ship them (CIFAR-10 JPEG folders: ``split,label,class,
path``). A file's path matches a store key when one ends with the other on a folder boundary
(``test/cat/0001.jpg`` labels the key ``cat/0001.jpg``). A label may be an integer or a class
name; either way it becomes a dense integer code here, ``-1`` meaning unknown.
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
# the columns a label file may name its images and labels with, in the order they are tried
KEY_COLUMNS = ("key", "path", "filename", "file_name", "file", "image", "image_path")
LABEL_COLUMNS = ("label", "class", "class_name", "target", "category")
LABEL_FLAGS = "--labels FILE (a .csv or .parquet with columns key (or path) and label (or class))"


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
            store_keys = emb.meta.column("key")  # read already, for the file's labels
            first = store_keys[0].as_py() if len(store_keys) else ""
            raise InputError(f"the label file {labels_file} gives no label to any image of "
                             f"{emb.path}",
                             f"its key/path column must hold the keys the store recorded, "
                             f"or paths ending with them (the store's first key: {first})")
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
    key_column, label_columns = _label_layout(table, path)
    keys = [_normalise_key(k) for k in table.column(key_column).cast(pa.string()).to_pylist()]
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        dupes = [k for k in keys if k in seen or seen.add(k)]  # type: ignore[func-returns-value]
        raise InputError(f"label file {path} lists some keys more than once "
                         f"(e.g. {', '.join(map(str, dupes[:3]))})", "keep one row per key")
    names, values = _encode_columns([table.column(c).to_pylist() for c in label_columns])
    by_key = dict(zip(keys, values, strict=True))
    store_keys = [_normalise_key(k) for k in emb.meta.column("key").to_pylist()]
    codes = np.fromiter((by_key.get(k, UNKNOWN) for k in store_keys), dtype=np.int64,
                        count=len(store_keys))
    if (codes == UNKNOWN).any():
        _match_by_path_suffix(codes, store_keys, by_key)
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
    return table


def _label_layout(table: Any, path: Path) -> tuple[str, list[str]]:
    """The key column and the label columns (an integer one and a name one, when the file has
    both, as CIFAR's ``label,class``) of a label file, found by their names."""
    present = {name.strip().lower(): name for name in table.column_names}
    key = next((present[c] for c in KEY_COLUMNS if c in present), None)
    labels = [present[c] for c in LABEL_COLUMNS if c in present]
    if key is None or not labels:
        lacks = [what for what, found in (
            (f"key column ({' or '.join(KEY_COLUMNS)})", key is not None),
            (f"label column ({' or '.join(LABEL_COLUMNS)})", bool(labels))) if not found]
        raise InputError(f"label file {path} has no {' and no '.join(lacks)}; it has: "
                         f"{', '.join(table.column_names)}",
                         "rename its columns to key,label: key the image's path as the store "
                         "recorded it (or a path ending with it), label an integer or a class "
                         "name")
    return key, labels


def _normalise_key(key: Any) -> str:
    text = "" if key is None else str(key).replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    return text


def _match_by_path_suffix(codes: np.ndarray, store_keys: list[str],
                          by_key: dict[str, int]) -> None:
    """Fill the unknown ``codes`` from file keys that end with the store key, or that the
    store key ends with, on a folder boundary (``test/cat/1.jpg`` and ``cat/1.jpg``). A
    suffix shared by two file keys is ambiguous and labels nothing."""
    import numpy as np

    ambiguous = object()
    suffixes: dict[str, Any] = {}
    for key, value in by_key.items():
        parts = key.split("/")
        for i in range(1, len(parts)):
            tail = "/".join(parts[i:])
            suffixes[tail] = ambiguous if tail in suffixes else value
    matched = 0
    for row in np.flatnonzero(codes == UNKNOWN).tolist():
        key = store_keys[row]
        hit = suffixes.get(key)  # a file key ends with the store key
        if hit is None:  # the store key ends with a file key (longest first)
            parts = key.split("/")
            hit = next((by_key[t] for i in range(1, len(parts))
                        if (t := "/".join(parts[i:])) in by_key), None)
        if hit is not None and hit is not ambiguous:
            codes[row] = hit
            matched += 1
    if matched:
        log.info("%d store keys labelled by a label-file path that ends with them (or that "
                 "they end with)", matched)


def _encode_columns(columns: list[list[Any]]) -> tuple[list[str] | None, list[int]]:
    """Codes from the first label column; with an integer column next to a name column (CIFAR:
    ``label`` 3, ``class`` cat), the integers are the codes and the names name them."""
    names, values = _encode(columns[0])
    if names is None and len(columns) > 1:
        named = _names_of_codes(values, columns[1])
        if named is not None:
            names = named
    return names, values


def _names_of_codes(values: list[int], raw_names: list[Any]) -> list[str] | None:
    """``names[code]`` when every code has one name in ``raw_names``; else None."""
    by_code: dict[int, str] = {}
    for code, name in zip(values, raw_names, strict=True):
        if code == UNKNOWN or name is None or isinstance(name, int | float):
            continue
        if by_code.setdefault(code, str(name)) != str(name):
            return None
    if not by_code:
        return None
    return [by_code.get(c, str(c)) for c in range(max(by_code) + 1)]


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
