"""The Parquet layout: files with one vector per row in a list column.

NeMo Curator's embedding stages and its semantic deduplication read and write this layout
(``id`` + ``embeddings``, the default ``id_field`` and ``embedding_field``); so do many
pipelines built on Arrow. SOURCE is one ``.parquet`` file or a folder of them, read in
natural name order (``part.2`` before ``part.10``). Rows are read by row group, so memory
holds the row groups of one shard, not whole files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

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
    files_in,
    parquet_rows,
    pick_column,
    read_parquet_range,
    register_layout,
)

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from pairmine.ingest.config import ImportConfig

EMBEDDING_DEFAULTS = ("embeddings", "embedding")


class ParquetSource(ImportSource):
    layout = "parquet"

    def __init__(self, spec: str, parts: list[Part], dim: int,
                 columns: dict[str, str | None], embedding: str) -> None:
        super().__init__(spec, parts, dim, columns)
        self.embedding = embedding

    def read(self, part: int, start: int, stop: int) -> Rows:
        p = self.parts[part]
        wanted = {role: col for role, col in self.columns.items() if col is not None}
        table = read_parquet_range(p.path, start, stop,
                                   sorted({self.embedding, *wanted.values()}))
        vectors = list_to_matrix(table.column(self.embedding).combine_chunks(), self.dim,
                                 p.name, self.embedding, start)
        return Rows(vectors, {role: table.column(col).combine_chunks()
                              for role, col in wanted.items()})

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "embedding_column": self.embedding}


def list_to_matrix(col: pa.Array, dim: int, where: str, name: str,
                   first_row: int) -> np.ndarray:
    """A list (or fixed-size list) column of floats as an (n, dim) matrix, without a Python
    loop; a null or a list of another length is an error that names its row."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(col)
    if col.null_count:
        row = int(np.flatnonzero(~col.is_valid().to_numpy(zero_copy_only=False))[0])
        raise InputError(f"row {first_row + row} of {where} has no {name!r} vector (null)")
    if pa.types.is_fixed_size_list(col.type):
        values = col.flatten()
    else:
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lengths != dim)
        if bad.size:
            row = int(bad[0])
            raise InputError(f"row {first_row + row} of {where} has a {name!r} vector of "
                             f"{lengths[row]} values, the others {dim}")
        values = col.flatten()
    if not pa.types.is_floating(values.type):
        raise InputError(f"the {name!r} column of {where} holds {values.type}, not floats")
    if values.null_count:
        raise InputError(f"the {name!r} column of {where} holds null values in its vectors")
    matrix: np.ndarray = values.to_numpy(zero_copy_only=False).reshape(n, dim)
    return matrix


def _embedding_dim(path: str, column: str) -> int:
    """The vector length of the first row (a fixed-size list says it in its type)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    kind = pf.schema_arrow.field(column).type
    if pa.types.is_fixed_size_list(kind):
        return int(kind.list_size)
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        raise InputError(f"the {column!r} column of {path} is {kind}, not a list of floats",
                         "give the vector column with --embedding-column")
    for batch in pf.iter_batches(batch_size=1, columns=[column]):
        if batch.num_rows:
            length = pc.list_value_length(batch.column(0))[0].as_py()
            return int(length or 0)
    return 0


def detect(spec: str) -> bool:
    path = Path(spec)
    if path.is_file():
        return path.suffix.lower() == ".parquet"
    return path.is_dir() and bool(files_in(path, ".parquet"))


def open_parquet(spec: str, config: ImportConfig) -> ParquetSource:
    path = Path(spec)
    files = [path] if path.is_file() else files_in(path, ".parquet")
    if not files:
        raise InputError(f"{spec} holds no .parquet file")
    parts: list[Part] = []
    names: list[str] = []
    embedding = ""
    dim = 0
    for f in files:
        rows, names = parquet_rows(str(f))
        if not embedding:
            found = pick_column(names, config.embedding_column, EMBEDDING_DEFAULTS, str(f),
                                "--embedding-column")
            if found is None:
                raise InputError(f"{f} has no embedding column (looked for "
                                 f"{', '.join(EMBEDDING_DEFAULTS)})",
                                 f"name it with --embedding-column; its columns: "
                                 f"{', '.join(names)}")
            embedding = found
        elif embedding not in names:
            raise InputError(f"{f} has no column {embedding!r}, the files before it have")
        if rows and not dim:
            dim = _embedding_dim(str(f), embedding)
        parts.append(Part(path=str(f.resolve()), rows=rows))
    if dim < 1:
        raise InputError(f"{spec} holds no vector", "give files with at least one row")
    columns: dict[str, str | None] = {
        KEY: pick_column(names, config.key_column, ("id", "key", "image_path"), str(spec),
                         "--key-column"),
        IMAGE: pick_column(names, config.image_column, ("image_path",), str(spec),
                           "--image-column") if config.images else None,
        LABEL: pick_column(names, config.label_column, ("label",), str(spec),
                           "--label-column"),
        SHA256: pick_column(names, None, ("sha256",), str(spec), ""),
    }
    return ParquetSource(str(path), parts, dim, columns, embedding)


register_layout(Layout(
    name="parquet", detect=detect, open=open_parquet,
    help="Parquet file(s) with a list column of vectors (NeMo Curator: id + embeddings)"))
