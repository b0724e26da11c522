"""``folder``: an image folder, read recursively; top-level sub-folders are the classes.

Same classes and labels as torchvision's ImageFolder (``find_classes``: the top-level entries
that are folders, symlinks followed, sorted by name; label = index; ``make_dataset`` walks each
class with ``followlinks=True``, so a symlinked alias of a class folder is a class of its own
and lists that folder's images again), but any depth below them and files in the root too
(label null). Two deliberate deviations, both reported: hidden entries (names starting with
``.``, such as ``.ipynb_checkpoints``) are never classes or images, and a symlink back up the
tree is not entered (ImageFolder would recurse until the path gets too long).

Every entry considered is an image or counted in ``ignored()`` with its reason.
"""

from __future__ import annotations

import errno
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import SourceError
from pairmine.sources.base import (
    IMAGE_EXTS,
    ImageSource,
    SourceKind,
    no_images,
    plain_file_reader,
    refs_table,
    register_source,
)
from pairmine.sources.files import file_kind, read_file

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

# reasons an entry is not an image (the keys of FolderSource.ignored())
HIDDEN = "hidden"
NOT_IMAGE_EXT = "not an image extension"
DANGLING = "dangling symlink"
LOOP = "symlink loop"

FileId = tuple[int, int]  # (st_dev, st_ino): one file, whatever path reached it


@dataclass
class _Walk:
    images: list[str] = field(default_factory=list)  # relative POSIX paths, unsorted
    ignored: Counter[str] = field(default_factory=Counter)
    reached: set[FileId] = field(default_factory=set)  # the files listed so far
    aliased: int = 0  # images whose file was listed already, through another path
    hidden_tops: list[str] = field(default_factory=list)  # top-level hidden folders
    undecodable: list[str] = field(default_factory=list)  # ascii() of non-UTF-8 names


def _broken_link_reason(exc: OSError) -> str:
    return LOOP if exc.errno == errno.ELOOP else DANGLING if exc.errno in (
        errno.ENOENT, errno.ENOTDIR) else f"unreadable ({exc.strerror or exc})"


def _link_target(entry: os.DirEntry[str]) -> FileId | str:
    """Identity of the regular file a (non-folder) symlink leads to, else why it is none."""
    try:
        st = entry.stat()  # follows the link (cached by is_dir() already)
    except OSError as exc:
        return _broken_link_reason(exc)
    if not entry.is_file():
        return f"not a regular file ({file_kind(st.st_mode)})"
    return (st.st_dev, st.st_ino)


def _special(entry: os.DirEntry[str]) -> str:
    """Why an entry that is neither a folder nor a regular file nor a link is no image."""
    try:
        kind = file_kind(entry.stat(follow_symlinks=False).st_mode)
    except OSError:
        kind = "special file"
    return f"not a regular file ({kind})"  # a FIFO, socket or device: never opened


def _walk(root: str) -> _Walk:
    """Everything under ``root``: its image files, and every other entry counted by reason.
    Follows symlinked folders (as ImageFolder does) but never into one of its own ancestors."""
    found = _Walk()
    root_st = os.stat(root)
    # (relative dir, absolute dir, its device, ids of it and its ancestors, hidden?)
    stack: list[tuple[str, str, int, frozenset[FileId], bool]] = [
        ("", root, root_st.st_dev, frozenset({(root_st.st_dev, root_st.st_ino)}), False)]
    while stack:
        rel_dir, abs_dir, dir_dev, ancestors, hidden = stack.pop()
        try:
            entries = list(os.scandir(abs_dir))
        except OSError as exc:
            raise SourceError(f"cannot list folder {abs_dir}: {exc.strerror or exc}",
                              "make it readable, or move it out of the source") from None
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            hidden_here = hidden or entry.name.startswith(".")
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError as exc:  # a link loop (ELOOP) or a link into an unreadable place
                found.ignored[HIDDEN if hidden_here else _broken_link_reason(exc)] += 1
                continue
            if is_dir:
                st = entry.stat()
                if (st.st_dev, st.st_ino) in ancestors:  # a link back up the tree
                    found.ignored[HIDDEN if hidden_here else LOOP] += 1
                    continue
                if hidden_here and not hidden and not rel_dir:
                    found.hidden_tops.append(entry.name)
                stack.append((rel, entry.path, st.st_dev,
                              ancestors | {(st.st_dev, st.st_ino)}, hidden_here))
                continue
            if hidden_here:  # .DS_Store, ._x.jpg (AppleDouble), files of hidden folders
                found.ignored[HIDDEN] += 1
                continue
            ident: FileId | str
            if entry.is_symlink():
                ident = _link_target(entry)
            elif entry.is_file(follow_symlinks=False):
                # no system call: a plain entry's device is its folder's, its inode is listed
                ident = (dir_dev, entry.inode())
            else:
                ident = _special(entry)
            if isinstance(ident, str):
                found.ignored[ident] += 1
                continue
            dot = entry.name.rfind(".")  # os.path.splitext's extension, ~3x cheaper
            if dot <= 0 or entry.name[dot + 1:].lower() not in IMAGE_EXTS:
                found.ignored[NOT_IMAGE_EXT] += 1
                continue
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:  # bytes that are not UTF-8: no valid string key
                found.undecodable.append(ascii(rel))
                continue
            found.images.append(rel)
            if ident in found.reached:
                found.aliased += 1
            else:
                found.reached.add(ident)
    if found.undecodable:
        raise SourceError(f"{len(found.undecodable)} image file names under {root} are not "
                          f"valid UTF-8, e.g. {', '.join(sorted(found.undecodable)[:3])}",
                          "rename them (keys must be text), or list the others in a file list")
    return found


class FolderSource(ImageSource):
    kind = "folder"

    def __init__(self, root: str | Path, *, labels: bool = True) -> None:
        self.root = os.path.abspath(root)
        if not os.path.isdir(self.root):
            raise SourceError(f"{self.root} is not a folder")
        found = _walk(self.root)
        keys = found.images
        ignored = sum(found.ignored.values())
        if not keys:
            raise no_images(self.root, f"images are files ending in "
                            f"{', '.join('.' + e for e in sorted(IMAGE_EXTS))}; "
                            f"{ignored} other entries were found: {_reasons(found.ignored)}")
        keys.sort()  # plain code-point order of the relative POSIX path: stable everywhere
        self.keys = keys
        self._ignored = dict(sorted(found.ignored.items()))
        # ImageFolder lists a file reached through two paths (a symlinked alias of a folder,
        # a hard link) twice; so do we, each path its own image, but never silently
        self.aliased = found.aliased
        self.hidden_folders = sorted(found.hidden_tops)
        self.labels = labels
        # a top-level folder is a class when it holds at least one image
        tops = sorted({k.split("/", 1)[0] for k in keys if "/" in k})
        self.classes = tops
        index = {name: i for i, name in enumerate(tops)}
        self._labels: list[int | None] | None = (
            [index[k.split("/", 1)[0]] if "/" in k else None for k in keys] if labels else None)
        self._refs: pa.Table | None = None
        log.info("folder %s: %d images, %d classes, %d entries ignored%s",
                 self.root, len(keys), len(tops), ignored,
                 f" ({_reasons(found.ignored)})" if ignored else "")
        if self.aliased:
            log.warning("folder %s: %d images are reached through more than one path "
                        "(symlinked folders or files, hard links): each path is listed as "
                        "its own image, as torchvision's ImageFolder lists them", self.root,
                        self.aliased)
        if self.hidden_folders and labels:
            log.warning("folder %s: hidden folders %s are not classes (torchvision's "
                        "ImageFolder would make them classes and shift the labels after "
                        "them); their files are ignored", self.root,
                        ", ".join(self.hidden_folders))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_refs"] = None  # rebuilt on demand; workers only read()
        return state

    def __len__(self) -> int:
        return len(self.keys)

    def _path(self, index: int) -> str:
        return os.path.join(self.root, *self.keys[index].split("/"))

    def refs(self) -> pa.Table:
        if self._refs is None:
            self._refs = refs_table(self.keys, [self._path(i) for i in range(len(self.keys))],
                                    None, self._labels)
        return self._refs

    def read(self, index: int) -> bytes:
        return read_file(self._path(index), max_bytes=self.max_image_bytes,
                         root=self.confine_to)

    def ignored(self) -> dict[str, int]:
        return dict(self._ignored)

    def ext(self, index: int) -> str:
        return os.path.splitext(self.keys[index])[1][1:].lower()

    def describe(self) -> dict[str, Any]:
        exts = Counter(os.path.splitext(k)[1][1:].lower() for k in self.keys)
        return {"kind": self.kind, "root": self.root, "images": len(self.keys),
                "ignored_files": sum(self._ignored.values()), "ignored": dict(self._ignored),
                "aliased_images": self.aliased, "hidden_folders": list(self.hidden_folders),
                "labels": self.labels,
                "classes": len(self.classes) if self.labels else None,
                "unlabelled_root_files": (sum("/" not in k for k in self.keys)
                                          if self.labels else None),
                "extensions": dict(sorted(exts.items()))}

    def class_names(self) -> list[str] | None:
        return list(self.classes) if self.labels and self.classes else None


def _reasons(counts: Counter[str] | dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))


register_source(SourceKind(
    name="folder",
    detect=lambda spec: os.path.isdir(spec),
    open=lambda spec, labels: FolderSource(spec, labels=labels),
    help="an image folder, recursive; top-level sub-folders are the classes",
    ref_reader=plain_file_reader,
))
