"""``pairmine.verify``: re-read a finished export and check it against its manifests.

For shard exports every tar is read once, end to end: its sha256 and size against the
manifest, its member list (read by Python's tarfile, independently of the index) against the
index, and every member's bytes against the sha256 in the index, which embed recorded for
the original image. Where the embeddings store is still there, the index hashes are checked
against its metadata too. Parquet exports have no bytes of their own: their source images
are re-read and checked instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine import stores
from pairmine.errors import StoreError
from pairmine.export import layout as lay
from pairmine.export.fetch import Fetcher
from pairmine.export.formats import export_format
from pairmine.export.plan import ListCatalogue
from pairmine.export.prefetch import Prefetcher
from pairmine.progress import NullProgress, Progress
from pairmine.stores.export import ExportFile, ExportManifest, ExportShard, InputRecord, Problem

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

log = logging.getLogger(__name__)

MAX_LISTED = 10


@dataclass
class VerifyResult:
    path: Path
    format: str
    shards: int = 0
    samples: int = 0
    pairs: int = 0
    images: int = 0
    members: int = 0  # tar members whose bytes were hashed
    sources: int = 0  # source images re-read (parquet exports)
    bytes: int = 0
    seconds: float = 0.0
    embeddings_checked: bool = False  # index hashes also matched the embeddings store's
    pairs_view_shards: int = 0  # combined exports: the shards holding the pairs alone
    problems: list[str] = field(default_factory=list)


def verify(out: str | Path, *, progress: Progress | None = None) -> VerifyResult:
    """Check every shard and table of the export at ``out``; raise StoreError on any mismatch."""
    progress = progress or NullProgress()
    t0 = time.perf_counter()
    out = Path(out)
    manifest = stores.read_manifest(out, stores.EXPORT_FORMAT)
    ExportManifest.from_json(manifest, out)  # a damaged manifest: one clear error, up front
    layout = export_format(manifest, out)
    result = VerifyResult(path=out, format=layout.name)
    layout.verify(out, manifest, result, progress)
    if not result.problems:  # the card against data already found sound
        from pairmine.export.card import check_card

        check_card(out, ExportManifest.from_json(manifest, out), result.problems)
    result.seconds = time.perf_counter() - t0
    if result.problems:
        listed = "; ".join(result.problems[:MAX_LISTED])
        more = len(result.problems) - MAX_LISTED
        raise StoreError(f"export {out} failed verification: {len(result.problems)} "
                         f"problem(s): {listed}" + (f"; and {more} more" if more > 0 else ""),
                         "re-run the export with --overwrite")
    return result


# ---------------------------------------------------------------------------------------------
# webdataset


def verify_webdataset(out: Path, manifest: dict[str, Any], result: VerifyResult,
                       progress: Progress) -> None:
    import numpy as np
    import pyarrow.compute as pc

    info = ExportManifest.from_json(manifest, out)
    counts = info.counts

    emb = _embeddings(info.inputs.embeddings)
    result.embeddings_checked = emb is not None
    view_samples = sum(s.samples for s in info.pairs_view)
    progress.start("verify", total=counts.samples + view_samples, unit="samples")
    # what each shard holds, as ids only (8 bytes a sample), for the tables' check
    pair_ids: list[np.ndarray] = []
    image_ids: list[np.ndarray] = []
    for rec in info.shards:
        table = _verify_shard(out, rec, emb, result, progress)
        if table is not None:
            is_pair = pc.equal(table.column("kind"), lay.KIND_PAIR)
            pair_ids.append(table.filter(is_pair).column("pair_id").to_numpy())
            image_ids.append(table.filter(pc.invert(is_pair)).column("a").to_numpy())
    result.shards = len(info.shards)
    # the pairs view (combined exports): its shards checked the same way, and holding
    # exactly the pairs of the combined shards; kept out of the totals, which are the
    # combined shards' (the manifest's counts)
    view = VerifyResult(path=out, format=result.format, problems=result.problems)
    view_ids = [_pair_ids(_verify_shard(out, rec, emb, view, progress))
                for rec in info.pairs_view]
    progress.finish()
    result.members += view.members
    result.pairs_view_shards = len(info.pairs_view)
    if result.problems:  # totals of damaged shards would only repeat those problems
        return
    for name in ("samples", "pairs", "images", "bytes"):
        if getattr(counts, name) != getattr(result, name):
            result.problems.append(f"the manifest counts {getattr(counts, name)} {name}, the "
                                   f"shards hold {getattr(result, name)}")
    pairs_held = _sorted(pair_ids)
    if info.pairs_view and not np.array_equal(_sorted(view_ids), pairs_held):
        result.problems.append(f"the pairs view ({lay.PAIRS_VIEW_DIR}/) does not hold the "
                               "pairs of the combined shards")
    _verify_tables(out, info, pairs_held, _sorted(image_ids), result)


def _pair_ids(table: pa.Table | None) -> np.ndarray:
    import numpy as np

    return (np.zeros(0, dtype=np.int64) if table is None
            else table.column("pair_id").to_numpy())


def _sorted(parts: list[np.ndarray]) -> np.ndarray:
    import numpy as np

    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def _verify_shard(out: Path, rec: ExportShard, emb: Any, result: VerifyResult,
                  progress: Progress) -> pa.Table | None:
    import pyarrow.parquet as pq

    tar, index = out / rec.tar, out / rec.index
    problems = result.problems
    for path in (tar, index):
        if not path.exists():
            problems.append(f"{path} is missing")
            return None
    if stores.sha256_file(index) != rec.index_sha256:
        problems.append(f"{rec.index} does not match the manifest's sha256")
        return None
    table = pq.read_table(index)
    rows = table.to_pylist()
    meta_sha = None if emb is None else _hashes_of(emb, rows)
    if len(rows) != rec.samples:
        problems.append(f"{rec.index} lists {len(rows)} samples, the manifest "
                        f"{rec.samples}")

    # 1. the tar's own member list, read by tarfile, against the index
    expected = [(s.name, s.offset, s.size) for r in rows for s in _spans(r)]
    try:
        with tarfile.open(tar, "r:") as tf:
            found = [(m.name, m.offset_data, m.size) for m in tf.getmembers()]
    except tarfile.TarError as exc:
        problems.append(f"{rec.tar} is not a readable tar: {exc}")
        return table
    if found != expected:
        first = next((i for i, (x, y) in enumerate(zip(found, expected, strict=False))
                      if x != y), min(len(found), len(expected)))
        problems.append(f"{rec.tar}: members differ from the index from member {first} on "
                        f"({len(found)} in the tar, {len(expected)} in the index)")
        return table

    # 2. one pass over the bytes: the whole tar's hash and every member's
    sha = hashlib.sha256()
    size = 0
    with open(tar, "rb") as fh:
        for r in rows:
            if fh.tell() != r["offset"]:
                problems.append(f"{rec.tar}: sample {r['key']} is not where the index "
                                "says")
                return table
            buf = fh.read(r["size"])
            sha.update(buf)
            size += len(buf)
            _check_sample(rec.tar, r, buf, meta_sha, problems)
            result.members += 2 if r["name_b"] is None else 3
            result.samples += 1
            result.pairs += r["kind"] == lay.KIND_PAIR
            result.images += r["kind"] == lay.KIND_IMAGE
            progress.advance(1)
        rest = fh.read()
    sha.update(rest)
    size += len(rest)
    if rest.count(0) != len(rest):
        problems.append(f"{rec.tar}: data after the last indexed sample")
    if size != rec.bytes or sha.hexdigest() != rec.sha256:
        problems.append(f"{rec.tar} does not match the manifest's size and sha256")
    result.bytes += size
    return table


def _spans(row: dict[str, Any]) -> list[lay.MemberSpan]:
    members = {row["name_a"]: row["size_a"], lay.JSON: row["size_json"]}
    if row["name_b"] is not None:
        members[row["name_b"]] = row["size_b"]
    return lay.member_spans(row["key"], row["offset"], members)


def _check_sample(tar: str, row: dict[str, Any], buf: bytes, meta_sha: dict[int, str] | None,
                  problems: list[str]) -> None:
    base = row["offset"]
    checks = [("a", row["name_a"]), ("json", lay.JSON)]
    if row["name_b"] is not None:
        checks.append(("b", row["name_b"]))
    for side, name in checks:
        start = row[f"offset_{side}"] - base
        data = buf[start:start + row[f"size_{side}"]]
        if hashlib.sha256(data).hexdigest() != row[f"sha256_{side}"]:
            problems.append(f"{tar}: {row['key']}.{name} does not match its sha256")
        if side == "json":
            _check_json(tar, row, data, problems)
    if meta_sha is not None:
        for side in ("a", "b"):
            image_id = row[side]
            if image_id is not None and meta_sha.get(image_id) != row[f"sha256_{side}"]:
                problems.append(f"{tar}: {row['key']} image {image_id} does not match the "
                                "embeddings store's sha256")


def _check_json(tar: str, row: dict[str, Any], data: bytes, problems: list[str]) -> None:
    try:
        obj = json.loads(data)
    except ValueError:
        problems.append(f"{tar}: {row['key']}.json is not JSON")
        return
    if row["kind"] == lay.KIND_PAIR:
        want = {"kind": row["kind"], "pair_id": row["pair_id"], "a": row["a"], "b": row["b"]}
    else:
        want = {"kind": row["kind"], "id": row["a"]}
    if {k: obj.get(k) for k in want} != want:
        problems.append(f"{tar}: {row['key']}.json does not describe the sample the index "
                        "lists")


def _embeddings(rec: InputRecord) -> Any:
    """The embeddings store the export read (opened lazily), when it is still there."""
    emb = Path(rec.path)
    if not (emb / stores.MANIFEST).exists() or stores.sha256_file(emb / stores.MANIFEST) != \
            rec.manifest_sha256:
        log.info("embeddings store %s is gone or changed: checking against the indexes only",
                 emb)
        return None
    return stores.open_embeddings(emb)


def _hashes_of(emb: Any, rows: list[dict[str, Any]]) -> dict[int, str]:
    """The embeddings store's sha256 of every image a shard's samples use, read by sorted
    id (only the shards of the store that hold them); ids outside the store are left out."""
    import numpy as np

    ids = np.unique(np.asarray([r[side] for r in rows for side in ("a", "b")
                                if r[side] is not None], dtype=np.int64))
    ids = ids[(ids >= 0) & (ids < len(emb))]
    if ids.shape[0] == 0:
        return {}
    hashes = emb.take(ids, ["sha256"]).column("sha256").to_pylist()
    return dict(zip(ids.tolist(), hashes, strict=True))


def _verify_tables(out: Path, info: ExportManifest, pair_ids: np.ndarray,
                   image_ids: np.ndarray, result: VerifyResult) -> None:
    """spps.parquet and images.parquet against the manifest and what the shards hold (the
    sorted ids), read a row group at a time."""
    files = info.files
    if _table_ok(out, lay.SPPS_FILE, files, result) and not _lists(
            out / lay.SPPS_FILE, "pair_id", pair_ids, lay.pair_key):
        result.problems.append(f"{lay.SPPS_FILE} does not list the pairs the shards hold")
    if lay.IMAGES_FILE in files and _table_ok(out, lay.IMAGES_FILE, files, result) \
            and not _lists(out / lay.IMAGES_FILE, "id", image_ids, lay.image_key):
        result.problems.append(f"{lay.IMAGES_FILE} does not list the images the shards hold")


def _lists(path: Path, column: str, ids: np.ndarray, key_of: Any) -> bool:
    """Does the table list exactly ``ids`` (in order), each with its sample key?"""
    import numpy as np
    import pyarrow.parquet as pq

    at = 0
    for batch in pq.ParquetFile(path).iter_batches(columns=[column, "sample_key"]):
        got = batch.column(0).to_numpy()
        if not np.array_equal(got, ids[at:at + got.shape[0]]):
            return False
        if batch.column(1).to_pylist() != [key_of(i) for i in got.tolist()]:
            return False
        at += got.shape[0]
    return bool(at == ids.shape[0])


def _table_ok(out: Path, name: str, files: dict[str, ExportFile],
              result: VerifyResult) -> bool:
    """The table is listed, there, of the recorded sha256 and rows (read from its footer)."""
    import pyarrow.parquet as pq

    path = out / name
    if name not in files:
        result.problems.append(f"the manifest does not list {name}")
        return False
    if not path.exists():
        result.problems.append(f"{path} is missing")
        return False
    if stores.sha256_file(path) != files[name].sha256:
        result.problems.append(f"{name} does not match the manifest's sha256")
        return False
    rows = pq.read_metadata(path).num_rows
    if rows != files[name].rows:
        result.problems.append(f"{name} has {rows} rows, the manifest says {files[name].rows}")
        return False
    return True


# ---------------------------------------------------------------------------------------------
# parquet


def verify_parquet(out: Path, manifest: dict[str, Any], result: VerifyResult,
                    progress: Progress) -> None:
    """Every source image the tables point at, once, re-read and hashed: the tables are read
    a row group at a time; what is kept across groups is the set of image ids already
    checked (at most two a pair), never a table of the store."""
    import pyarrow.parquet as pq

    info = ExportManifest.from_json(manifest, out)
    files = info.files
    ok = _table_ok(out, lay.SPPS_FILE, files, result)
    if lay.IMAGES_FILE in files:
        ok = _table_ok(out, lay.IMAGES_FILE, files, result) and ok
    if not ok:
        return
    result.pairs = files[lay.SPPS_FILE].rows
    result.images = files[lay.IMAGES_FILE].rows if lay.IMAGES_FILE in files else 0
    result.samples = result.pairs + result.images
    if result.pairs != info.counts.pairs or result.images != info.counts.images:
        result.problems.append("the tables do not hold the counts the manifest records")

    seen: set[int] = set()
    problems: list[tuple[int, str]] = []
    progress.start("verify sources", total=None, unit="images")
    for batch in pq.ParquetFile(out / lay.SPPS_FILE).iter_batches():
        cols = batch.to_pydict()
        refs: dict[int, Ref] = {}
        for side in ("a", "b"):
            for i, key, src, member, sha, place in zip(
                    cols[side], cols[f"key_{side}"], cols[f"source_{side}"],
                    cols[f"member_{side}"], cols[f"sha256_{side}"],
                    stores.table_places(cols, f"_{side}"), strict=True):
                if i not in seen:
                    refs[i] = (key, src, member, sha, place)
        seen.update(refs)
        _check_sources(info.source_kind, refs, result, problems, progress)
    if lay.IMAGES_FILE in files:
        for batch in pq.ParquetFile(out / lay.IMAGES_FILE).iter_batches():
            cols = batch.to_pydict()
            refs = {i: (key, src, member, sha, place) for i, key, src, member, sha, place in zip(
                cols["id"], cols["key"], cols["source"], cols["member"], cols["sha256"],
                stores.table_places(cols, ""), strict=True)
                    if i not in seen}  # each image once in images.parquet
            _check_sources(info.source_kind, refs, result, problems, progress)
    progress.finish()
    result.problems.extend(text for _, text in sorted(problems))


# an image a Parquet export refers to: key, source, member, sha256 and its place, if any
Ref = tuple[str, str, str | None, str, tuple[int, int] | None]


def _check_sources(kind: str, refs: dict[int, Ref], result: VerifyResult,
                   problems: list[tuple[int, str]], progress: Progress) -> None:
    """Re-read and hash the images ``refs`` (id -> key, source, member, sha256, place)."""
    ids = sorted(refs)
    catalogue = ListCatalogue(keys=[refs[i][0] for i in ids], sources=[refs[i][1] for i in ids],
                              members=[refs[i][2] for i in ids], labels=[None] * len(ids),
                              sha256=[refs[i][3] for i in ids],
                              places=[refs[i][4] for i in ids])
    fetcher = Fetcher(kind, catalogue, cache_bytes=0)
    with Prefetcher(fetcher.get, 0, len(ids)) as ahead:
        for local in range(len(ids)):
            got = ahead.get(local)
            if not isinstance(got, Problem):
                result.bytes += len(got.data)
                result.sources += 1
            progress.advance(1)
    problems.extend((ids[p.id], f"{p.where()} ({p.reason}: {p.detail})")
                    for p in fetcher.problems.values())
