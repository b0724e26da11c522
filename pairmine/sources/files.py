"""Reading one image file the safe way: regular files only, size-capped, optionally confined.

A file list (or a folder's symlinks) may name anything: ``/dev/zero`` (endless),
``/dev/urandom``, a FIFO (an ordinary ``open`` blocks until a writer appears), a directory, a
socket, a file of gigabytes, or a path far outside the data. Every image file pairmine reads
goes through :func:`read_file`, which refuses each of those with a one-line reason (the embed
stage records it in ``errors.parquet``) and never reads more than the cap + 1 bytes.
"""

from __future__ import annotations

import os
import stat

from pairmine.errors import SourceError

# Why 256 MiB: the largest ordinary photos are tens of MB (a 100-megapixel camera JPEG is
# ~30-60 MB), and an uncompressed 8-bit RGB TIFF/BMP/PPM at the default pixel limit
# (89.5 M pixels, pairmine.images.DEFAULT_MAX_IMAGE_PIXELS) is 256 MiB. Beyond that a file is
# almost surely not one image; and each DataLoader worker holds one file's bytes at a time,
# so the cap also bounds what 16 workers can hold (16 x 256 MiB).
DEFAULT_MAX_IMAGE_BYTES = 256 * 1024 * 1024

# O_NONBLOCK: opening a FIFO must not wait for a writer. O_NOCTTY: opening a terminal device
# must not make it our controlling terminal. Both are no-ops for regular files.
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
               | getattr(os, "O_CLOEXEC", 0))

_FIRST_READ_SLACK = 1  # one byte past the size fstat gave: tells a file that grew
_LATER_READ = 1 << 20


class ImageFileMissing(SourceError):
    """An image file (or its symlink's target) that does not exist. Export, which reads files
    embedded earlier, words it as one that has vanished since."""


def file_kind(mode: int) -> str:
    """What a stat mode is, in words: ``regular file``, ``directory``, ``FIFO``..."""
    for test, name in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISLNK, "symlink")):
        if test(mode):
            return name
    return "special file"


def real_root(root: str | os.PathLike[str]) -> str:
    """``root`` as the confinement check compares it: absolute, symlinks resolved."""
    return os.path.realpath(root)


def is_inside(real_path: str, root: str) -> bool:
    """Whether an already resolved path lies in (or is) the resolved folder ``root``."""
    return real_path == root or real_path.startswith(root.rstrip(os.sep) + os.sep)


def check_inside(path: str, root: str) -> None:
    """Raise unless ``path``, after every symlink, lies inside ``root`` (a real_root)."""
    real = os.path.realpath(path)
    if not is_inside(real, root):
        raise SourceError(f"image file {path} resolves to {real}, outside --root {root}")


def _refuse_missing(path: str, exc: OSError) -> SourceError:
    """The error for a path whose stat failed: missing, a dangling link, a loop, or other."""
    import errno

    if exc.errno == errno.ELOOP:
        return SourceError(f"image file {path} is a symlink loop")
    if isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOTDIR:
        try:
            target = os.readlink(path)
        except OSError:
            return ImageFileMissing(f"image file {path} does not exist")
        return ImageFileMissing(f"image file {path} is a dangling symlink (to {target})")
    return SourceError(f"cannot read image file {path}: {exc.strerror or exc}")


def _check_regular(path: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"image file {path} is not a regular file ({file_kind(st.st_mode)})")


def _opened_path(fd: int, path: str) -> str:
    """The resolved path of what ``fd`` is open on: the kernel's answer where it gives one
    (Linux), so a symlink swapped between the check and the open is still caught."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)


def read_file(path: str, *, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
              root: str | None = None) -> bytes:
    """The bytes of one image file, which must be a regular file of at most ``max_bytes``
    (and, with ``root`` — a :func:`real_root` — lie inside it after symlinks). Anything else
    is a one-line SourceError; a path that does not exist is an :class:`ImageFileMissing`."""
    if root is not None:
        check_inside(path, root)  # before opening: never even open what lies outside
    try:
        # stat first: refuse devices and FIFOs without opening them (opening some devices
        # has effects, e.g. a tape rewinds)
        _check_regular(path, os.stat(path))
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise _refuse_missing(path, exc) from None
    try:
        st = os.fstat(fd)  # of what was opened: no window between the check and the open
        _check_regular(path, st)
        if root is not None and not is_inside(_opened_path(fd, path), root):
            raise SourceError(f"image file {path} resolves outside --root {root}")
        if st.st_size > max_bytes:
            raise SourceError(f"image file {path} is {st.st_size:,} bytes, over the "
                              f"{max_bytes:,}-byte cap", "raise --max-image-bytes to read it")
        data = _read_at_most(fd, max_bytes + 1, first=st.st_size + _FIRST_READ_SLACK)
    except OSError as exc:
        raise SourceError(f"cannot read image file {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise SourceError(f"image file {path} grew past the {max_bytes:,}-byte cap while "
                          f"being read", "raise --max-image-bytes to read it")
    return data


def read_head(path: str, n: int = 16) -> bytes:
    """The first ``n`` bytes of a regular file; empty for anything else (never blocks)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return b""
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return b""
    try:
        return os.read(fd, n) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    except OSError:
        return b""
    finally:
        os.close(fd)


def _read_at_most(fd: int, limit: int, *, first: int) -> bytes:
    """Up to ``limit`` bytes from ``fd``. The first read asks for ``first`` bytes (the file's
    size + 1: one call for an ordinary file), later ones for 1 MiB: never a buffer of the
    whole cap for a small file."""
    chunks: list[bytes] = []
    total = 0
    want = min(max(first, 1), limit)
    while total < limit:
        chunk = os.read(fd, min(want, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        want = _LATER_READ
    return b"".join(chunks)
