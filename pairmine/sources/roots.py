"""Where the images of a store are now: ``--image-root OLD=NEW`` (export, show).

A store records each image's source path as embed read it. When a dataset moves (copied to
another disk, mounted elsewhere) the commands that read the images again take
``--image-root OLD=NEW`` and read a source recorded under OLD from NEW instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pairmine.errors import ConfigError


@dataclass(frozen=True)
class ImageRoots:
    """``--image-root OLD=NEW``: images recorded under the folder OLD at embed time are read
    under NEW (a dataset moved or mounted elsewhere). Export still checks the bytes against
    the hashes embed recorded, so a wrong NEW shows up as changed or missing images, never
    as other images exported silently."""

    moves: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, values: Sequence[str]) -> ImageRoots:
        moves = []
        for value in values:
            old, sep, new = str(value).partition("=")
            if not sep or not old.strip() or not new.strip():
                raise ConfigError(f"--image-root {value!r} is not OLD=NEW",
                                  "e.g. --image-root /data/old/images=/mnt/images")
            moves.append((_folder(old), _folder(new)))
        # the longest OLD first: a nested move wins over its parent's
        return cls(tuple(sorted(moves, key=lambda m: -len(m[0]))))

    def apply(self, source: str) -> str:
        """Where ``source`` (a path recorded at embed time) is now."""
        for old, new in self.moves:
            if source == old:
                return new
            if source.startswith(old + "/"):
                return new + source[len(old):]
        return source


def _folder(path: str) -> str:
    text = path.strip()
    return text if text == "/" else text.rstrip("/")
