"""The clip-retrieval layout: ``img_emb/img_emb_N.npy`` + ``metadata/metadata_N.parquet``.

What ``clip-retrieval inference`` writes, and the layout LAION's precomputed embeddings are
published in. Partition N of the matrix is row-aligned with partition N of the metadata;
partitions are numbered from 0 and zero-padded only to the width of the partition count, so
they are ordered by number (``img_emb_9`` before ``img_emb_10``). The metadata's
``image_path`` is the image file (folder input) or the WebDataset ``__key__`` (tar input);
``caption``, ``url`` and the other columns stay in the source, joined back by row id.
"""

from __future__ import annotations

import re
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
    natural_key,
    npy_shape,
    open_npy,
    parquet_rows,
    pick_column,
    read_parquet_range,
    register_layout,
)

if TYPE_CHECKING:
    from pairmine.ingest.config import ImportConfig

EMB_DIR, META_DIR = "img_emb", "metadata"
_EMB = re.compile(r"^img_emb_(\d+)\.npy$")
_META = re.compile(r"^metadata_(\d+)\.parquet$")


class ClipRetrievalSource(ImportSource):
    layout = "clip-retrieval"

    def read(self, part: int, start: int, stop: int) -> Rows:
        import numpy as np

        p = self.parts[part]
        vectors = np.asarray(open_npy(p.path)[start:stop])
        wanted = {role: col for role, col in self.columns.items() if col is not None}
        if not wanted or p.meta is None:
            return Rows(vectors)
        table = read_parquet_range(p.meta, start, stop, sorted(set(wanted.values())))
        return Rows(vectors, {role: table.column(col).combine_chunks()
                              for role, col in wanted.items()})


def _numbered(folder: Path, pattern: re.Pattern[str]) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for f in folder.iterdir() if folder.is_dir() else ():
        m = pattern.match(f.name)
        if m:
            n = int(m.group(1))
            if n in found:
                raise InputError(f"{folder} holds two files numbered {n}: {found[n].name} and "
                                 f"{f.name}", "keep one of them")
            found[n] = f
    return found


def detect(spec: str) -> bool:
    root = Path(spec)
    return root.is_dir() and (root / EMB_DIR).is_dir() and \
        any(_EMB.match(f.name) for f in (root / EMB_DIR).iterdir())


def open_clip_retrieval(spec: str, config: ImportConfig) -> ClipRetrievalSource:
    root = Path(spec)
    embs = _numbered(root / EMB_DIR, _EMB)
    if not embs:
        raise InputError(f"{root / EMB_DIR} holds no img_emb_N.npy file",
                         "give the output folder of clip-retrieval inference")
    metas = _numbered(root / META_DIR, _META)
    if metas and set(metas) != set(embs):
        odd = sorted(set(metas) ^ set(embs))[:5]
        raise InputError(f"{root}: img_emb and metadata partitions differ (numbers {odd} are "
                         "in only one of them)", "every img_emb_N.npy needs its "
                         "metadata_N.parquet, or remove the metadata folder")
    parts: list[Part] = []
    dim = None
    names: list[str] = []
    for n in sorted(embs):  # by number: img_emb_10 after img_emb_9
        shape, _ = npy_shape(str(embs[n]))
        if dim is None:
            dim = shape[1]
        elif shape[1] != dim:
            raise InputError(f"{embs[n]} has {shape[1]} dimensions, the partitions before it "
                             f"{dim}", "import partitions of one model only")
        meta = None
        if n in metas:
            rows, names = parquet_rows(str(metas[n]))
            if rows != shape[0]:
                raise InputError(f"{metas[n].name} has {rows} rows, {embs[n].name} "
                                 f"{shape[0]}: the partitions are not row-aligned")
            meta = str(metas[n].resolve())
        parts.append(Part(path=str(embs[n].resolve()), rows=shape[0], meta=meta))
    where = f"{root / META_DIR}"
    columns: dict[str, str | None] = {KEY: None, IMAGE: None, LABEL: None, SHA256: None}
    if metas:
        columns = {
            KEY: pick_column(names, config.key_column, ("image_path", "key"), where,
                             "--key-column"),
            IMAGE: pick_column(names, config.image_column, ("image_path",), where,
                               "--image-column") if config.images else None,
            LABEL: pick_column(names, config.label_column, ("label",), where,
                               "--label-column"),
            # img2dataset writes the sha256 of each downloaded image
            SHA256: pick_column(names, None, ("sha256",), where, ""),
        }
    elif config.key_column or config.label_column or config.image_column:
        raise InputError(f"{root} has no metadata folder, so no --key-column, --label-column "
                         "or --image-column", "drop those options")
    return ClipRetrievalSource(str(root), parts, int(dim or 0), columns)


register_layout(Layout(
    name="clip-retrieval", detect=detect, open=open_clip_retrieval,
    help="clip-retrieval / LAION embeddings: img_emb/img_emb_N.npy + "
         "metadata/metadata_N.parquet (image_path, caption, url, ...)"))

__all__ = ["ClipRetrievalSource", "natural_key"]
