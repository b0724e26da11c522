"""Reading the original bytes of an image again, checked against the hash taken at embed time.

An export must hold exactly the images that were embedded and matched: a file that changed
or vanished since is a problem, reported with where it was, never exported silently.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from typing import Any

from pairmine.errors import SourceError
from pairmine.export.layout import normalise_ext
from pairmine.export.plan import Catalogue

log = logging.getLogger(__name__)

MISSING = "missing"
CHANGED = "changed"


@dataclass(frozen=True)
class Problem:
    """An image the export could not use: gone or unreadable (``missing``), or its bytes no
    longer hash to what embed recorded (``changed``)."""

    id: int
    key: str
    source: str
    member: str | None
    reason: str
    detail: str

    def where(self) -> str:
        return self.source if self.member is None else f"{self.source}::{self.member}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Problem:
        return cls(id=int(obj["id"]), key=str(obj["key"]), source=str(obj["source"]),
                   member=obj.get("member"), reason=str(obj["reason"]),
                   detail=str(obj.get("detail", "")))


@dataclass(frozen=True)
class Original:
    data: bytes
    ext: str  # normalised, no dot
    sha256: str


class Fetcher:
    """Fetches images by embeddings-store id through the source kind's reader.

    Problems are remembered, so an image in many pairs is read and reported once.
    """

    def __init__(self, source_kind: str, images: Catalogue) -> None:
        self._read = _reader(source_kind)
        self._images = images
        self.problems: dict[int, Problem] = {}

    def get(self, image_id: int) -> Original | Problem:
        known = self.problems.get(image_id)
        if known is not None:
            return known
        source = self._images.sources[image_id]
        member = self._images.members[image_id]
        try:
            data, ext = self._read(source, member)
        except Exception as exc:  # any failure to fetch one image is its problem
            return self._problem(image_id, MISSING, f"{type(exc).__name__}: {exc}")
        digest = hashlib.sha256(data).hexdigest()
        if digest != self._images.sha256[image_id]:
            return self._problem(image_id, CHANGED,
                                 f"sha256 {digest[:12]}… ≠ {self._images.sha256[image_id][:12]}…")
        return Original(data=data, ext=normalise_ext(ext), sha256=digest)

    def _problem(self, image_id: int, reason: str, detail: str) -> Problem:
        problem = Problem(id=image_id, key=self._images.keys[image_id],
                          source=self._images.sources[image_id],
                          member=self._images.members[image_id], reason=reason, detail=detail)
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


def describe_problems(problems: list[Problem], limit: int = 10) -> str:
    """``"3 images: a.jpg (missing: ...), ..."`` for error messages and summaries."""
    shown = [f"{p.where()} ({p.reason}: {p.detail})" for p in problems[:limit]]
    more = len(problems) - len(shown)
    text = "; ".join(shown)
    return text + (f"; and {more} more" if more > 0 else "")
