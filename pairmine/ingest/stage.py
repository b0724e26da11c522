"""The import stage: precomputed embeddings into a resumable embeddings store.

The source's parts (input files, in the layout's order) are cut into shards of
``shard_size`` rows by global row: shard k holds rows ``[k * shard_size, (k + 1) *
shard_size)`` of the source, so row ids are the source's order (part by part, row by row)
and a resumed run writes exactly what an uninterrupted one would. Each shard is read, checked
(finite, unit norm unless ``normalize``), written through ``stores.write_embedding_shard``
and forgotten: memory holds one shard and the input rows it is cut from.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine import stores
from pairmine.errors import InputError, memory_step
from pairmine.ingest.config import ImportConfig
from pairmine.ingest.layouts import IMAGE, KEY, LABEL, SHA256, ImportSource, open_layout
from pairmine.progress import NullProgress, Progress

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

log = logging.getLogger(__name__)

SOURCE_KIND = "imported"  # pairmine.sources.imported: export and show read images through it
# a stored unit vector's norm may differ from 1 by its storage rounding (float16: < 5e-4,
# bfloat16: < 4e-3); a row further off was not normalised
NORM_TOLERANCE = 1e-2
# image extensions that make a path column's value an image file (others are keys or URLs)
_IMAGE_PATTERN = r"(?i)\.(jpe?g|png|webp|bmp|gif|tiff?|ppm|pgm|pbm)$"
_HASH_THREADS = 8  # image files are hashed in parallel: reading them is I/O, not CPU


@dataclass(frozen=True)
class ImportRecord:
    """Everything that determines the bytes of an imported store (recorded in the manifest
    as ``config``, and the identity a resumed run must match)."""

    source: str
    layout: str
    normalize: bool
    shard_size: int
    dtype: str
    columns: dict[str, str | None]
    image_root: str | None
    images: bool
    keys: str | None


@dataclass
class ImportResult:
    path: Path
    rows: int
    dim: int
    shards: int
    resumed_shards: int
    seconds: float
    layout: str
    images: int  # rows with an image file the store can read again
    images_missing: int  # rows whose image path named no readable file
    labelled: int
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def import_embeddings(source: str | os.PathLike[str], out: str | os.PathLike[str],
                      config: ImportConfig | None = None, *, overwrite: bool = False,
                      progress: Progress | None = None, **options: Any) -> ImportResult:
    """Write the precomputed embeddings at ``source`` as an embeddings store at ``out``.

    ``config`` is an :class:`ImportConfig`, or its fields as keyword arguments. The layout is
    detected (clip-retrieval folder, Parquet files with an embedding column, a ``.npy`` with
    ``keys``) or forced with ``layout``. Row ids follow the source's order: file by file
    (``img_emb_10`` after ``img_emb_9``), row by row, so results join back to the source.
    Rows must be unit vectors (within 1e-2) unless ``normalize``; NaN or inf is refused.
    Keys, labels and image files come from the metadata columns when there are any; image
    files are hashed so that export can check them. An incomplete store at ``out`` is
    resumed; a complete one is only replaced with ``overwrite``.
    """
    config = ImportConfig.build(config, options)
    progress = progress or NullProgress()
    started = time.perf_counter()
    out = Path(out)
    src = open_layout(source, config)
    total = src.rows
    if total == 0:
        raise InputError(f"{source} holds no rows to import")
    image_root = os.path.abspath(config.image_root if config.image_root is not None
                                 else os.getcwd())
    record = ImportRecord(
        source=os.path.abspath(source), layout=src.layout, normalize=config.normalize,
        shard_size=config.shard_size, dtype=config.dtype, columns=dict(src.columns),
        image_root=image_root if src.columns.get(IMAGE) else None, images=config.images,
        keys=None if config.keys is None else os.path.abspath(config.keys))
    identity = {"config": asdict(record), "parts": [p.identity() for p in src.parts]}
    size = config.shard_size
    n_shards = -(-total // size)
    with stores.begin_run(out, stores.EMBEDDINGS_FORMAT, identity,
                          overwrite=overwrite) as run:
        done = _completed(out, n_shards) if run.resumed else set()
        if done:
            log.info("resuming: %d of %d shards already complete", len(done), n_shards)
        progress.start("import", total=total, unit="rows")
        progress.advance(sum(_shard_rows(k, size, total) for k in done))
        writer = ShardWriter(out, src, record)
        for k in range(n_shards):
            if k in done:
                continue
            rows = writer.write(k, k * size, min((k + 1) * size, total))
            progress.advance(rows, shard=k)
        shards, counts = _shard_records(out, n_shards, size, total)
        source_record: dict[str, Any] = {
            "kind": SOURCE_KIND, **src.describe(), "imported": True,
            "images": counts["images"], "images_missing": counts["missing"],
            "labelled_items": counts["labelled"], "class_names": None}
        manifest = {
            "format": stores.EMBEDDINGS_FORMAT, "count": total, "dim": src.dim,
            "dtype": config.dtype, "normalized": True, "errors": counts["missing"],
            "items": total,
            "shards": shards,
            "source": source_record,
            "encoder": {"name": "imported", "dim": src.dim,
                        "note": "precomputed embeddings; see source"},
            "config": asdict(record),
        }
        run.finish(manifest)
    progress.finish()
    elapsed = time.perf_counter() - started
    return ImportResult(path=out, rows=total, dim=src.dim, shards=n_shards,
                        resumed_shards=len(done), seconds=elapsed, layout=src.layout,
                        images=counts["images"], images_missing=counts["missing"],
                        labelled=counts["labelled"], source=source_record)


def _shard_rows(k: int, size: int, total: int) -> int:
    return min((k + 1) * size, total) - k * size


def _completed(out: Path, n_shards: int) -> set[int]:
    """The shards whose files are all in place (the error part first, the metadata last)."""
    done = set()
    for k in range(n_shards):
        if _errors_part(out, k).exists() and \
                all((out / name).exists() for name in stores.embedding_shard_files(k)):
            done.add(k)
    return done


def _errors_part(out: Path, k: int) -> Path:
    """Shard ``k``'s unreadable image files, merged into ``errors.parquet`` at the end."""
    return out / stores.PARTIAL_DIR / stores.shard_name("errors", k, ".parquet")


def _shard_records(out: Path, n_shards: int, size: int,
                   total: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The manifest's shard list, and the counts the manifest reports (read per shard and
    per column: memory independent of the store's size). Merges the shards' error parts
    (one row per image file that could not be read; its row stays, without an image)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards: list[dict[str, Any]] = []
    counts = {"images": 0, "labelled": 0}
    errors = []
    for k in range(n_shards):
        emb, meta, codes = stores.embedding_shard_files(k)
        rows = _shard_rows(k, size, total)
        shards.append({"emb": emb, "meta": meta, "codes": codes, "rows": rows,
                       "id_start": k * size})
        table = pq.read_table(out / meta, columns=["source", "label"])
        counts["images"] += rows - table.column("source").null_count
        counts["labelled"] += rows - table.column("label").null_count
        part = _errors_part(out, k)
        if part.exists():
            errors.append(pq.read_table(part))
    # one row per unreadable image file: small next to the store
    merged = pa.concat_tables(errors) if errors else stores.ERRORS_SCHEMA().empty_table()
    stores.write_parquet_atomic(out / stores.ERRORS_FILE, merged)
    counts["missing"] = merged.num_rows
    return shards, counts


class ShardWriter:
    """Reads rows ``[start, stop)`` of the source from the parts that hold them, checks and
    converts them, and writes them as one shard (with its error part: the image files named
    in the metadata that cannot be read)."""

    def __init__(self, out: Path, src: ImportSource, record: ImportRecord) -> None:
        self.out = out
        self.src = src
        self.record = record
        self.starts: list[int] = []
        offset = 0
        for p in src.parts:
            self.starts.append(offset)
            offset += p.rows

    def write(self, k: int, start: int, stop: int) -> int:
        import numpy as np
        import pyarrow as pa

        lost: list[tuple[str, str, str]] = []  # (key, image file, reason)
        with memory_step(f"import: reading rows {start:,}-{stop:,}",
                         "lower --shard-size, or give the process more memory"):
            vectors, meta = self._read(start, stop, lost)
            stored = np.ascontiguousarray(vectors, dtype=np.dtype(self.record.dtype))
        errors = pa.table({
            "key": pa.array([key for key, _, _ in lost], pa.string()),
            "source": pa.array([path for _, path, _ in lost], pa.string()),
            "member": pa.nulls(len(lost), pa.string()),
            "error": pa.array([reason for _, _, reason in lost], pa.string()),
        }, schema=stores.ERRORS_SCHEMA())
        stores.write_parquet_atomic(_errors_part(self.out, k), errors)
        stores.write_embedding_shard(self.out, k, stored, meta, id_start=start)
        return stop - start

    def _read(self, start: int, stop: int,
              lost: list[tuple[str, str, str]]) -> tuple[np.ndarray, pa.Table]:
        import numpy as np
        import pyarrow as pa

        mats, tables = [], []
        for i, p in enumerate(self.src.parts):
            lo, hi = max(start, self.starts[i]), min(stop, self.starts[i] + p.rows)
            if lo >= hi:
                continue
            first_row = lo - self.starts[i]
            rows = self.src.read(i, first_row, hi - self.starts[i])
            mats.append(self._check(rows.vectors, p.name, first_row, lo))
            tables.append(self._meta(rows.columns, lo, hi, p.name, first_row, lost))
        vectors = np.concatenate(mats) if len(mats) > 1 else mats[0]
        return vectors, pa.concat_tables(tables)

    def _check(self, vectors: np.ndarray, name: str, first_row: int,
               first_id: int) -> np.ndarray:
        """The rows as float32, checked: finite, and unit norm (or normalised)."""
        import numpy as np

        x = np.array(vectors, dtype=np.float32)  # a copy: never write into a memory map
        if x.ndim != 2 or x.shape[1] != self.src.dim:
            raise InputError(f"{name} rows {first_row}-{first_row + len(x)} have shape "
                             f"{x.shape}, expected (n, {self.src.dim})")
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise InputError(f"row {first_row + row} of {name} (id {first_id + row}) holds "
                             "NaN or inf", "fix the source: such a row cannot be imported")
        norms = np.linalg.norm(x, axis=1)
        if self.record.normalize:
            zero = norms == 0
            if zero.any():
                row = int(np.flatnonzero(zero)[0])
                raise InputError(f"row {first_row + row} of {name} (id {first_id + row}) is "
                                 "all zeros: it has no direction to normalise")
            x /= norms[:, None]
            return x
        off = np.abs(norms - 1.0) > NORM_TOLERANCE
        if off.any():
            row = int(np.flatnonzero(off)[0])
            raise InputError(f"row {first_row + row} of {name} (id {first_id + row}) has L2 "
                             f"norm {norms[row]:.4g}, not 1: the rows are not normalised",
                             "pass --normalize to L2-normalise them")
        return x

    def _meta(self, columns: dict[str, pa.Array], start: int, stop: int, name: str,
              first_row: int, lost: list[tuple[str, str, str]]) -> pa.Table:
        """The store's metadata columns for ids ``[start, stop)`` from the source's columns."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        n = stop - start
        key = columns.get(KEY)
        if key is None:
            keys = pa.array([f"{name}:{first_row + i}" for i in range(n)], pa.string())
        else:
            keys = pc.cast(key, pa.string())
            if keys.null_count:
                row = int(np.flatnonzero(~np.asarray(
                    keys.is_valid().to_numpy(zero_copy_only=False), dtype=bool))[0])
                raise InputError(f"row {first_row + row} of {name} has no key (null in "
                                 f"column {self.src.columns[KEY]!r})",
                                 "choose another --key-column")
        label = columns.get(LABEL)
        if label is None:
            labels = pa.nulls(n, pa.int64())
        elif pa.types.is_integer(label.type):
            labels = pc.cast(label, pa.int64())
        else:
            raise InputError(f"the label column {self.src.columns[LABEL]!r} of {name} holds "
                             f"{label.type}, not integers",
                             "give an integer column with --label-column")
        sources, hashes = self._images(columns.get(IMAGE), columns.get(SHA256), keys, lost)
        return pa.table({
            "id": pa.array(np.arange(start, stop, dtype=np.int64)),
            "key": keys, "source": sources, "member": pa.nulls(n, pa.string()),
            "label": labels, "sha256": hashes,
        }, schema=stores.META_SCHEMA())

    def _images(self, paths: pa.Array | None, given: pa.Array | None, keys: pa.Array,
                lost: list[tuple[str, str, str]]) -> tuple[pa.Array, pa.Array]:
        """Each row's image file (absolute) and the sha256 of its bytes; null where the row
        names no image file (a WebDataset key, a URL) or the file cannot be read (listed in
        ``lost``)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        n = len(keys)
        if paths is None:
            hashes = pa.nulls(n, pa.string()) if given is None else pc.cast(given, pa.string())
            return pa.nulls(n, pa.string()), hashes
        text = pc.cast(paths, pa.string())
        is_image = pc.fill_null(pc.match_substring_regex(text, _IMAGE_PATTERN), False)
        root = self.record.image_root or os.getcwd()
        absolute = pc.if_else(pc.starts_with(text, "/"), text,
                              pc.binary_join_element_wise(root, text, "/"))
        files: list[str | None] = pc.if_else(is_image, absolute,
                                             pa.nulls(n, pa.string())).to_pylist()
        wanted = [i for i, f in enumerate(files) if f is not None]
        digests: list[str | None] = [None] * n
        with ThreadPoolExecutor(_HASH_THREADS) as pool:
            for i, digest in zip(wanted, pool.map(_hash, [files[i] for i in wanted]),
                                 strict=True):
                digests[i] = digest
        names = keys.to_pylist() if wanted else []
        for i in wanted:
            if digests[i] is None:
                lost.append((names[i], str(files[i]), "image file cannot be read"))
                files[i] = None
        if lost:
            log.warning("%d image file(s) named in the metadata cannot be read: their rows "
                        "are imported without an image (listed in errors.parquet)", len(lost))
        return pa.array(files, pa.string()), pa.array(digests, pa.string())


def _hash(path: str) -> str | None:
    try:
        return stores.sha256_file(Path(path))
    except OSError:
        return None


