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
from array import array
from collections import Counter
from collections.abc import Callable
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
from pairmine.sources.listing import CHUNK, ListingWriter, SpilledListing, relabel, spill_folder

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
    images: int = 0
    ignored: Counter[str] = field(default_factory=Counter)
    file_ids: array[int] = field(default_factory=lambda: array("q"))  # hash of each FileId
    hidden_tops: list[str] = field(default_factory=list)  # top-level hidden folders
    undecodable: list[str] = field(default_factory=list)  # ascii() of non-UTF-8 names
    extensions: Counter[str] = field(default_factory=Counter)
    root_files: int = 0  # images directly in the root (no class)
    tops: list[str] = field(default_factory=list)  # top folders holding images, walk order

    @property
    def aliased(self) -> int:
        """Images whose file was listed already, through another path."""
        import numpy as np

        ids = np.frombuffer(self.file_ids, dtype=np.int64) if self.images else np.zeros(0)
        return int(ids.shape[0] - np.unique(ids).shape[0])


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


def _walk(root: str, sink: Callable[[str, int | None], None]) -> _Walk:
    """Everything under ``root``: its image files handed to ``sink(relative path, index of
    its top folder in walk order)`` in code-point order of their relative paths, and every
    other entry counted by reason. Follows symlinked folders (as ImageFolder does) but never
    into one of its own ancestors.

    The walk is depth first, each folder's entries sorted by name with a ``/`` after folder
    names: exactly the order of the sorted relative paths, so nothing needs all paths at
    once (memory: the folders on the path being walked, 8 bytes an image for aliases)."""
    found = _Walk()
    root_st = os.stat(root)
    # per folder being walked: (relative dir, its device, ids of it and its ancestors,
    # hidden?, its entries still to visit, sorted, reversed)
    stack: list[tuple[str, int, frozenset[FileId], bool, list[tuple[str, Any, bool]]]] = [
        ("", root_st.st_dev, frozenset({(root_st.st_dev, root_st.st_ino)}), False,
         _entries(root, found, False))]
    top_index: dict[str, int] = {}
    while stack:
        rel_dir, dir_dev, ancestors, hidden, todo = stack[-1]
        if not todo:
            stack.pop()
            continue
        _, entry, is_dir = todo.pop()
        rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
        hidden_here = hidden or entry.name.startswith(".")
        if is_dir:
            st = entry.stat()
            if (st.st_dev, st.st_ino) in ancestors:  # a link back up the tree
                found.ignored[HIDDEN if hidden_here else LOOP] += 1
                continue
            if hidden_here and not hidden and not rel_dir:
                found.hidden_tops.append(entry.name)
            stack.append((rel, st.st_dev, ancestors | {(st.st_dev, st.st_ino)}, hidden_here,
                          _entries(entry.path, found, hidden_here)))
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
        found.images += 1
        found.file_ids.append(hash(ident))
        found.extensions[entry.name[dot + 1:].lower()] += 1
        if "/" in rel:
            top = rel.split("/", 1)[0]
            if top not in top_index:
                top_index[top] = len(found.tops)
                found.tops.append(top)
            sink(rel, top_index[top])
        else:
            found.root_files += 1
            sink(rel, None)
    if found.undecodable:
        raise SourceError(f"{len(found.undecodable)} image file names under {root} are not "
                          f"valid UTF-8, e.g. {', '.join(sorted(found.undecodable)[:3])}",
                          "rename them (keys must be text), or list the others in a file list")
    return found


def _entries(folder: str, found: _Walk, hidden: bool) -> list[tuple[str, Any, bool]]:
    """A folder's entries as (sort key, entry, is a folder), in reverse walk order (popped
    from the end). A folder's key ends in ``/``, so the walk meets paths in sorted order.
    Entries that cannot be told folder or not are counted here."""
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        raise SourceError(f"cannot list folder {folder}: {exc.strerror or exc}",
                          "make it readable, or move it out of the source") from None
    keyed: list[tuple[str, Any, bool]] = []
    for entry in entries:
        try:
            is_dir = entry.is_dir()  # follows symlinks
        except OSError as exc:  # a link loop (ELOOP) or a link into an unreadable place
            hidden_here = hidden or entry.name.startswith(".")
            found.ignored[HIDDEN if hidden_here else _broken_link_reason(exc)] += 1
            continue
        keyed.append((entry.name + "/" if is_dir else entry.name, entry, is_dir))
    keyed.sort(key=lambda item: item[0], reverse=True)
    return keyed


class FolderSource(ImageSource):
    """The folder is walked once, in sorted order, into a listing on disk
    (``sources.listing``): the source holds no list of its images."""

    kind = "folder"

    def __init__(self, root: str | Path, *, labels: bool = True) -> None:
        self.root = os.path.abspath(root)
        if not os.path.isdir(self.root):
            raise SourceError(f"{self.root} is not a folder")
        self.labels = labels
        self.listing, found = self._stream()
        ignored = sum(found.ignored.values())
        if not found.images:
            raise no_images(self.root, f"images are files ending in "
                            f"{', '.join('.' + e for e in sorted(IMAGE_EXTS))}; "
                            f"{ignored} other entries were found: {_reasons(found.ignored)}")
        self._ignored = dict(sorted(found.ignored.items()))
        # ImageFolder lists a file reached through two paths (a symlinked alias of a folder,
        # a hard link) twice; so do we, each path its own image, but never silently
        self.aliased = found.aliased
        self.hidden_folders = sorted(found.hidden_tops)
        # a top-level folder is a class when it holds at least one image
        self.classes = sorted(found.tops)
        self._extensions = dict(sorted(found.extensions.items()))
        self._root_files = found.root_files
        log.info("folder %s: %d images, %d classes, %d entries ignored%s",
                 self.root, found.images, len(self.classes), ignored,
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

    def _stream(self) -> tuple[SpilledListing, _Walk]:
        """Walk into a listing. Labels are the top folders' ranks by name; the walk meets
        them in path order ("a.b/" before "a/"), so where the two differ the labels are
        renumbered in a second pass over the listing."""
        writer = ListingWriter(spill_folder())
        keys: list[str] = []
        tops: list[int | None] = []

        def sink(rel: str, top: int | None) -> None:
            keys.append(rel)
            tops.append(top)
            if len(keys) == CHUNK:
                flush()

        def flush() -> None:
            paths = [os.path.join(self.root, *k.split("/")) for k in keys]
            writer.add(refs_table(keys, paths, None, tops if self.labels else None))
            keys.clear()
            tops.clear()

        try:
            found = _walk(self.root, sink)
            if keys:
                flush()
            listing = writer.finish()
        except BaseException:
            writer.abandon()
            raise
        rank = {name: i for i, name in enumerate(sorted(found.tops))}
        renumber = [rank[name] for name in found.tops]
        if self.labels and renumber != list(range(len(renumber))):
            listing = relabel(listing, renumber)
        return listing, found

    def __len__(self) -> int:
        return self.listing.num_rows

    def _path(self, index: int) -> str:
        return str(self.listing.value("source", index))

    def refs(self) -> pa.Table:
        """Every image (O(N)): the embed stage reads :meth:`refs_listing` instead."""
        return self.listing.table()

    def refs_listing(self) -> SpilledListing:
        return self.listing

    def read(self, index: int) -> bytes:
        return read_file(self._path(index), max_bytes=self.max_image_bytes,
                         root=self.confine_to)

    def ignored(self) -> dict[str, int]:
        return dict(self._ignored)

    def ext(self, index: int) -> str:
        key = str(self.listing.value("key", index))
        return os.path.splitext(key)[1][1:].lower()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "root": self.root, "images": self.listing.num_rows,
                "ignored_files": sum(self._ignored.values()), "ignored": dict(self._ignored),
                "aliased_images": self.aliased, "hidden_folders": list(self.hidden_folders),
                "labels": self.labels,
                "classes": len(self.classes) if self.labels else None,
                "unlabelled_root_files": self._root_files if self.labels else None,
                "extensions": dict(self._extensions)}

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
