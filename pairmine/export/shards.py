"""Writing WebDataset shards: reader (plan + originals) → mapper (sample) → writer (tar + index).

Each shard is a tar in WebDataset's layout (a sample's members ``KEY.SUFFIX``, sorted by name)
written with ``tarfile`` and fixed header fields, then its
Parquet index; both land by atomic rename, the index last, so *a shard is complete when its
index exists*. Shards are written in order and each index records where the plan continues,
so a resumed export starts after the last complete shard and writes the same bytes an
uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from pairmine import stores
from pairmine.export import layout as lay
from pairmine.export.fetch import Fetcher, Original
from pairmine.export.plan import SAMPLE_IMAGE, SAMPLE_PAIR, Plan
from pairmine.export.prefetch import Prefetcher
from pairmine.progress import NullProgress, Progress
from pairmine.stores.export import ExportShard, Problem

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

RECORD = 20 * lay.BLOCK  # tarfile pads a closed archive to whole 10 KiB records
SampleAt = Callable[[int], "Sample | list[Problem]"]  # plan position -> sample (or problems)


@dataclass(frozen=True)
class ShardLimits:
    samples: int  # most samples per shard
    bytes: int | None  # most bytes per tar (a single larger sample gets a shard of its own)


@dataclass(frozen=True)
class ShardRecord:
    """A complete shard, as the manifest lists it."""

    number: int
    samples: int
    pairs: int
    images: int
    bytes: int
    sha256: str
    index_sha256: str
    next_position: int
    skipped: list[Problem] = field(default_factory=list)
    skipped_pairs: int = 0
    skipped_images: int = 0

    def as_export_shard(self, folder: str = "") -> ExportShard:
        """The shard's record in the export manifest; ``folder``: where the shard series lies
        in the export (``pairs`` for the pairs view), the export's root by default."""
        under = f"{folder}/" if folder else ""
        return ExportShard(bytes=self.bytes, images=self.images,
                           index=under + lay.shard_index(self.number),
                           index_sha256=self.index_sha256, pairs=self.pairs,
                           samples=self.samples, sha256=self.sha256,
                           tar=under + lay.shard_tar(self.number))


class StoppedAt(Exception):
    """Raised when an image cannot be used and problems are not to be skipped."""

    def __init__(self, problem: Problem, position: int) -> None:
        super().__init__(problem.where())
        self.problem = problem
        self.position = position


def finished_shards(out: Path) -> list[ShardRecord]:
    """The complete shards of an unfinished export: the run of indexes 0, 1, ... whose tar is
    there with the recorded size. Anything after the first gap is rewritten."""
    done: list[ShardRecord] = []
    while (record := finished_shard(out, len(done))) is not None:
        done.append(record)
    return done


def finished_shard(out: Path, number: int) -> ShardRecord | None:
    """Shard ``number`` if it is complete (its index, then its tar with the recorded size)."""
    import pyarrow.parquet as pq

    index = out / lay.shard_index(number)
    tar = out / lay.shard_tar(number)
    if not index.exists() or not tar.exists():
        return None
    meta = pq.read_schema(index).metadata or {}
    try:
        tar_bytes = int(meta[lay.META_TAR_BYTES])
        skipped = json.loads(meta[lay.META_SKIPPED])
        record_next = int(meta[lay.META_NEXT_POSITION])
        tar_sha = meta[lay.META_TAR_SHA256].decode()
    except (KeyError, ValueError):
        return None
    if tar.stat().st_size != tar_bytes:
        return None
    kinds = pq.read_table(index, columns=["kind"]).column("kind").to_pylist()
    pairs = sum(1 for k in kinds if k == lay.KIND_PAIR)
    return ShardRecord(
        number=number, samples=len(kinds), pairs=pairs, images=len(kinds) - pairs,
        bytes=tar_bytes, sha256=tar_sha, index_sha256=stores.sha256_file(index),
        next_position=record_next,
        skipped=[Problem(**p) for p in skipped["problems"]],
        skipped_pairs=int(skipped["pairs"]), skipped_images=int(skipped["images"]))


def shard_bounds(sizes: Sequence[int], limits: ShardLimits, *,
                 skip_missing: bool) -> list[tuple[int, int]]:
    """Every shard's ``(first position, next position)`` from each sample's tar size (``-1``:
    a sample whose images have problems), cut exactly where :func:`_fill` cuts while writing:
    the plan of the units when shards are written out of order (on Ray). A problem without
    ``skip_missing`` stops the plan: ``ValueError(position)``."""
    bounds: list[tuple[int, int]] = []
    position, total = 0, len(sizes)
    while position < total:
        start, count, offset = position, 0, 0
        while position < total and count < limits.samples:
            size = sizes[position]
            if size < 0:
                if not skip_missing:
                    raise ValueError(position)
                position += 1
                continue
            if not _fits(count, offset, size, limits):
                break
            count += 1
            offset += size
            position += 1
        bounds.append((start, position))
    return bounds


def _fits(count: int, offset: int, size: int, limits: ShardLimits) -> bool:
    """Does a sample of ``size`` tar bytes still go into a shard holding ``count`` samples that
    end at ``offset``? (A shard always takes its first sample, however large.)"""
    return limits.bytes is None or count == 0 or _closed_size(offset + size) <= limits.bytes


def sample_size(plan: Plan, fetcher: Fetcher, position: int) -> tuple[int, list[Problem]]:
    """The tar bytes the sample at ``position`` takes (wherever it starts), or ``-1`` and
    its problems."""
    sample = _make_sample(plan, fetcher, position)
    if isinstance(sample, list):
        return -1, sample
    return sample.layout(0)[0], []


def write_one_shard(out: Path, number: int, bounds: tuple[int, int], plan: Plan,
                    fetcher: Fetcher, limits: ShardLimits, *, skip_missing: bool) -> ShardRecord:
    """Write shard ``number`` over the planned positions ``bounds``: the unit of a distributed
    export, through the writer the in-order loop uses."""
    start, stop = bounds
    # the writer looks at one sample past a shard cut by bytes (it did not fit)
    with Prefetcher(lambda p: _make_sample(plan, fetcher, p), start,
                    min(stop + 1, plan.samples)) as ahead, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="pairmine-tar-hash") as hasher:
        record = _write_shard(out, number, start, plan, ahead.get, hasher, limits,
                              skip_missing=skip_missing, meter=_Meter(NullProgress()))
    if record.next_position != stop:
        raise RuntimeError(f"shard {number} ended at sample {record.next_position}, planned "
                           f"{stop}: a source image changed during the export")
    return record


def write_shards(out: Path, plan: Plan, fetcher: Fetcher, limits: ShardLimits, *,
                 skip_missing: bool, progress: Progress) -> tuple[list[ShardRecord], int]:
    """Write (or finish writing) every shard. Returns the shards and how many were resumed."""
    shards = finished_shards(out)
    resumed = len(shards)
    position = shards[-1].next_position if shards else 0
    if resumed:
        log.info("resuming after %d complete shard(s), at sample %d of %d", resumed, position,
                 plan.samples)
    meter = _Meter(progress)
    progress.start("export", total=plan.samples - position, unit="samples")
    with Prefetcher(lambda p: _make_sample(plan, fetcher, p), position, plan.samples) as ahead, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="pairmine-tar-hash") as hasher:
        while position < plan.samples:
            record = _write_shard(out, len(shards), position, plan, ahead.get, hasher, limits,
                                  skip_missing=skip_missing, meter=meter)
            shards.append(record)
            position = record.next_position
    meter.flush()
    progress.finish()
    remove_strays(out, len(shards))
    return shards, resumed


def remove_strays(out: Path, count: int) -> None:
    """Drop shard files an earlier, interrupted run left beyond the final shard list, and
    temporary files of writes that were killed: the export holds only what it lists."""
    keep = {lay.shard_tar(i) for i in range(count)} | {lay.shard_index(i) for i in range(count)}
    folder = out / lay.SHARDS_DIR
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if f"{lay.SHARDS_DIR}/{path.name}" not in keep:
            log.info("removing stray %s", path)
            path.unlink()


class _Meter:
    """Advances the progress bar in batches (a rich update per sample would cost more than
    the tar write) and reports MB/s of tar written."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._t0 = time.perf_counter()
        self._bytes = 0
        self._pending = 0
        self._last = self._t0

    def add(self, samples: int, nbytes: int) -> None:
        self._pending += samples
        self._bytes += nbytes
        now = time.perf_counter()
        if now - self._last > 0.2:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        rate = self._bytes / max(now - self._t0, 1e-9) / 1e6
        self._progress.advance(self._pending, **{"MB/s": rate})
        self._pending = 0
        self._last = now


class _HashingWriter:
    """A write-only file that hashes what passes through, so the tar is not read again.

    tarfile writes every header, member and padding block separately; they are gathered into
    ~1 MiB blocks, each written with one call and hashed on a single background thread (FIFO,
    so in order; hashlib releases the GIL). Few large writes matter here: every write that
    reaches the OS releases the GIL, and with reader threads busy, getting it back costs up
    to a switch interval (5 ms).
    """

    BLOCK = 1 << 20

    def __init__(self, fh: IO[bytes], hasher: ThreadPoolExecutor) -> None:
        self._fh: IO[bytes] | None = fh
        self._hasher = hasher
        self._sha256 = hashlib.sha256()
        self._parts: list[bytes] = []
        self._pending = 0
        self._last: Future[None] | None = None
        self.bytes = 0

    def write(self, data: bytes) -> int:
        if self._fh is None:
            return len(data)
        self._parts.append(data)  # tarfile hands over immutable bytes: no copy needed
        self._pending += len(data)
        self.bytes += len(data)
        if self._pending >= self.BLOCK:
            self._flush()
        return len(data)

    def tell(self) -> int:  # tarfile's plain "w" mode asks where it starts
        return self.bytes

    def _flush(self) -> None:
        if not self._parts or self._fh is None:
            return
        block = b"".join(self._parts)
        self._parts, self._pending = [], 0
        self._fh.write(block)
        self._last = self._hasher.submit(self._sha256.update, block)

    def finish(self) -> str:
        """Write what is left and return the sha256 of everything written."""
        self._flush()
        if self._last is not None:
            self._last.result()
        return self._sha256.hexdigest()

    def detach(self) -> None:
        """Drop later writes: a tar stream abandoned by an error flushes its buffer when it
        is garbage-collected, after the file is gone."""
        self._fh = None
        self._parts = []


class SampleTarWriter:
    """Writes WebDataset samples into one tar: each member ``KEY.SUFFIX``, in name order (what
    WebDataset's own TarWriter does), one USTAR header with the fixed fields of
    ``layout`` (mtime, mode, owner) and the data padded to whole blocks, so
    ``layout.member_spans`` predicts every offset.

    ``tarfile`` in plain ``w`` mode writes headers and data straight to the sink (stream mode
    re-buffers through 10 KiB records; the bytes are the same). Written with ``tarfile``
    itself rather than through WebDataset's writer: nothing here needs its encoders, and
    importing it imports torch.
    """

    def __init__(self, sink: _HashingWriter) -> None:
        self._tar = tarfile.open(  # noqa: SIM115 - closed by close(), like a file
            fileobj=cast(IO[bytes], sink), mode="w", format=tarfile.USTAR_FORMAT)
        # copy a member's data in one piece, not 16 KiB (an attribute typeshed does not list)
        self._tar.copybufsize = 1 << 20  # type: ignore[attr-defined]

    @property
    def offset(self) -> int:
        """Bytes written so far (where the next sample starts)."""
        return int(self._tar.offset)

    def write(self, key: str, members: dict[str, bytes]) -> None:
        for suffix in sorted(members):
            data = members[suffix]
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size = len(data)
            info.mtime = lay.TAR_MTIME
            info.mode = lay.TAR_MODE
            info.uname, info.gname = lay.TAR_USER, lay.TAR_GROUP
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()


def _write_shard(out: Path, number: int, start: int, plan: Plan, sample_at: SampleAt,
                 hasher: ThreadPoolExecutor, limits: ShardLimits, *, skip_missing: bool,
                 meter: _Meter) -> ShardRecord:
    rows = _IndexRows()
    skips = _Skips()
    tar_path = out / lay.shard_tar(number)
    with stores.atomic_path(tar_path) as tmp, open(tmp, "wb") as fh:
        sink = _HashingWriter(fh, hasher)
        writer = SampleTarWriter(sink)
        try:
            position, offset = _fill(writer, rows, skips, start, plan, sample_at, limits,
                                     skip_missing=skip_missing, meter=meter)
            writer.close()
            tar_sha = sink.finish()
        finally:
            sink.detach()
    if sink.bytes != _closed_size(offset):
        raise RuntimeError(f"{tar_path.name}: {sink.bytes} bytes written, "
                           f"{_closed_size(offset)} expected")

    table = rows.table().replace_schema_metadata({
        lay.META_NEXT_POSITION: str(position).encode(),
        lay.META_TAR_SHA256: tar_sha.encode(),
        lay.META_TAR_BYTES: str(sink.bytes).encode(),
        lay.META_SKIPPED: json.dumps(skips.to_json(), sort_keys=True).encode(),
    })
    index_path = out / lay.shard_index(number)
    stores.write_parquet_atomic(index_path, table)
    log.debug("shard %s: %d samples, %d bytes", tar_path.name, rows.count, sink.bytes)
    pairs = sum(1 for k in rows.columns["kind"] if k == lay.KIND_PAIR)
    return ShardRecord(number=number, samples=rows.count, pairs=pairs,
                       images=rows.count - pairs, bytes=sink.bytes, sha256=tar_sha,
                       index_sha256=stores.sha256_file(index_path), next_position=position,
                       skipped=list(skips.problems.values()), skipped_pairs=skips.pairs,
                       skipped_images=skips.images)


@dataclass
class _Skips:
    """Samples a shard left out (``skip_missing``) and the images that made it."""

    problems: dict[int, Problem] = field(default_factory=dict)
    pairs: int = 0
    images: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"problems": [self.problems[i].to_json() for i in sorted(self.problems)],
                "pairs": self.pairs, "images": self.images}


def _fill(writer: SampleTarWriter, rows: _IndexRows, skips: _Skips, position: int, plan: Plan,
          sample_at: SampleAt, limits: ShardLimits, *, skip_missing: bool,
          meter: _Meter) -> tuple[int, int]:
    """Write samples from ``position`` on until the shard is full. Returns the position after
    the last sample taken and the tar offset where the members end."""
    offset = 0
    while position < plan.samples and rows.count < limits.samples:
        sample = sample_at(position)
        if isinstance(sample, list):  # problems with its images
            if not skip_missing:
                raise StoppedAt(sample[0], position)
            skips.problems.update((p.id, p) for p in sample)
            if plan.kinds[position] == SAMPLE_IMAGE:
                skips.images += 1
            else:
                skips.pairs += 1
            position += 1
            continue
        where = sample.layout(offset)
        size = where[0]
        if not _fits(rows.count, offset, size, limits):
            break
        writer.write(sample.key, sample.members())
        if writer.offset != offset + size:  # the layout assumption broke
            raise RuntimeError(f"tar layout mismatch at {sample.key}")
        rows.add(sample, position, offset, where)
        offset += size
        position += 1
        meter.add(1, size)
    return position, offset


def _closed_size(offset: int) -> int:
    """Size of a tar whose members end at ``offset`` once closed (end blocks, record pad)."""
    end = offset + lay.END_OF_ARCHIVE
    return -(-end // RECORD) * RECORD


# ---------------------------------------------------------------------------------------------
# samples


@dataclass(frozen=True)
class Sample:
    key: str
    kind: str
    pair_id: int | None
    a: int
    b: int | None
    score: float | None
    key_a: str
    key_b: str | None
    label_a: int | None
    label_b: int | None
    first: Original  # the anchor, or the image of a single-image sample
    second: Original | None  # the positive
    first_name: str  # member suffix, e.g. "anchor.jpg"
    second_name: str | None
    json: bytes

    def members(self) -> dict[str, bytes]:
        """The sample's members by suffix (``anchor.jpg``, ``json``, ...)."""
        obj: dict[str, bytes] = {self.first_name: self.first.data, lay.JSON: self.json}
        if self.second is not None and self.second_name is not None:
            obj[self.second_name] = self.second.data
        return obj

    def layout(self, offset: int) -> tuple[int, int, int, int | None]:
        """(bytes the sample takes, data offsets of its first image, json and second image)
        when it starts at ``offset``: the one layout rule, ``layout.member_spans``, which
        ``verify`` checks the shards against too."""
        sizes = {self.first_name: len(self.first.data), lay.JSON: len(self.json)}
        if self.second is not None and self.second_name is not None:
            sizes[self.second_name] = len(self.second.data)
        spans = {span.name.removeprefix(self.key + "."): span
                 for span in lay.member_spans(self.key, offset, sizes)}
        last = max(spans.values(), key=lambda span: span.offset)
        end = last.offset + lay.padded(last.size)
        second = None if self.second_name not in spans else spans[str(self.second_name)].offset
        return end - offset, spans[self.first_name].offset, spans[lay.JSON].offset, second


def sample_json(obj: dict[str, Any]) -> bytes:
    """Compact, key-sorted JSON: the same sample always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _make_pair(plan: Plan, fetcher: Fetcher, pair_id: int) -> Sample | list[Problem]:
    a = int(plan.pair_a[pair_id])
    b = int(plan.pair_b[pair_id])
    first, second = fetcher.get(a), fetcher.get(b)
    problems = [x for x in (first, second) if isinstance(x, Problem)]
    if problems:
        return problems
    assert isinstance(first, Original) and isinstance(second, Original)
    img = plan.images
    score = float(plan.pair_score[pair_id])
    key_a, key_b, label_a, label_b = img.keys[a], img.keys[b], img.labels[a], img.labels[b]
    payload = {"kind": lay.KIND_PAIR, "pair_id": pair_id, "score": score, "a": a, "b": b,
               "key_a": key_a, "key_b": key_b, "label_a": label_a, "label_b": label_b}
    return Sample(key=lay.pair_key(pair_id), kind=lay.KIND_PAIR, pair_id=pair_id, a=a, b=b,
                  score=score, key_a=key_a, key_b=key_b, label_a=label_a,
                  label_b=label_b, first=first, second=second,
                  first_name=f"{lay.ANCHOR}.{first.ext}",
                  second_name=f"{lay.POSITIVE}.{second.ext}", json=sample_json(payload))


def _make_image(plan: Plan, fetcher: Fetcher, image_id: int) -> Sample | list[Problem]:
    first = fetcher.get(image_id)
    if isinstance(first, Problem):
        return [first]
    key, label = plan.images.keys[image_id], plan.images.labels[image_id]
    payload = {"kind": lay.KIND_IMAGE, "id": image_id, "key": key, "label": label}
    return Sample(key=lay.image_key(image_id), kind=lay.KIND_IMAGE, pair_id=None, a=image_id,
                  b=None, score=None, key_a=key, key_b=None,
                  label_a=label, label_b=None, first=first, second=None,
                  first_name=f"{lay.IMAGE}.{first.ext}", second_name=None,
                  json=sample_json(payload))


# sample kind (plan code) -> how to make it: a registry, so a new kind is one entry
MAKERS: dict[int, Callable[[Plan, Fetcher, int], Sample | list[Problem]]] = {
    SAMPLE_PAIR: _make_pair,
    SAMPLE_IMAGE: _make_image,
}


def _make_sample(plan: Plan, fetcher: Fetcher, position: int) -> Sample | list[Problem]:
    return MAKERS[int(plan.kinds[position])](plan, fetcher, int(plan.refs[position]))


class _IndexRows:
    """The index of one shard, built column by column."""

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {f.name: [] for f in lay.INDEX_SCHEMA()}
        self.count = 0

    def add(self, sample: Sample, position: int, offset: int,
            where: tuple[int, int, int, int | None]) -> None:
        size, offset_a, offset_json, offset_b = where
        c = self.columns
        c["key"].append(sample.key)
        c["kind"].append(sample.kind)
        c["position"].append(position)
        c["pair_id"].append(sample.pair_id)
        c["a"].append(sample.a)
        c["b"].append(sample.b)
        c["score"].append(sample.score)
        c["key_a"].append(sample.key_a)
        c["key_b"].append(sample.key_b)
        c["label_a"].append(sample.label_a)
        c["label_b"].append(sample.label_b)
        c["offset"].append(offset)
        c["size"].append(size)
        c["name_a"].append(sample.first_name)
        c["offset_a"].append(offset_a)
        c["size_a"].append(len(sample.first.data))
        c["sha256_a"].append(sample.first.sha256)
        c["name_b"].append(sample.second_name)
        c["offset_b"].append(offset_b)
        c["size_b"].append(None if sample.second is None else len(sample.second.data))
        c["sha256_b"].append(None if sample.second is None else sample.second.sha256)
        c["offset_json"].append(offset_json)
        c["size_json"].append(len(sample.json))
        c["sha256_json"].append(hashlib.sha256(sample.json).hexdigest())
        self.count += 1

    def table(self) -> pa.Table:
        import pyarrow as pa

        return pa.table(self.columns, schema=lay.INDEX_SCHEMA())
