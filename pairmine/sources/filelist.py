"""``list``: a file list (.txt, .csv or .parquet) naming the images, in the order given.

A .txt holds one path a line (blank lines and ``#`` comments skipped); a .csv or .parquet
holds a ``path`` column and an optional integer ``label`` column (other columns are ignored).
Relative paths resolve against the list's own folder, so a list travels with its images.
Absolute paths and ``..`` are allowed (a list may point anywhere the user can read); a list
written by someone else is confined with ``--root`` (ImageSource.limit): each listed file
must resolve inside that folder, else its read is an error entry.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import SourceError
from pairmine.sources.base import (
    ImageSource,
    SourceKind,
    file_ext,
    no_images,
    plain_file_reader,
    refs_table,
    register_source,
)
from pairmine.sources.files import read_file

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

# what a list file holds: the paths as written, and their labels (None: no label column)
Listing = tuple[list[str], "list[int | None] | None"]


def _read_txt(path: str) -> Listing:
    paths = []
    with open(path, encoding="utf-8-sig") as f:  # -sig: a BOM is not part of the first path
        for line in f:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                paths.append(entry)
    return paths, None


def _read_csv(path: str) -> Listing:
    import pyarrow as pa
    from pyarrow import csv

    options = csv.ConvertOptions(column_types={"path": pa.string(), "label": pa.int64()},
                                 strings_can_be_null=False)
    try:
        table = csv.read_csv(path, convert_options=options)
    except pa.ArrowInvalid as exc:
        raise SourceError(f"cannot read file list {path}: {exc}",
                          "it must be a CSV with a header row, a `path` column and an optional "
                          "integer `label` column") from None
    return _columns(table, path)


def _read_parquet(path: str) -> Listing:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        table = pq.read_table(path, columns=[c for c in ("path", "label") if c in names])
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"cannot read file list {path}: {exc}") from None
    return _columns(table, path)


def _columns(table: pa.Table, path: str) -> Listing:
    import pyarrow as pa

    if "path" not in table.column_names:
        raise SourceError(f"file list {path} has no `path` column "
                          f"(columns: {', '.join(table.column_names) or 'none'})",
                          "name the column of image paths `path`")
    col = table.column("path")
    kind = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise SourceError(f"the `path` column of {path} holds {col.type}, not text")
    paths: list[Any] = col.cast(pa.string()).to_pylist()
    bad = [i for i, p in enumerate(paths) if not p]
    if bad:
        raise SourceError(f"file list {path} has {len(bad)} rows with an empty path "
                          f"(first at row {bad[0]})", "remove them or fill them in")
    labels = None
    if "label" in table.column_names:
        lab = table.column("label")
        if not (pa.types.is_integer(lab.type) or pa.types.is_null(lab.type)):
            raise SourceError(f"the `label` column of {path} holds {lab.type}, not integers",
                              "store class indices, or give --no-labels")
        labels = lab.cast(pa.int64()).to_pylist()
    return paths, labels


READERS: dict[str, Callable[[str], Listing]] = {
    ".txt": _read_txt, ".csv": _read_csv, ".parquet": _read_parquet,
}


class ListSource(ImageSource):
    kind = "list"

    def __init__(self, list_path: str | Path, *, labels: bool = True) -> None:
        self.list_path = os.path.abspath(list_path)
        suffix = Path(self.list_path).suffix.lower()
        if suffix not in READERS:
            raise SourceError(f"{self.list_path} is not a file list",
                              f"give a {', '.join(READERS)} file")
        if not os.path.isfile(self.list_path):
            raise SourceError(f"file list {self.list_path} does not exist")
        keys, label_values = READERS[suffix](self.list_path)
        if not keys:
            raise no_images(self.list_path, "the list names no files")
        dup = [(k, n) for k, n in Counter(keys).items() if n > 1]
        if dup:
            examples = ", ".join(f"{k!r} ({n}×)" for k, n in dup[:5])
            raise SourceError(f"file list {self.list_path} names {len(dup)} paths more than "
                              f"once, e.g. {examples}", "each image must be listed once")
        base = os.path.dirname(self.list_path)
        # abspath, not resolve(): keep the user's spelling, symlinks included
        self.paths = [os.path.abspath(os.path.join(base, k)) for k in keys]
        # A missing file is the embed stage's to record (errors.parquet); a list where none
        # exists is a wrong list or a wrong base folder. Stop at the first file that exists.
        # (isfile: a stat, never an open, so a FIFO or device named in the list is harmless)
        if not any(os.path.isfile(p) for p in self.paths):
            raise SourceError(f"none of the {len(keys)} files listed in {self.list_path} is an "
                              f"existing regular file (e.g. {self.paths[0]})",
                              "relative paths resolve against the list's own folder")
        self.keys = keys
        self.suffix = suffix
        self.labels = labels
        self._labels = label_values if labels else None
        self._refs: pa.Table | None = None
        log.info("file list %s: %d images", self.list_path, len(keys))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_refs"] = None
        return state

    def __len__(self) -> int:
        return len(self.keys)

    def refs(self) -> pa.Table:
        if self._refs is None:
            self._refs = refs_table(self.keys, self.paths, None, self._labels)
        return self._refs

    def read(self, index: int) -> bytes:
        return read_file(self.paths[index], max_bytes=self.max_image_bytes,
                         root=self.confine_to)

    def ext(self, index: int) -> str:
        return file_ext(self.paths[index])

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "list": self.list_path, "format": self.suffix[1:],
                "images": len(self.keys), "ignored": self.ignored(), "labels": self.labels,
                "label_column": self._labels is not None,
                "labelled": (sum(v is not None for v in self._labels)
                             if self._labels is not None else 0)}


register_source(SourceKind(
    name="list",
    detect=lambda spec: Path(spec).suffix.lower() in READERS and os.path.isfile(spec),
    open=lambda spec, labels: ListSource(spec, labels=labels),
    help="a .txt/.csv/.parquet file list (`path` column, optional integer `label` column)",
    ref_reader=plain_file_reader,
))
