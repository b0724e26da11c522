"""``folder``: an image folder, read recursively; top-level sub-folders are the classes.

Same labels as torchvision's ImageFolder (classes = top-level sub-folders sorted by name,
label = index), but any depth below them and files in the root too (label null).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import SourceError
from pairmine.sources.base import (
    IMAGE_EXTS,
    ImageSource,
    SourceKind,
    no_images,
    plain_file_reader,
    read_file,
    refs_table,
    register_source,
)

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)


def _walk(root: str) -> tuple[list[str], int]:
    """Relative POSIX paths of the image files under ``root`` (unsorted), and how many other
    files there were. Follows symlinked folders (as ImageFolder does) but never into a loop."""
    images: list[str] = []
    ignored = 0
    seen: set[tuple[int, int]] = set()
    undecodable: list[str] = []
    stack = [("", root)]
    while stack:
        rel_dir, abs_dir = stack.pop()
        st = os.stat(abs_dir)
        if (st.st_dev, st.st_ino) in seen:  # a symlink back up the tree
            continue
        seen.add((st.st_dev, st.st_ino))
        try:
            # sorted: when a folder is reachable twice (links), which path wins must not
            # depend on the order the file system lists entries in
            entries = sorted(os.scandir(abs_dir), key=lambda e: e.name)
        except OSError as exc:
            raise SourceError(f"cannot list folder {abs_dir}: {exc.strerror or exc}") from None
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                is_dir = entry.is_dir()  # follows symlinks
                is_file = not is_dir and entry.is_file()
            except OSError:
                is_dir = is_file = False  # a dangling or unreadable link: nothing to read
            if is_dir:
                stack.append((rel, entry.path))
            elif not is_file:
                continue
            elif os.path.splitext(entry.name)[1][1:].lower() in IMAGE_EXTS:
                try:
                    rel.encode("utf-8")
                except UnicodeEncodeError:  # bytes that are not UTF-8: no valid string key
                    undecodable.append(ascii(rel))
                    continue
                images.append(rel)
            else:
                ignored += 1
    if undecodable:
        raise SourceError(f"{len(undecodable)} image file names under {root} are not valid "
                          f"UTF-8, e.g. {', '.join(undecodable[:3])}",
                          "rename them (keys must be text), or list the others in a file list")
    return images, ignored


class FolderSource(ImageSource):
    kind = "folder"

    def __init__(self, root: str | Path, *, labels: bool = True) -> None:
        self.root = os.path.abspath(root)
        if not os.path.isdir(self.root):
            raise SourceError(f"{self.root} is not a folder")
        keys, ignored = _walk(self.root)
        if not keys:
            raise no_images(self.root, f"images are files ending in "
                            f"{', '.join('.' + e for e in sorted(IMAGE_EXTS))}; "
                            f"{ignored} other files were found")
        keys.sort()  # plain code-point order of the relative POSIX path: stable everywhere
        self.keys = keys
        self.ignored = ignored
        self.labels = labels
        # a top-level folder is a class when it holds at least one image
        tops = sorted({k.split("/", 1)[0] for k in keys if "/" in k})
        self.classes = tops
        index = {name: i for i, name in enumerate(tops)}
        self._labels: list[int | None] | None = (
            [index[k.split("/", 1)[0]] if "/" in k else None for k in keys] if labels else None)
        self._refs: pa.Table | None = None
        log.info("folder %s: %d images, %d classes, %d other files ignored",
                 self.root, len(keys), len(tops), ignored)

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
        return read_file(self._path(index))

    def ext(self, index: int) -> str:
        return os.path.splitext(self.keys[index])[1][1:].lower()

    def describe(self) -> dict[str, Any]:
        exts = Counter(os.path.splitext(k)[1][1:].lower() for k in self.keys)
        return {"kind": self.kind, "root": self.root, "images": len(self.keys),
                "ignored_files": self.ignored, "labels": self.labels,
                "classes": len(self.classes) if self.labels else None,
                "unlabelled_root_files": (sum("/" not in k for k in self.keys)
                                          if self.labels else None),
                "extensions": dict(sorted(exts.items()))}

    def class_names(self) -> list[str] | None:
        return list(self.classes) if self.labels and self.classes else None


register_source(SourceKind(
    name="folder",
    detect=lambda spec: os.path.isdir(spec),
    open=lambda spec, labels: FolderSource(spec, labels=labels),
    help="an image folder, recursive; top-level sub-folders are the classes",
    ref_reader=plain_file_reader,
))
