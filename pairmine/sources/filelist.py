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
from collections.abc import Callable, Iterator
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
from pairmine.sources.listing import CHUNK, ListingWriter, SpilledListing, spill_folder

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

log = logging.getLogger(__name__)

# what a list file holds, a batch at a time: the paths as written, and their labels (None:
# no label column)
Batch = tuple[list[str], "list[int | None] | None"]


def _read_txt(path: str) -> Iterator[Batch]:
    paths: list[str] = []
    with open(path, encoding="utf-8-sig") as f:  # -sig: a BOM is not part of the first path
        for line in f:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                paths.append(entry)
                if len(paths) == CHUNK:
                    yield paths, None
                    paths = []
    if paths:
        yield paths, None


def _read_csv(path: str) -> Iterator[Batch]:
    import pyarrow as pa
    from pyarrow import csv

    options = csv.ConvertOptions(column_types={"path": pa.string(), "label": pa.int64()},
                                 strings_can_be_null=False)
    try:
        reader = csv.open_csv(path, convert_options=options)
        row = 0
        for batch in reader:
            yield _columns(pa.Table.from_batches([batch]), path, row)
            row += batch.num_rows
    except pa.ArrowInvalid as exc:
        raise SourceError(f"cannot read file list {path}: {exc}",
                          "it must be a CSV with a header row, a `path` column and an optional "
                          "integer `label` column") from None


def _read_parquet(path: str) -> Iterator[Batch]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        file = pq.ParquetFile(path)
        if "path" not in names:
            yield _columns(file.schema_arrow.empty_table(), path, 0)
            return
        row = 0
        for batch in file.iter_batches(batch_size=CHUNK,
                                       columns=[c for c in ("path", "label") if c in names]):
            yield _columns(pa.Table.from_batches([batch]), path, row)
            row += batch.num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"cannot read file list {path}: {exc}") from None


def _columns(table: pa.Table, path: str, first_row: int) -> Batch:
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
        raise SourceError(f"file list {path} has rows with an empty path (first at row "
                          f"{first_row + bad[0]})", "remove them or fill them in")
    labels = None
    if "label" in table.column_names:
        lab = table.column("label")
        if not (pa.types.is_integer(lab.type) or pa.types.is_null(lab.type)):
            raise SourceError(f"the `label` column of {path} holds {lab.type}, not integers",
                              "store class indices, or give --no-labels")
        labels = lab.cast(pa.int64()).to_pylist()
    return paths, labels


READERS: dict[str, Callable[[str], Iterator[Batch]]] = {
    ".txt": _read_txt, ".csv": _read_csv, ".parquet": _read_parquet,
}


class ListSource(ImageSource):
    """The list is streamed once into a listing on disk (``sources.listing``): the source
    holds no list of its entries, so a list of millions of images is planned into shards in
    memory independent of its length (8 to 16 bytes an entry while duplicates are looked
    for)."""

    kind = "list"

    def __init__(self, list_path: str | Path, *, labels: bool = True) -> None:
        self.list_path = os.path.abspath(list_path)
        suffix = Path(self.list_path).suffix.lower()
        if suffix not in READERS:
            raise SourceError(f"{self.list_path} is not a file list",
                              f"give a {', '.join(READERS)} file")
        if not os.path.isfile(self.list_path):
            raise SourceError(f"file list {self.list_path} does not exist")
        self.suffix = suffix
        self.labels = labels
        self.listing, self.label_column = self._stream(READERS[suffix](self.list_path))
        log.info("file list %s: %d images", self.list_path, self.listing.num_rows)

    def _stream(self, batches: Iterator[Batch]) -> tuple[SpilledListing, bool]:
        import numpy as np

        base = os.path.dirname(self.list_path)
        writer = ListingWriter(spill_folder())
        hashes: list[np.ndarray] = []
        label_column = False
        first: str | None = None
        found = False
        try:
            for keys, label_values in batches:
                label_column = label_column or label_values is not None
                # abspath, not resolve(): keep the user's spelling, symlinks included
                paths = [os.path.abspath(os.path.join(base, k)) for k in keys]
                first = first or paths[0]
                # A missing file is the embed stage's to record (errors.parquet); a list where
                # none exists is a wrong list or a wrong base folder. Stop looking at the
                # first file that exists (isfile: a stat, never an open, so a FIFO or device
                # named in the list is harmless)
                found = found or any(os.path.isfile(p) for p in paths)
                hashes.append(np.fromiter((hash(k) for k in keys), dtype=np.int64,
                                          count=len(keys)))
                writer.add(refs_table(keys, paths, None,
                                      label_values if self.labels else None))
            listing = writer.finish()
        except BaseException:
            writer.abandon()
            raise
        if listing.num_rows == 0:
            raise no_images(self.list_path, "the list names no files")
        joined = np.concatenate(hashes)
        hashes.clear()
        self._check_unique(listing, joined)
        if not found:
            raise SourceError(f"none of the {listing.num_rows} files listed in "
                              f"{self.list_path} is an existing regular file (e.g. {first})",
                              "relative paths resolve against the list's own folder")
        return listing, label_column

    def _check_unique(self, listing: SpilledListing, hashes: np.ndarray) -> None:
        """Each path listed once: equal hashes first, then the keys of those few."""
        import numpy as np

        hashes.sort()  # in place: the only copy
        twice = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
        if twice.size == 0:
            return
        suspects = set(twice.tolist())
        counts: Counter[str] = Counter()
        for number in range(-(-listing.num_rows // CHUNK)):
            for key in listing.group(number).column("key").to_pylist():
                if hash(key) in suspects:
                    counts[key] += 1
        dup = [(k, n) for k, n in counts.items() if n > 1]
        if dup:
            examples = ", ".join(f"{k!r} ({n}×)" for k, n in dup[:5])
            raise SourceError(f"file list {self.list_path} names {len(dup)} paths more than "
                              f"once, e.g. {examples}", "each image must be listed once")

    def __len__(self) -> int:
        return self.listing.num_rows

    def refs(self) -> pa.Table:
        """Every entry (O(N)): the embed stage reads :meth:`listing` instead."""
        return self.listing.table()

    def refs_listing(self) -> SpilledListing:
        return self.listing

    def read(self, index: int) -> bytes:
        return read_file(self.listing.value("source", index), max_bytes=self.max_image_bytes,
                         root=self.confine_to)

    def ext(self, index: int) -> str:
        return file_ext(self.listing.value("source", index))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "list": self.list_path, "format": self.suffix[1:],
                "images": self.listing.num_rows, "ignored": self.ignored(),
                "labels": self.labels,
                "label_column": self.label_column and self.labels,
                "labelled": self.listing.labelled}


register_source(SourceKind(
    name="list",
    detect=lambda spec: Path(spec).suffix.lower() in READERS and os.path.isfile(spec),
    open=lambda spec, labels: ListSource(spec, labels=labels),
    help="a .txt/.csv/.parquet file list (`path` column, optional integer `label` column)",
    ref_reader=plain_file_reader,
))
