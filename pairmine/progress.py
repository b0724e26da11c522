"""Progress reporting without printing: library code reports, the CLI draws (rich)."""

from __future__ import annotations

from typing import Any, Protocol


class Progress(Protocol):
    """What a long-running stage tells its caller. ``fields`` are shown next to the bar."""

    def start(self, description: str, total: int | None, unit: str = "items") -> None: ...

    def advance(self, n: int = 1, **fields: Any) -> None: ...

    def finish(self) -> None: ...


class NullProgress:
    """The default: report to nobody."""

    def start(self, description: str, total: int | None, unit: str = "items") -> None:
        pass

    def advance(self, n: int = 1, **fields: Any) -> None:
        pass

    def finish(self) -> None:
        pass
