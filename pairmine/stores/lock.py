"""One writer per store: an exclusive advisory lock on a file inside the output directory.

``flock`` on an open file is released by the kernel when the process dies, so a ``kill -9``
never leaves a stale lock: the file may stay behind, the lock does not. The holder writes its
pid, host and start time into the file so that a refused writer, or a reader that finds the
store incomplete (:func:`current_writer`), can say who holds it. Readers of complete stores
take no lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from pathlib import Path

from pairmine.errors import StoreError
from pairmine.stores.atomic import writing

log = logging.getLogger(__name__)

LOCK_FILE = ".pairmine.lock"


class StoreLock:
    """The exclusive lock on ``out``; :meth:`acquire` takes it or raises a StoreError."""

    def __init__(self, out: Path, fd: int) -> None:
        self.out = out
        self.path = out / LOCK_FILE
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, out: Path) -> StoreLock:
        path = out / LOCK_FILE
        for _ in range(5):  # the file may be unlinked by a finishing holder between open and lock
            with writing(path):
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                _lock_exclusive(fd)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise StoreError(f"{out} is being written by another pairmine process "
                                 f"({holder})", "wait for it to finish, or stop it; one "
                                 "writer per store") from None
            except OSError as exc:  # a file system without flock
                os.close(fd)
                raise StoreError(f"cannot lock {path}: {exc.strerror or exc}",
                                 "write the store on a file system that supports flock") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # we locked a file that its last holder unlinked: try the new one
                os.close(fd)
                continue
            with writing(path):
                os.ftruncate(fd, 0)
                started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
                os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n"
                         .encode())
            return cls(out, fd)
        raise StoreError(f"cannot lock {path}: it keeps being replaced",
                         "is another program deleting files in the output?")

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Unlink the lock file, then unlock: a writer that opened the old file sees that it
        was unlinked and opens the new one."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:  # e.g. the directory became read-only: the lock still goes
            log.warning("could not remove %s: %s", self.path, exc)
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None


def _lock_exclusive(fd: int, tries: int = 10) -> None:
    """``flock(LOCK_EX | LOCK_NB)``, tried a few times over ~0.5 s: a reader asking whether
    the store is being written (:func:`current_writer`) holds a shared lock for an instant,
    which must not refuse a writer. Raises BlockingIOError if another writer keeps it."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == tries - 1:
                raise
            time.sleep(0.05)


def current_writer(out: Path) -> str | None:
    """Who is writing ``out`` now ("pid N on HOST, started TIME"), or None when nobody holds
    its lock. A non-blocking shared ``flock`` taken and dropped at once: it works where the
    writer's lock works (on NFS too) and changes nothing."""
    try:
        fd = os.open(out / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # no lock file: nobody has written here since the last run finished
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        except OSError:  # a file system without flock: cannot tell
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_holder(fd: int) -> str:
    # the holder writes its pid (one write) just after taking the lock: a writer refused in
    # that instant waits a moment for it rather than saying "pid unknown"
    for _ in range(20):
        try:
            text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        except OSError:
            text = ""
        if text:
            return text
        time.sleep(0.05)
    return text or "pid unknown"
