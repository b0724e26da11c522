"""Atomic writes: a temporary file beside the target, fsync, rename over it.

A reader never sees half a file under a final name: a shard exists complete or not at all.
Temporary names follow one pattern (``.NAME.XXXXXXXX.tmp``, from ``mkstemp``) so that a run
holding a store's lock can recognise and remove the ones a killed run left behind. Every
``OSError`` of a write (read-only file system, no permission, disk full, a short write) becomes
one :class:`StoreError` that names the file and what to do.

Test-only fault injection: with ``PAIRMINE_FAULT=after:N`` in the environment the process ends
with ``os._exit(137)`` (as abruptly as ``kill -9``: no clean-up, no ``finally``) right after
the Nth step of a store writer, a step being an atomic write landing, the work folder renamed
aside, or one file removed by the final clean-up (:func:`fault_point`). The crash tests and
``benchmarks/reliability.py`` kill runs at every such point and check that they resume. With
``PAIRMINE_FAULT=stop-after-lock`` a writer stops itself (``SIGSTOP``) as soon as it holds the
store's lock, before it reads or writes anything else in OUT (:func:`stop_point`): the
one-writer tests start a second writer then, deterministically. The variable is read once, at
import; unset, a step costs one comparison.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import StoreError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

log = logging.getLogger(__name__)

# mkstemp's names: prefix ".NAME.", eight characters from [a-z0-9_], suffix ".tmp"
TEMPORARY_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()

def _fault_limit(spec: str) -> int | None:
    """``after:N`` (N >= 1) → N; unset → None; anything else is ignored with a warning."""
    if not spec or spec == _STOP_AFTER_LOCK:
        return None
    kind, _, count = spec.partition(":")
    if kind == "after" and count.isdigit() and int(count) >= 1:
        return int(count)
    log.warning("ignoring PAIRMINE_FAULT=%r (expected after:N, N >= 1)", spec)
    return None


_STOP_AFTER_LOCK = "stop-after-lock"
_FAULT = os.environ.get("PAIRMINE_FAULT", "")
_FAULT_AFTER = _fault_limit(_FAULT)
_fault_steps = 0


def stop_point() -> None:
    """A writer has just taken its store's lock; under ``PAIRMINE_FAULT=stop-after-lock`` it
    stops here until sent ``SIGCONT`` (tests only, see the module doc)."""
    if _FAULT == _STOP_AFTER_LOCK:
        import signal

        os.kill(os.getpid(), signal.SIGSTOP)


def fault_point() -> None:
    """One step of a store writer; under ``PAIRMINE_FAULT=after:N`` the Nth one kills the
    process (tests only, see the module doc)."""
    global _fault_steps
    if _FAULT_AFTER is None:
        return
    _fault_steps += 1
    if _fault_steps >= _FAULT_AFTER:
        os._exit(137)


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


def write_failure(path: Path, exc: OSError) -> StoreError:
    """The one error for a write that failed: what happened to which file, and what to do."""
    code = exc.errno
    if code in _NO_SPACE or (code is None and "requested and" in str(exc)):
        # numpy reports a short write as "N requested and M written", without an errno
        return StoreError(f"cannot write {path}: the disk is full",
                          "free space (or choose another output) and run the same command "
                          "again: it resumes from the finished shards")
    if code in _NOT_WRITABLE:
        reason = ("read-only file system" if code == errno.EROFS else "permission denied")
        return StoreError(f"cannot write {path}: {reason}",
                          "choose an output directory you can write to")
    return StoreError(f"cannot write {path}: {exc.strerror or exc}",
                      "check the output directory and run the same command again")


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into :func:`write_failure`."""
    try:
        yield
    except OSError as exc:
        raise write_failure(path, exc) from None


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success."""
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with writing(target):
            yield tmp_path
            with open(tmp_path, "rb+") as fh:  # the data reaches the disk before the name does
                os.fsync(fh.fileno())
            os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes files owner-only
            os.replace(tmp_path, target)
        fault_point()
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_writable(target: Path) -> None:
    """Fail now rather than after the work if ``target`` cannot be written: a temporary file
    is made and removed in its folder, or in the nearest existing folder above it (nothing is
    created that a failed run would leave behind)."""
    folder = Path(os.path.abspath(target)).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    with writing(target):
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{folder} is not a directory", str(folder))
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(tmp)


def write_bytes_atomic(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(target: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    write_bytes_atomic(target, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_json"):  # the typed manifests and their records
        return obj.to_json()
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_npy_atomic(target: Path, array: np.ndarray) -> None:
    import numpy as np

    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def write_parquet_atomic(target: Path, table: pa.Table) -> None:
    import pyarrow.parquet as pq

    with atomic_path(target) as tmp:
        # fixed writer settings so the same table always gives the same bytes
        pq.write_table(table, tmp, compression="zstd", write_statistics=True,
                       store_schema=True)


def append_line(target: Path, line: str) -> None:
    """Append one line to a log file (not atomic: logs hold no data)."""
    with writing(target), open(target, "a", encoding="utf-8") as fh:
        fh.write(line.rstrip("\n") + "\n")


def remove_temporaries(root: Path) -> list[Path]:
    """Delete the temporary files of atomic writes under ``root`` (those a killed run left).
    Only for a run that holds the store's lock: nobody else can be writing them."""
    removed = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if TEMPORARY_NAME.match(name):
                path = Path(dirpath) / name
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
