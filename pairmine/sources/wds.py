r"""``webdataset``: local WebDataset .tar shards, read by random access.

Members group into samples the WebDataset way: consecutive members sharing ``__key__`` (the
member path up to the first dot of its base name) form one sample; the image is its first
``jpg``/``jpeg``/``png``/``webp`` member, its label the integer text of a ``cls`` member.
Each tar is indexed once at open time (``tarfile`` gives every member's data offset and size)
so ``read(i)`` is one seek and one read, not a scan, and any worker can read any sample. The
index is streamed, shard by shard, into listings on disk (``sources.listing``): opening
100M samples holds no list of them.

Member names are bytes; keys and the ``member`` column are text. A name that is not valid UTF-8
(or holds a backslash) is escaped, reversibly: ``\\`` for a backslash, ``\xNN`` for each byte
that is not part of valid UTF-8 (:func:`escape_member`, undone by :func:`unescape_member`).
"""

from __future__ import annotations

import logging
import os
import re
import tarfile
import threading
from array import array
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from pairmine.errors import SourceError
from pairmine.sources.base import (
    IMAGE_EXTS,
    ImageSource,
    RefReader,
    SourceKind,
    no_images,
    refs_table,
    register_source,
)
from pairmine.sources.listing import CHUNK, ListingWriter, SpilledListing, spill_folder

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

log = logging.getLogger(__name__)

# webdataset's own rule (base_plus_ext): key = path up to the first dot of the base name
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
TAR_SUFFIXES = (".tar",)
COMPRESSED_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
MAX_OPEN_SHARDS = 64  # per process: enough for sequential reading, far below fd limits
# samples held as Python objects while indexing (~300 bytes each) before they go to the
# listing writer, which regroups them into CHUNK-row groups as compact Arrow columns
BATCH = 8192


def expand_shards(spec: str) -> list[str]:
    """Shard paths of a spec: ``::``-separated parts (as in webdataset), each brace-expanded,
    in the order written."""
    from braceexpand import braceexpand

    paths: list[str] = []
    for part in spec.split("::"):
        part = part.strip()
        if part:
            paths.extend(braceexpand(part))
    return paths


def _detect(spec: str) -> bool:
    if "{" not in spec and "::" not in spec and os.path.isdir(spec):
        return False
    try:
        paths = expand_shards(spec)
    except Exception:  # an unbalanced brace is not a pattern
        return False
    return bool(paths) and all(p.lower().endswith(TAR_SUFFIXES + COMPRESSED_SUFFIXES)
                               for p in paths)


def escape_member(name: str) -> str:
    r"""A member name (decoded ``surrogateescape``, as tarfile and the scanner do) as text:
    unchanged when it is valid UTF-8 without a backslash; else each backslash doubled and
    each byte that is not valid UTF-8 written ``\xNN``. Deterministic and reversible."""
    if "\\" not in name:
        try:
            name.encode("utf-8")
            return name
        except UnicodeEncodeError:
            pass
    # backslash (0x5c) is never part of a multi-byte UTF-8 sequence: safe to double as bytes
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no byte decodes to: keep its UTF-8-ish bytes
        raw = name.encode("utf-8", "surrogatepass")
    raw = raw.replace(b"\\", b"\\\\")
    return raw.decode("utf-8", "backslashreplace")


def unescape_member(text: str) -> bytes:
    """The raw bytes of the member name that :func:`escape_member` turned into ``text``."""
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and text[i + 1:i + 2] == "\\":
            out += b"\\"
            i += 2
        elif ch == "\\" and text[i + 1:i + 2] == "x" and len(text) >= i + 4:
            out.append(int(text[i + 2:i + 4], 16))
            i += 4
        else:
            out += ch.encode("utf-8")
            i += 1
    return bytes(out)


def _split(name: str) -> tuple[str, str] | None:
    """(``__key__``, lower-case extension) of a member name; None for names webdataset skips."""
    if "/" not in name and name.startswith("__") and name.endswith("__"):
        return None  # shard-level metadata such as __index__
    match = _KEY_EXT.match(name)
    return (match.group(1), match.group(2).lower()) if match else None


class Member(NamedTuple):
    name: str  # escaped (escape_member): always valid text
    offset: int  # of the data, from the start of the tar
    size: int


# what a tar holds besides regular files, by type flag; folders are not counted (not files)
_SKIPPED_KINDS = {b"1": "hard link", b"2": "symlink", b"3": "character device",
                  b"4": "block device", b"6": "FIFO"}


class Scan(NamedTuple):
    members: Iterator[Member]  # the regular-file members, in order, read as they are asked for
    skipped: Counter[str]  # the other non-folder members, by kind: complete once members is


def _members(path: str) -> Scan:
    """The regular-file members of an uncompressed tar, in order (what ``tarfile`` lists as
    ``isreg()``, with its ``name``, ``offset_data`` and ``size``), and the others counted.
    Streamed: a tar of a million samples is never held as a list of its members."""
    skipped: Counter[str] = Counter()
    return Scan(_stream_members(path, skipped), skipped)


def _stream_members(path: str, skipped: Counter[str]) -> Iterator[Member]:
    given = 0
    plain: Counter[str] = Counter()
    try:
        for member in _scan_plain(path, plain):
            yield member
            given += 1
    except FileNotFoundError:
        raise SourceError(f"shard {path} does not exist") from None
    except _NotPlain:
        # a header the fast scanner leaves to tarfile: tarfile reads the tar again from the
        # start, and the members given already (the same ones: the fast scanner only reads
        # the headers it reads exactly as tarfile does) are passed over
        for number, member in enumerate(_scan_tarfile(path, skipped)):
            if number >= given:
                yield member
        return
    skipped.update(plain)


class _NotPlain(Exception):
    """A header the fast scanner leaves to tarfile (pax, GNU long names, sparse, damage)."""


_ZERO_BLOCK = bytes(512)
_REGULAR = (b"0", b"\0", b"7")  # tarfile's REGULAR_TYPES, less GNU sparse
_NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")  # links, devices, folders, fifos


def _octal(field: bytes) -> int:
    if field[:1] in (b"\x80", b"\xff"):
        raise _NotPlain  # base-256 sizes (> 8 GiB): rare, leave them to tarfile
    try:
        return int(field.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        raise _NotPlain from None


def _header(block: bytes) -> tuple[bytes, int, str]:
    """(type flag, data size, name) of a ustar/GNU/v7 header block. _NotPlain when the
    block is short, its checksum is wrong or its size is base-256."""
    if len(block) < 512:
        raise _NotPlain
    # the checksum counts its own 8 bytes as spaces (8 * 32 = 256)
    if _octal(block[148:156]) != sum(block) - sum(block[148:156]) + 256:
        raise _NotPlain
    name = block[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    prefix = block[345:500].split(b"\0", 1)[0]
    if prefix:  # ustar splits long paths into prefix/name
        name = prefix.decode("utf-8", "surrogateescape") + "/" + name
    return block[156:157], _octal(block[124:136]), name


def _scan_plain(path: str, skipped: Counter[str]) -> Iterator[Member]:
    """Read ustar/GNU/v7 headers directly: ~10x faster than tarfile, which parses every
    field of every header in Python. Anything unusual raises _NotPlain."""
    with open(path, "rb") as f:
        pos = 0
        while True:
            f.seek(pos)
            block = f.read(512)
            if not block or block == _ZERO_BLOCK:
                return  # end of archive (tarfile also accepts a missing end marker)
            kind, size, name = _header(block)
            if kind in _REGULAR and not (kind == b"\0" and name.endswith("/")):
                yield Member(escape_member(name), pos + 512, size)
                pos += 512 + -(-size // 512) * 512
            elif kind in _NO_DATA or kind == b"\0":
                if kind in _SKIPPED_KINDS:
                    skipped[_SKIPPED_KINDS[kind]] += 1
                pos += 512  # tarfile skips no data after these either
            else:
                raise _NotPlain


def _scan_tarfile(path: str, skipped: Counter[str]) -> Iterator[Member]:
    try:
        tf = tarfile.open(path, mode="r:")  # noqa: SIM115 - closed by the `with` below
    except tarfile.ReadError as exc:
        raise SourceError(f"{path} is not an uncompressed tar file ({exc})",
                          "WebDataset shards are read by offset: decompress them first") from None
    with tf:
        while True:
            try:
                info = tf.next()
            except tarfile.TarError as exc:
                raise SourceError(f"shard {path} is corrupt: {exc}") from None
            if info is None:
                return
            # tarfile keeps every header it reads; we keep only (name, offset, size)
            tf.members = []  # type: ignore[attr-defined]
            if info.isreg() and not info.issparse():
                yield Member(escape_member(info.name), info.offset_data, info.size)
            elif info.issparse():
                skipped["sparse file"] += 1
            elif not info.isdir():
                skipped[_SKIPPED_KINDS.get(info.type, "special member")] += 1


def _places_schema() -> pa.Schema:
    """Where each sample's image lies, for ``read(i)``: the read side of the listing."""
    import pyarrow as pa

    return pa.schema([("shard", pa.int32()), ("offset", pa.int64()), ("size", pa.int64()),
                      ("ext", pa.int8())])  # ext: index into IMAGE_EXTS


def _samples(path: str, members: Iterable[Member], counts: Counter[str]) -> Iterator[
        tuple[str, dict[str, Member]]]:
    """The samples of one shard's members, in order: (``__key__``, its members by ext).
    Members outside any sample are counted as ``counts["ignored"]``."""
    group: dict[str, Member] = {}
    key: str | None = None
    for member in members:
        split = _split(member.name)
        if split is None:
            counts["ignored"] += 1
            continue
        member_key, ext = split
        if member_key != key:
            if key is not None:
                yield key, group
            key, group = member_key, {}
        if ext in group:
            raise SourceError(f"shard {path} holds {member.name} twice in one sample")
        group[ext] = member
    if key is not None:
        yield key, group


class _Stream:
    """Streams the shards' samples into two listings on disk, ``BATCH`` rows at a time (the
    writers regroup them into ``CHUNK``-row groups): the refs (key, source, member, label) and
    the places (shard, offset, size, ext). What stays in memory is a hash of every key (8
    bytes a sample, for the duplicate check) and counts."""

    def __init__(self, labels: bool) -> None:
        self.labels = labels
        folder = spill_folder()
        self.refs = ListingWriter(folder)
        try:
            self.places = ListingWriter(folder, _places_schema())
        except BaseException:
            self.refs.abandon()
            raise
        self.hashes: array[int] = array("q")  # hash of every sample's key, images or not
        self.counts: Counter[str] = Counter()  # "ignored" members, "without_image" samples
        self.skipped: Counter[str] = Counter()  # non-regular members, by kind
        self.exts: Counter[str] = Counter()
        self._rows: tuple[list[str], list[str], list[str], list[int | None], list[int],
                          list[int], list[int], list[int]] = ([], [], [], [], [], [], [], [])

    def shard(self, shard: int, path: str) -> None:
        scan = _members(path)
        keys, sources, names, labels, shards, offsets, sizes, exts = self._rows
        with open(path, "rb") as f:  # for cls members: a few bytes each
            for key, group in _samples(path, scan.members, self.counts):
                self.hashes.append(hash(key))
                label: int | None = None
                cls = group.get("cls")
                if cls is not None and self.labels:
                    f.seek(cls.offset)
                    label = _parse_cls(f.read(cls.size), cls.name, path)
                ext = next((e for e in IMAGE_EXTS if e in group), None)
                if ext is None:
                    self.counts["without_image"] += 1
                    continue
                member = group[ext]
                self.exts[ext] += 1
                keys.append(key)
                sources.append(path)
                names.append(member.name)
                labels.append(label)
                shards.append(shard)
                offsets.append(member.offset)
                sizes.append(member.size)
                exts.append(IMAGE_EXTS.index(ext))
                if len(keys) >= min(CHUNK, BATCH):
                    self.flush()
        self.skipped.update(scan.skipped)  # counted as the members were read

    def flush(self) -> None:
        import pyarrow as pa

        keys, sources, names, labels, shards, offsets, sizes, exts = self._rows
        if not keys:
            return
        self.refs.add(refs_table(keys, sources, names, labels if self.labels else None))
        self.places.add(pa.table({
            "shard": pa.array(shards, pa.int32()), "offset": pa.array(offsets, pa.int64()),
            "size": pa.array(sizes, pa.int64()), "ext": pa.array(exts, pa.int8()),
        }, schema=_places_schema()))
        for column in self._rows:
            column.clear()

    def finish(self) -> tuple[SpilledListing, SpilledListing]:
        self.flush()
        # should the second fail, abandon() removes both folders
        return self.refs.finish(), self.places.finish()

    def abandon(self) -> None:
        self.refs.abandon()
        self.places.abandon()


def _check_unique(shards: list[str], hashes: array[int]) -> None:
    """Each ``__key__`` once in the whole source, without a set of every key: equal hashes
    first (sorted, 8 bytes a sample), then the real keys of those few, found by reading the
    shards' headers again, so that the error names both shards."""
    import numpy as np

    if len(hashes) < 2:
        return
    ordered = np.frombuffer(hashes, dtype=np.int64)
    ordered.sort()  # in place, no copy: the order of the samples is not needed again
    twice = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    del ordered
    if twice.size == 0:
        return
    suspects = set(twice.tolist())
    first: dict[str, int] = {}
    counts: Counter[str] = Counter()
    for shard, path in enumerate(shards):
        for key, _ in _samples(path, _members(path).members, counts):
            if hash(key) not in suspects:
                continue
            if key in first:
                raise SourceError(f"sample key {key!r} occurs twice: in {shards[first[key]]} "
                                  f"and in {path}",
                                  "WebDataset keys (__key__) must be unique in a source")
            first[key] = shard
    # equal hashes of different keys (one in ~2^64 per pair): nothing is repeated


def _parse_cls(text: bytes, name: str, path: str) -> int:
    try:
        return int(text.decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError):
        raise SourceError(f"{name} in {path} is not an integer class label: {text[:20]!r}",
                          "give --no-labels to ignore cls members") from None


class WebDatasetSource(ImageSource):
    """The shards are indexed once, shard by shard, into two listings on disk
    (``sources.listing``): the refs, and where each image lies (shard, offset, size, ext).
    The source holds no list of its samples: memory is flat in their number, but for 8 bytes
    a sample while keys are checked for duplicates at open time."""

    kind = "webdataset"

    def __init__(self, spec: str, *, labels: bool = True) -> None:
        self.spec = spec
        paths = expand_shards(spec)
        compressed = [p for p in paths if p.lower().endswith(COMPRESSED_SUFFIXES)]
        if compressed:
            raise SourceError(f"{compressed[0]} is a compressed tar: pairmine reads WebDataset "
                              f"shards by offset, which needs uncompressed .tar files",
                              "decompress it (e.g. gunzip); an archive of an image folder: "
                              "extract it and give the folder")
        self.shards = [os.path.abspath(p) for p in paths]
        if not self.shards:
            raise no_images(spec, "the pattern names no shards")
        twice = [p for p, n in Counter(self.shards).items() if n > 1]
        if twice:
            raise SourceError(f"shard {twice[0]} is named more than once in {spec}")
        missing = [p for p in self.shards if not os.path.isfile(p)]
        if missing:
            raise SourceError(f"{len(missing)} of {len(self.shards)} shards do not exist, e.g. "
                              f"{', '.join(missing[:3])}", "check the path or brace pattern")
        stream = _Stream(labels)
        try:
            for i, path in enumerate(self.shards):
                stream.shard(i, path)
            self.listing, self._places = stream.finish()
        except BaseException:
            stream.abandon()
            raise
        _check_unique(self.shards, stream.hashes)
        del stream.hashes  # sorted now, and 8 bytes a sample
        self.without_image = stream.counts["without_image"]
        if not self.listing.num_rows:
            raise no_images(spec, f"{self.without_image} samples had no "
                            f"{'/'.join(IMAGE_EXTS)} member")
        self.labels = labels
        self.labelled = self.listing.labelled if labels else 0
        self.image_exts = dict(sorted(stream.exts.items()))
        # a shard rewritten after indexing must not be read by stale offsets
        self._shard_bytes = [os.path.getsize(p) for p in self.shards]
        self.ignored_members = stream.counts["ignored"]
        self.skipped = dict(sorted(stream.skipped.items()))
        self._handles: OrderedDict[int, IO[bytes]] = OrderedDict()
        self._pid: int | None = None
        log.info("webdataset %s: %d samples in %d shards (%d without an image)",
                 spec, len(self), len(self.shards), self.without_image)

    def __getstate__(self) -> dict[str, Any]:
        # file handles never travel: each process opens its own (see _handle); the listings
        # travel as their paths
        state = dict(self.__dict__)
        state.update(_handles=OrderedDict(), _pid=None)
        return state

    def __len__(self) -> int:
        return int(self.listing.num_rows)

    def _handle(self, shard: int) -> IO[bytes]:
        if self._pid != os.getpid():
            # a forked worker shares the parent's file offsets: seek+read would race
            self._handles = OrderedDict()
            self._pid = os.getpid()
        f = self._handles.get(shard)
        if f is not None:
            self._handles.move_to_end(shard)
            return f
        path = self.shards[shard]
        try:
            f = open(path, "rb")  # noqa: SIM115 - kept open across reads, closed by LRU
        except OSError as exc:
            raise SourceError(f"cannot open shard {path}: {exc.strerror or exc}") from None
        if os.fstat(f.fileno()).st_size != self._shard_bytes[shard]:
            f.close()
            raise SourceError(f"shard {path} changed since it was indexed",
                              "open the source again")
        self._handles[shard] = f
        if len(self._handles) > MAX_OPEN_SHARDS:
            self._handles.popitem(last=False)[1].close()
        return f

    def refs(self) -> pa.Table:
        """Every sample (O(N)): the embed stage reads :meth:`refs_listing` instead."""
        return self.listing.table()

    def refs_listing(self) -> SpilledListing:
        return self.listing

    def container_files(self) -> list[str]:
        return list(self.shards)

    def ignored(self) -> dict[str, int]:
        reasons = {"sample without a jpg/jpeg/png/webp member": self.without_image,
                   "member outside any sample": self.ignored_members}
        reasons.update({f"not a regular file member ({kind})": n
                        for kind, n in self.skipped.items()})
        return {reason: n for reason, n in sorted(reasons.items()) if n}

    def _member(self, index: int) -> str:
        return str(self.listing.value("member", index))  # for messages only: a group read

    def read(self, index: int) -> bytes:
        shard = int(self._places.value("shard", index))
        size = int(self._places.value("size", index))
        if size > self.max_image_bytes:  # refused from the index: never read into memory
            raise SourceError(f"member {self._member(index)} of shard {self.shards[shard]} is "
                              f"{size:,} bytes, over the {self.max_image_bytes:,}-byte cap",
                              "raise --max-image-bytes to read it")
        f = self._handle(shard)
        f.seek(int(self._places.value("offset", index)))
        data = f.read(size)
        if len(data) != size:
            raise SourceError(f"shard {self.shards[shard]} ends inside {self._member(index)}")
        return data

    def ext(self, index: int) -> str:
        return IMAGE_EXTS[int(self._places.value("ext", index))]

    def places(self, indices: Sequence[int]) -> pa.Table:
        import pyarrow as pa

        from pairmine.stores import PLACE_COLUMNS

        rows = self._places.take(list(indices)) if len(indices) else None
        offset, size = PLACE_COLUMNS
        if rows is None:
            return pa.table({offset: pa.array([], pa.int64()), size: pa.array([], pa.int64())})
        return pa.table({offset: rows.column("offset"), size: rows.column("size")})

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "shards": len(self.shards), "shard_paths": list(self.shards),
                "samples": len(self), "skipped_without_image": self.without_image,
                "ignored_members": self.ignored_members, "ignored": self.ignored(),
                "image_exts": dict(self.image_exts), "labels": self.labels,
                "labelled": self.labelled}


# what a ref reader keeps of the tars it read (least recently used dropped first): a compact
# index of each tar's image members, 24 bytes a member, so that an export reading images in
# random order (a pair's positive, a shuffled export) re-indexes a tar only beyond ~8M images
MAX_INDEXED_TARS = 1024
MAX_INDEXED_MEMBERS = 8 << 20


class _TarIndex(NamedTuple):
    """A tar's image members by a 64-bit hash of their name, sorted: where each one's data
    lies. A hash collision would hand back another member's bytes, which the export's sha256
    check against embed's record catches (one in ~2^64 per pair of names of a tar)."""

    hashes: np.ndarray  # int64, sorted
    offsets: np.ndarray  # int64
    sizes: np.ndarray  # int64

    def find(self, name: str) -> tuple[int, int] | None:
        import numpy as np

        h = _name_hash(name)
        i = int(np.searchsorted(self.hashes, h, side="right")) - 1  # the last, as tar reads
        if i < 0 or int(self.hashes[i]) != h:
            return None
        return int(self.offsets[i]), int(self.sizes[i])


def _name_hash(name: str) -> int:
    import hashlib

    digest = hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _tar_index(path: str) -> _TarIndex:
    import numpy as np

    hashes, offsets, sizes = array("q"), array("q"), array("q")  # 24 bytes a member
    for m in _members(path).members:
        split = _split(m.name)
        if split is not None and split[1] in IMAGE_EXTS:
            hashes.append(_name_hash(m.name))
            offsets.append(m.offset)
            sizes.append(m.size)
    keys = np.frombuffer(hashes, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    return _TarIndex(keys[order], np.frombuffer(offsets, dtype=np.int64)[order],
                     np.frombuffer(sizes, dtype=np.int64)[order])


def tar_ref_reader() -> RefReader:
    """Reads (tar path, member name) refs of image members; indexes a tar on first use and
    keeps the indexes of the tars used last, up to ``MAX_INDEXED_TARS`` tars and
    ``MAX_INDEXED_MEMBERS`` members (an export may touch thousands of tars). Safe to call
    from several threads (the export's fetcher does)."""
    indexes: OrderedDict[str, _TarIndex] = OrderedDict()
    held = [0]  # members in `indexes`
    lock = threading.Lock()

    def indexed(source: str) -> _TarIndex:
        with lock:
            index = indexes.get(source)
            if index is not None:
                indexes.move_to_end(source)
                return index
        if not os.path.isfile(source):
            raise SourceError(f"shard {source} no longer exists",
                              "was the source moved or deleted after embedding?")
        # read outside the lock: two threads may index one tar twice, never wait on each other
        index = _tar_index(source)
        with lock:
            if source not in indexes:
                indexes[source] = index
                held[0] += len(index.hashes)
            indexes.move_to_end(source)
            while len(indexes) > 1 and (len(indexes) > MAX_INDEXED_TARS
                                        or held[0] > MAX_INDEXED_MEMBERS):
                held[0] -= len(indexes.popitem(last=False)[1].hashes)
        return index

    def read(source: str, member: str | None, /, *,
             place: tuple[int, int] | None = None) -> tuple[bytes, str]:
        if member is None:
            raise SourceError(f"a webdataset ref into {source} names no member")
        split = _split(member)
        ext = split[1] if split else "bin"
        if place is not None:
            data = _read_at(source, member, *place)
            if data is not None:
                return data, ext
        index = indexed(source)
        place = index.find(member)
        if place is None and escape_member(member) != member:
            place = index.find(escape_member(member))  # a store from before names were escaped
        if place is None:
            raise SourceError(f"shard {source} has no member {member}",
                              "was the shard rewritten after embedding?")
        offset, size = place
        try:
            with open(source, "rb") as f:
                f.seek(offset)
                data = f.read(size)
        except FileNotFoundError:
            raise SourceError(f"shard {source} no longer exists") from None
        if len(data) != size:
            raise SourceError(f"shard {source} ends inside {member}")
        return data, ext

    return read


def _read_at(source: str, member: str, offset: int, size: int) -> bytes | None:
    """The bytes of ``member`` read at its recorded place, or None when the tar header just
    before them does not describe exactly that member (the shard was rewritten, or its name
    is too long for the header's name field): the caller then looks it up by name."""
    if offset < 512 or size < 0:
        return None
    try:
        with open(source, "rb") as f:
            f.seek(offset - 512)
            block = f.read(512 + size)
    except FileNotFoundError:
        raise SourceError(f"shard {source} no longer exists",
                          "was the source moved or deleted after embedding?") from None
    if len(block) != 512 + size:
        return None
    try:
        kind, recorded_size, name = _header(block[:512])
    except _NotPlain:
        return None
    if kind not in _REGULAR or recorded_size != size \
            or member not in (escape_member(name), name):
        return None
    return block[512:]


register_source(SourceKind(
    name="webdataset",
    detect=_detect,
    open=lambda spec, labels: WebDatasetSource(spec, labels=labels),
    help="local WebDataset .tar shards: a path, a brace pattern, or paths joined by ::",
    ref_reader=tar_ref_reader,
))
