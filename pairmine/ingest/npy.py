"""The npy layout: one ``.npy`` matrix (memory-mapped) and, row-aligned with it, a keys file
given with ``--keys``: ``.txt`` (one key a line) or ``.csv``/``.parquet`` with a key column
(and optionally ``label`` and ``image_path``/``path`` columns). Without ``--keys`` the keys
are ``FILE:ROW``.

Text and CSV files cannot be read from the middle, so their rows are read by a cursor that
only moves forward (the stage reads shards in order): memory holds one shard's keys.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import InputError
from pairmine.ingest.layouts import (
    IMAGE,
    KEY,
    LABEL,
    SHA256,
    ImportSource,
    Layout,
    Part,
    Rows,
    npy_shape,
    open_npy,
    parquet_rows,
    pick_column,
    read_parquet_range,
    register_layout,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from pairmine.ingest.config import ImportConfig

KEY_SUFFIXES = (".txt", ".csv", ".parquet")
_BATCH = 1 << 16


class KeysFile:
    """The rows of a keys file by range; ``.txt``/``.csv`` through a forward-only cursor."""

    def __init__(self, path: str, columns: dict[str, str | None], names: list[str]) -> None:
        self.path = path
        self.suffix = Path(path).suffix.lower()
        self.columns = columns
        self.names = names
        self._batches: Iterator[pa.Table] | None = None
        self._buffer: pa.Table | None = None
        self._position = 0  # first row of _buffer

    def read(self, start: int, stop: int) -> dict[str, pa.Array]:
        wanted = {role: col for role, col in self.columns.items() if col is not None}
        if self.suffix == ".parquet":
            table = read_parquet_range(self.path, start, stop, sorted(set(wanted.values())))
        else:
            table = self._forward(start, stop)
        return {role: table.column(col).combine_chunks() for role, col in wanted.items()}

    def _forward(self, start: int, stop: int) -> pa.Table:
        import pyarrow as pa

        if self._batches is None or start < self._position:
            self._batches, self._buffer, self._position = self._stream(), None, 0
        pieces = []
        while True:
            if self._buffer is None:
                batch = next(self._batches, None)
                if batch is None:
                    break
                self._buffer = batch
            end = self._position + self._buffer.num_rows
            if end <= start:  # wholly before the range: skip it
                self._position, self._buffer = end, None
                continue
            lo, hi = max(start - self._position, 0), min(stop, end) - self._position
            pieces.append(self._buffer.slice(lo, hi - lo))
            if end > stop:
                break  # the rest of this batch belongs to the next range
            self._position, self._buffer = end, None
            if end == stop:
                break
        return pa.concat_tables(pieces) if pieces else pa.table(
            {c: pa.array([], pa.string()) for c in self.names})

    def _stream(self) -> Iterator[pa.Table]:
        import pyarrow as pa
        import pyarrow.csv as pcsv

        if self.suffix == ".txt":
            with open(self.path, encoding="utf-8", newline="\n") as fh:
                keys: list[str] = []
                for line in fh:
                    keys.append(line.rstrip("\n").rstrip("\r"))
                    if len(keys) == _BATCH:
                        yield pa.table({"key": pa.array(keys, pa.string())})
                        keys = []
                if keys:
                    yield pa.table({"key": pa.array(keys, pa.string())})
            return
        try:
            reader = pcsv.open_csv(self.path)
            for batch in reader:
                yield pa.Table.from_batches([batch])
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"cannot read {self.path}: {str(exc)[:120]}") from None

    def count(self) -> int:
        if self.suffix == ".parquet":
            return parquet_rows(self.path)[0]
        return sum(t.num_rows for t in self._stream())


class NpySource(ImportSource):
    layout = "npy"

    def __init__(self, spec: str, parts: list[Part], dim: int,
                 columns: dict[str, str | None], keys: KeysFile | None) -> None:
        super().__init__(spec, parts, dim, columns)
        self.keys = keys

    def read(self, part: int, start: int, stop: int) -> Rows:
        import numpy as np
        import pyarrow as pa

        vectors = np.asarray(open_npy(self.parts[part].path)[start:stop])
        if self.keys is None:
            name = self.parts[part].name
            return Rows(vectors, {KEY: pa.array([f"{name}:{i}" for i in range(start, stop)],
                                                pa.string())})
        return Rows(vectors, self.keys.read(start, stop))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(),
                "keys": None if self.keys is None else self.keys.path}


def detect(spec: str) -> bool:
    return os.path.isfile(spec) and spec.lower().endswith(".npy")


def _keys_columns(path: str, config: ImportConfig) -> tuple[dict[str, str | None], list[str]]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    suffix = Path(path).suffix.lower()
    if suffix not in KEY_SUFFIXES:
        raise InputError(f"--keys {path}: not a .txt, .csv or .parquet file")
    if suffix == ".txt":
        if config.key_column not in (None, "key") or config.label_column or \
                config.image_column:
            raise InputError(f"--keys {path} is a text file: one key a line, no columns",
                             "give a .csv or .parquet file for labels or image paths")
        return {KEY: "key", IMAGE: None, LABEL: None, SHA256: None}, ["key"]
    if suffix == ".parquet":
        names = parquet_rows(path)[1]
    else:
        try:
            names = list(pcsv.open_csv(path).schema.names)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"cannot read {path}: {str(exc)[:120]}") from None
    key = pick_column(names, config.key_column, ("key",), path, "--key-column")
    if key is None:
        if len(names) != 1:
            raise InputError(f"{path} has no key column",
                             f"name it with --key-column; its columns: {', '.join(names)}")
        key = names[0]
    return {
        KEY: key,
        IMAGE: pick_column(names, config.image_column, ("image_path", "path"), path,
                           "--image-column") if config.images else None,
        LABEL: pick_column(names, config.label_column, ("label",), path, "--label-column"),
        SHA256: pick_column(names, None, ("sha256",), path, ""),
    }, names


def open_npy_layout(spec: str, config: ImportConfig) -> NpySource:
    shape, _ = npy_shape(spec)
    part = Part(path=str(Path(spec).resolve()), rows=shape[0])
    keys = None
    columns: dict[str, str | None] = {KEY: None, IMAGE: None, LABEL: None, SHA256: None}
    if config.keys is not None:
        path = str(Path(config.keys).resolve())
        columns, names = _keys_columns(path, config)
        keys = KeysFile(path, columns, names)
        count = keys.count()
        if count != shape[0]:
            raise InputError(f"--keys {config.keys} has {count} rows, {spec} {shape[0]}: "
                             "they are not row-aligned")
        part = Part(path=part.path, rows=part.rows, meta=path)
    elif config.key_column or config.label_column or config.image_column:
        raise InputError("--key-column, --label-column and --image-column name columns of "
                         "the --keys file", "give --keys")
    return NpySource(spec, [part], shape[1], columns, keys)


register_layout(Layout(
    name="npy", detect=detect, open=open_npy_layout,
    help="one .npy matrix; keys row-aligned in --keys (.txt, .csv or .parquet)"))
