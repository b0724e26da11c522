"""The source kind of stores made by ``pairmine import`` from precomputed embeddings.

Nothing is embedded from it (``detect`` claims nothing, ``open`` refuses): it exists so that
export and show can read an imported store's images again. A row whose metadata named an
image file has that file as its ``source`` (read like any plain file); a row without one has
no ``source``, and reading it is one clear error instead of a crash.
"""

from __future__ import annotations

from pairmine.errors import SourceError
from pairmine.sources.base import RefReader, SourceKind, plain_file_reader, register_source

NAME = "imported"


def _refuse(spec: str, labels: bool) -> object:
    raise SourceError(f"{NAME!r} is not a source to embed: it marks stores made by "
                      "`pairmine import`", "give an image folder, a file list or tar shards")


def imported_reader() -> RefReader:
    read_file = plain_file_reader()

    def read(source: str | None, member: str | None, /, *,
             place: tuple[int, int] | None = None) -> tuple[bytes, str]:
        if not source:
            # short: export lists this once per image it could not read
            raise SourceError("imported without an image file",
                              "`pairmine pairs PAIRS --format csv` lists the pairs by key")
        return read_file(source, member)

    return read


register_source(SourceKind(
    name=NAME, detect=lambda spec: False, open=_refuse,  # type: ignore[arg-type]
    help="stores made by `pairmine import` (not a source to embed)",
    ref_reader=imported_reader))
