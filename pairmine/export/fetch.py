"""Reading the original bytes of an image again, checked against the hash taken at embed time.

An export must hold exactly the images that were embedded and matched: a file that changed
or vanished since is a problem, reported with where it was, never exported silently.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pairmine.errors import PairmineError, SourceError
from pairmine.export.layout import normalise_ext
from pairmine.export.plan import Catalogue
from pairmine.sources import read_ref
from pairmine.sources.roots import ImageRoots
from pairmine.stores.export import Problem

log = logging.getLogger(__name__)

MISSING = "missing"
CHANGED = "changed"
DEFAULT_CACHE_BYTES = 256 << 20


@dataclass(frozen=True)
class Original:
    data: bytes
    ext: str  # normalised, no dot
    sha256: str


class Fetcher:
    """Fetches images by embeddings-store id through the source kind's reader.

    Problems are remembered, so an image in many pairs is read and reported once. Images
    that passed the check stay in a small LRU cache (``cache_bytes``): an image is usually in
    several pairs, and pairs sorted by anchor reuse it back to back. Serving the verified
    bytes again is also what the export should write, even if the file changes meanwhile.
    Safe to call from several threads.
    """

    def __init__(self, source_kind: str, images: Catalogue, *,
                 cache_bytes: int = DEFAULT_CACHE_BYTES,
                 roots: ImageRoots | None = None) -> None:
        self._read = _reader(source_kind)
        self._images = images
        self._roots = roots or ImageRoots()
        self.problems: dict[int, Problem] = {}
        self._cache: OrderedDict[int, Original] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._cached = 0
        self._lock = threading.Lock()

    def get(self, image_id: int) -> Original | Problem:
        with self._lock:
            hit = self._cache.get(image_id)
            if hit is not None:
                self._cache.move_to_end(image_id)
                return hit
            known = self.problems.get(image_id)
        if known is not None:
            return known
        source = self._source(image_id)
        member = self._images.members[image_id]
        place = self._images.place(image_id)
        try:
            data, ext = read_ref(self._read, source, member, place)
        except Exception as exc:  # any failure to fetch one image is its problem
            # the common case, said in two words (an imported row may have no file at all)
            gone = source is not None and not os.path.lexists(source)
            return self._problem(image_id, MISSING, "not found" if gone else _failure(exc))
        digest = hashlib.sha256(data).hexdigest()
        if digest != self._images.sha256[image_id]:
            return self._problem(image_id, CHANGED,
                                 f"sha256 {digest[:12]}… ≠ {self._images.sha256[image_id][:12]}…")
        original = Original(data=data, ext=normalise_ext(ext), sha256=digest)
        self._remember(image_id, original)
        return original

    def _source(self, image_id: int) -> Any:
        """Where image ``image_id`` is now (``--image-root``); None: a row imported without
        an image file."""
        recorded = self._images.sources[image_id]
        return self._roots.apply(recorded) if recorded else recorded

    def _remember(self, image_id: int, original: Original) -> None:
        size = len(original.data)
        if size > self._cache_bytes // 4:  # a huge image would flush everything else
            return
        with self._lock:
            if image_id in self._cache:
                return
            self._cache[image_id] = original
            self._cached += size
            while self._cached > self._cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached -= len(old.data)

    def _problem(self, image_id: int, reason: str, detail: str) -> Problem:
        problem = Problem(id=image_id, key=self._images.keys[image_id],
                          source=self._source(image_id) or "",
                          member=self._images.members[image_id], reason=reason, detail=detail)
        with self._lock:
            self.problems[image_id] = problem
        log.info("image %s (%s) is %s: %s", problem.key, problem.where(), reason, detail)
        return problem


def _reader(kind: str) -> Any:
    from pairmine.sources import ref_reader

    try:
        return ref_reader(kind)
    except SourceError as exc:
        raise SourceError(f"cannot read images of source kind {kind!r}: {exc.message}",
                          "the embeddings store was written by a pairmine with other sources"
                          ) from None


def _failure(exc: Exception) -> str:
    """Why an image could not be read, without its path (the problem records the path)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, PairmineError):  # ours: its message, without the hint
        return exc.message
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def describe_problems(problems: list[Problem], limit: int = 3) -> str:
    """``"a.jpg (missing: No such file or directory); ...; and 7 more"`` for summaries."""
    shown = [f"{p.where()} ({p.reason}: {p.detail})" for p in problems[:limit]]
    more = len(problems) - len(shown)
    text = "; ".join(shown)
    return text + (f"; and {more:,} more" if more > 0 else "")


def moved_from(problems: list[Problem]) -> str | None:
    """The folder the missing images have in common (the OLD of ``--image-root OLD=NEW``), or
    None when they share none or are members of archives (an archive moves as one file)."""
    folders = {os.path.dirname(p.source) for p in problems if p.reason == MISSING and p.source}
    if not folders:
        return None
    try:
        common = os.path.commonpath(sorted(folders))
    except ValueError:  # relative and absolute paths mixed
        return None
    return common if common not in ("", "/", ".") else None


def problems_error(problems: list[Problem], listing: Path) -> SourceError:
    """One short line for an export stopped by source images that moved, vanished or changed:
    how many, the first one, then what to do (``--image-root`` first when they look moved)."""
    gone = sum(p.reason == MISSING for p in problems)
    changed = len(problems) - gone
    what = (f"{gone:,} source image(s) are gone" if not changed else
            f"{changed:,} source image(s) changed" if not gone else
            f"{gone:,} source image(s) are gone and {changed:,} changed")
    first = problems[0]
    old = moved_from(problems)
    fix = "restore them, or pass --skip-missing to leave out the samples that use them"
    if old is not None:
        fix = f"if they moved, add --image-root {old}=NEW_FOLDER; else {fix}"
    return SourceError(f"{what} since embed (first: {first.where()}: {first.detail})",
                       f"{fix}; list in {listing}; the export is unfinished (no manifest)")
