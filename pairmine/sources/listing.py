"""A source's listing on disk: millions of entries without a list of them in memory.

:class:`SpilledListing` holds the refs of a source (``key``, ``source``, ``member``,
``label``) in a Parquet file of row groups of ``CHUNK`` rows, written while the source's
listing is streamed (:class:`ListingWriter`), and reads back one row group at a time: the
item ``i`` is in group ``i // CHUNK``. It quacks like the refs table where the embed stage
uses one (``num_rows``, ``take``, ``column``, ``slice``), so embed plans shards of a huge
file list in memory independent of its length. The file lives in a temporary folder removed
when the process that wrote it drops the listing (a forked DataLoader worker never removes
it), or with the folder it is written to.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

CHUNK = 65536  # rows a group: what one read of the listing costs
GROUPS_KEPT = 2  # a reader goes through the items in order: the group it is in, and the last


def _remove(folder: str, owner: int) -> None:
    if os.getpid() == owner:  # never from a forked child that inherited the listing
        shutil.rmtree(folder, ignore_errors=True)


class ListingWriter:
    """Streams refs rows (``add``) into a :class:`SpilledListing` in groups of ``CHUNK``.
    ``schema`` other than ``REFS_SCHEMA`` spills other per-item columns the same way (a
    source's read-side places, say); ``labelled`` counts a ``label`` column where there is
    one."""

    def __init__(self, folder: str | None = None, schema: pa.Schema | None = None) -> None:
        import pyarrow.parquet as pq

        from pairmine.sources.base import REFS_SCHEMA

        schema = REFS_SCHEMA() if schema is None else schema
        self._has_label = "label" in schema.names
        self.folder = tempfile.mkdtemp(prefix="pairmine-listing-", dir=folder)
        self.path = os.path.join(self.folder, "refs.parquet")
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(
            self.path, schema, compression="zstd")
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.rows = 0
        self.labelled = 0

    def add(self, table: pa.Table) -> None:
        """Append rows (a table in the writer's schema)."""
        import pyarrow.compute as pc

        self.rows += table.num_rows
        if self._has_label:
            self.labelled += int(pc.sum(pc.is_valid(table.column("label"))).as_py() or 0)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= CHUNK:
            self._flush(CHUNK)

    def _flush(self, rows: int) -> None:
        import pyarrow as pa

        assert self._writer is not None
        joined = pa.concat_tables(self._pending).combine_chunks()
        self._writer.write_table(joined.slice(0, rows), row_group_size=CHUNK)
        rest = joined.slice(rows)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def finish(self) -> SpilledListing:
        if self._pending_rows:
            self._flush(self._pending_rows)
        assert self._writer is not None
        self._writer.close()
        self._writer = None
        listing = SpilledListing(self.path, self.rows, self.labelled)
        listing.own(self.folder)
        return listing

    def abandon(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        shutil.rmtree(self.folder, ignore_errors=True)


class SpilledListing:
    """The refs of a source, read from disk a group of rows at a time (see the module doc)."""

    def __init__(self, path: str, rows: int, labelled: int) -> None:
        self.path = path
        self.num_rows = rows
        self.labelled = labelled
        self._groups: OrderedDict[int, pa.Table] = OrderedDict()
        self._lock = threading.Lock()
        self._file: pq.ParquetFile | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def own(self, folder: str) -> None:
        """Remove ``folder`` when this process drops the listing (or exits)."""
        self._finalizer = weakref.finalize(self, _remove, folder, os.getpid())

    def __getstate__(self) -> dict[str, Any]:
        # a copy (a DataLoader worker, a pickle) reads the same file and never removes it
        return {"path": self.path, "num_rows": self.num_rows, "labelled": self.labelled}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["num_rows"], state["labelled"])  # type: ignore[misc]

    def __len__(self) -> int:
        return self.num_rows

    def group(self, number: int) -> pa.Table:
        """Rows ``[number * CHUNK, (number + 1) * CHUNK)``."""
        import pyarrow.parquet as pq

        with self._lock:
            hit = self._groups.get(number)
            if hit is not None:
                self._groups.move_to_end(number)
                return hit
            if self._file is None:
                self._file = pq.ParquetFile(self.path)
            table = self._file.read_row_group(number)
            self._groups[number] = table
            while len(self._groups) > GROUPS_KEPT:
                self._groups.popitem(last=False)
            return table

    def value(self, column: str, index: int) -> Any:
        """One cell: ``column`` of item ``index``."""
        if not 0 <= index < self.num_rows:
            raise IndexError(index)
        return self.group(index // CHUNK).column(column)[index % CHUNK].as_py()

    def slice(self, offset: int, length: int | None = None) -> pa.Table:
        """Rows ``[offset, offset + length)`` (the groups that hold them)."""
        import pyarrow as pa

        stop = self.num_rows if length is None else min(self.num_rows, offset + length)
        parts = []
        for number in range(offset // CHUNK, -(-stop // CHUNK)):
            lo = max(offset, number * CHUNK) - number * CHUNK
            hi = min(stop, (number + 1) * CHUNK) - number * CHUNK
            parts.append(self.group(number).slice(lo, hi - lo))
        if not parts:
            from pairmine.sources.base import REFS_SCHEMA

            return REFS_SCHEMA().empty_table()
        return pa.concat_tables(parts)

    def take(self, indices: Any) -> pa.Table:
        """The rows ``indices`` (ascending or not), reading only the groups that hold them."""
        import numpy as np
        import pyarrow as pa

        ids = np.asarray(indices.to_numpy() if hasattr(indices, "to_numpy") else indices,
                         dtype=np.int64)
        if ids.size == 0:
            from pairmine.sources.base import REFS_SCHEMA

            return REFS_SCHEMA().empty_table()
        order = np.argsort(ids, kind="stable")
        parts: list[pa.Table] = []
        groups = ids[order] // CHUNK
        for number in np.unique(groups).tolist():
            local = ids[order][groups == number] - number * CHUNK
            parts.append(self.group(number).take(pa.array(local, type=pa.int64())))
        joined = pa.concat_tables(parts)
        inverse = np.empty(ids.size, dtype=np.int64)
        inverse[order] = np.arange(ids.size, dtype=np.int64)
        return joined.take(pa.array(inverse, type=pa.int64()))

    def column(self, name: str) -> pa.ChunkedArray:
        """One column of every row (O(N) of that column: for counts at the end of a run)."""
        import pyarrow.parquet as pq

        return pq.read_table(self.path, columns=[name]).column(name)

    def table(self) -> pa.Table:
        """Every row (O(N)): for small sources and the tools that want a table."""
        import pyarrow.parquet as pq

        return pq.read_table(self.path)


def spill_folder() -> str | None:
    """Where listings are written: ``PAIRMINE_LISTING_DIR``, else the system's temp dir."""
    folder = os.environ.get("PAIRMINE_LISTING_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
    return folder or None


def relabel(listing: SpilledListing, mapping: list[int]) -> SpilledListing:
    """A copy of ``listing`` whose labels ``i`` are ``mapping[i]`` (nulls stay null), written
    a group at a time; the old listing's file goes with it."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    table = np.asarray(mapping, dtype=np.int64)
    writer = ListingWriter(os.path.dirname(os.path.dirname(listing.path)) or None)
    try:
        for number in range(-(-listing.num_rows // CHUNK)):
            group = listing.group(number)
            labels = group.column("label").combine_chunks()
            valid = pc.is_valid(labels).to_numpy(zero_copy_only=False)
            values = table[pc.fill_null(labels, 0).to_numpy(zero_copy_only=False)]
            mapped = pa.array(values, type=pa.int64(), mask=~valid)
            writer.add(group.set_column(group.schema.get_field_index("label"), "label",
                                        mapped))
        return writer.finish()
    except BaseException:
        writer.abandon()
        raise
