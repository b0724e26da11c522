"""The contract of a source layout and its registry.

A layout turns SOURCE into an :class:`ImportSource`: an ordered list of parts (input files
with a row count each, read from their headers, no rows) and ``read(part, start, stop)``,
which returns those rows of one part: the vectors and the raw metadata columns (key, image,
label, sha256; absent ones left out). The stage cuts the store's shards from the parts by
global row, so a run reads at most one shard's rows at a time, and ids follow the source's
order (part by part, row by row). New layouts register themselves like the built-ins
(``register_layout``), or as entry points in the group ``pairmine.layouts``.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import InputError
from pairmine.registry import Builtin, Registry

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from pairmine.ingest.config import ImportConfig

# the metadata roles a layout may fill (the stage turns them into the store's meta columns)
KEY, IMAGE, LABEL, SHA256 = "key", "image", "label", "sha256"


@dataclass(frozen=True)
class Part:
    """One input file of vectors (and its metadata file, if separate), in source order."""

    path: str  # absolute
    rows: int
    meta: str | None = None  # absolute; None when the vectors' file holds the metadata

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def identity(self) -> dict[str, Any]:
        """What a resumed run must find unchanged: names, sizes, rows."""
        files = [self.path] + ([self.meta] if self.meta else [])
        return {"files": [os.path.basename(f) for f in files],
                "bytes": [os.path.getsize(f) for f in files], "rows": self.rows}


@dataclass
class Rows:
    """Rows ``[start, stop)`` of one part: the vectors (any float dtype, shape (n, d)) and
    the metadata columns the part has, by role."""

    vectors: np.ndarray
    columns: dict[str, pa.Array] = field(default_factory=dict)


class ImportSource(ABC):
    """An opened source: its parts, their dimension, and the columns used for each role."""

    layout: str = ""

    def __init__(self, spec: str, parts: list[Part], dim: int,
                 columns: dict[str, str | None]) -> None:
        self.spec = spec
        self.parts = parts
        self.dim = dim
        self.columns = columns  # role -> column name used (None: the role is not filled)

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.parts)

    @abstractmethod
    def read(self, part: int, start: int, stop: int) -> Rows:
        """Rows ``[start, stop)`` of part ``part`` (0 <= start < stop <= its rows)."""

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the source."""
        return {"layout": self.layout, "spec": self.spec, "files": len(self.parts),
                "columns": dict(self.columns)}


@dataclass(frozen=True)
class Layout:
    name: str
    detect: Callable[[str], bool]  # does SOURCE look like this layout?
    open: Callable[[str, ImportConfig], ImportSource]
    help: str


def _layout_registry() -> Registry[Layout]:
    # detection order: the specific folder layout first, then single files / folders
    builtins = [Builtin("clip-retrieval", "pairmine.ingest.clip_retrieval"),
                Builtin("parquet", "pairmine.ingest.parquet"),
                Builtin("npy", "pairmine.ingest.npy")]
    return Registry("layouts", builtins, name_of=lambda k: k.name, help_of=lambda k: k.help,
                    error=InputError, what="layout")


LAYOUTS = _layout_registry()


def register_layout(layout: Layout, *, priority: int | None = None) -> Layout:
    return LAYOUTS.register(layout, priority=priority)


def open_layout(spec: str | os.PathLike[str], config: ImportConfig) -> ImportSource:
    """Open SOURCE with the config's layout, or the first layout that recognises it."""
    text = os.path.abspath(spec)
    if not os.path.exists(text):
        raise InputError(f"source {spec} does not exist", "check the path")
    if config.layout != "auto":
        return LAYOUTS.get(config.layout).open(text, config)
    for layout in LAYOUTS.ordered():
        if layout.detect(text):
            return layout.open(text, config)
    raise InputError(f"cannot tell the layout of {spec}",
                     "give a clip-retrieval folder (img_emb/, metadata/), Parquet files with "
                     "an embedding column, or a .npy matrix; or pass --layout")


# ---------------------------------------------------------------------------------------------
# helpers the layouts share


def natural_key(name: str) -> list[Any]:
    """Sort key that orders the numbers in names by value: ``img_emb_9`` before
    ``img_emb_10`` (clip-retrieval pads numbers only to the width of the partition count)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def npy_shape(path: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """Shape and dtype of a ``.npy`` file from its header (nothing else is read, nothing is
    unpickled); a clear error for anything that is not a float matrix."""
    from pairmine.stores import npy_header

    try:
        shape, fortran, dtype = npy_header(path)
    except ValueError as exc:
        raise InputError(f"{path} is {exc}") from None
    if dtype.hasobject or dtype.kind != "f":
        raise InputError(f"{path} holds {dtype}, not floating-point vectors",
                         "give a float16/float32/float64 matrix")
    if len(shape) != 2:
        raise InputError(f"{path} has shape {shape}, not (rows, dim)")
    if fortran:
        raise InputError(f"{path} is stored in Fortran order",
                         "save it in C order (np.ascontiguousarray)")
    return tuple(int(s) for s in shape), dtype


def open_npy(path: str) -> np.ndarray:
    import numpy as np

    try:
        mat: np.ndarray = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read {path}: {str(exc)[:120]}") from None
    return mat


def parquet_rows(path: str) -> tuple[int, list[str]]:
    """Row count and column names of a Parquet file, from its footer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path} is not a Parquet file ({str(exc)[:80]})") from None
    return int(meta.metadata.num_rows), list(meta.schema_arrow.names)


def read_parquet_range(path: str, start: int, stop: int, columns: list[str]) -> pa.Table:
    """Rows ``[start, stop)`` of ``columns`` of a Parquet file, reading only the row groups
    that hold them (memory: those row groups, never the whole file when it has several)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        groups, first, offset = [], None, 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if offset + n > start and offset < stop:
                groups.append(g)
                first = offset if first is None else first
            offset += n
        table = pf.read_row_groups(groups, columns=columns) if groups else \
            pf.schema_arrow.empty_table().select(columns)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot read {path}: {str(exc)[:120]}") from None
    skip = start - (first or 0)
    return table.slice(skip, stop - start)


def pick_column(names: Iterable[str], wanted: str | None, defaults: Iterable[str],
                where: str, flag: str) -> str | None:
    """The column for a role: the one asked for (which must exist), else the first default
    the file has, else None."""
    names = list(names)
    if wanted is not None:
        if wanted not in names:
            raise InputError(f"{where} has no column {wanted!r} ({flag})",
                             f"its columns: {', '.join(names)}")
        return wanted
    return next((d for d in defaults if d in names), None)


def files_in(folder: Path, suffix: str) -> list[Path]:
    """The files of ``folder`` ending in ``suffix``, hidden ones left out, in natural order."""
    found = [p for p in folder.iterdir()
             if p.name.endswith(suffix) and not p.name.startswith(".") and p.is_file()]
    return sorted(found, key=lambda p: natural_key(p.name))
