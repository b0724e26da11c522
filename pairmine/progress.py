"""Progress reporting without printing: library code reports, the caller draws.

A stage reports through :class:`Progress` (``start``, ``advance``, ``finish``). The CLI draws
it as a rich bar on a terminal; off a terminal (a Slurm log, ``nohup``, CI), where a bar is
either invisible or a wall of control characters, :class:`IntervalProgress` writes one line
every few seconds instead: what runs, done/total, rate, ETA and the stage's own fields (the
loss for training).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

# seconds between two progress records off a terminal; the variable sets it (tests use a
# fraction of a second; 0 turns the records off)
INTERVAL_VARIABLE = "PAIRMINE_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 20.0


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


def interval_from(value: str | None) -> float:
    """The record interval a ``PAIRMINE_PROGRESS_INTERVAL`` value asks for (seconds; unset or
    unreadable: the default, so a typo never silences a long job's log)."""
    if value is None or not value.strip():
        return DEFAULT_INTERVAL
    try:
        seconds = float(value)
    except ValueError:
        return DEFAULT_INTERVAL
    return seconds if math.isfinite(seconds) and seconds >= 0 else DEFAULT_INTERVAL


class IntervalProgress:
    """:class:`Progress` as one text line every ``interval`` seconds, written by ``write``.

    A background thread writes the records, so they come at a steady pace however rarely the
    stage advances (an epoch that advances once a minute still shows it is alive). Use it as
    a context manager (or call :meth:`close`) to stop the thread. The stage's ``fields`` (the
    loss, the learning rate) are appended as ``name=value``.
    """

    def __init__(self, write: Callable[[str], None], interval: float = DEFAULT_INTERVAL, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._write = write
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._description = ""
        self._unit = "items"
        self._total: int | None = None
        self._done = 0
        self._started = 0.0
        self._fields: dict[str, Any] = {}
        self._active = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if interval > 0:
            self._thread = threading.Thread(target=self._run, name="pairmine-progress",
                                            daemon=True)
            self._thread.start()

    def start(self, description: str, total: int | None, unit: str = "items") -> None:
        with self._lock:
            self._description, self._total, self._unit = description, total, unit
            self._done, self._fields, self._active = 0, {}, True
            self._started = self._clock()

    def advance(self, n: int = 1, **fields: Any) -> None:
        with self._lock:
            self._done += n
            self._fields.update(fields)

    def finish(self) -> None:
        with self._lock:
            self._active = False

    def record(self) -> str | None:
        """The current progress as one line, or None between two tasks."""
        with self._lock:
            if not self._active:
                return None
            done, total, unit = self._done, self._total, self._unit
            elapsed = max(self._clock() - self._started, 0.0)
            parts: list[str] = []
            if total:
                parts.append(f"{done:,}/{total:,} {unit} ({100 * done / total:.1f}%)")
            else:
                parts.append(f"{done:,} {unit}")
            rate = done / elapsed if elapsed > 0 else 0.0
            parts.append(f"{rate:,.1f} {unit}/s")
            parts.append(f"elapsed {_clock_text(elapsed)}")
            if total and rate > 0:
                parts.append(f"ETA {_clock_text(max(total - done, 0) / rate)}")
            else:
                parts.append("ETA ?")
            parts += [f"{k}={_field_text(v)}" for k, v in self._fields.items()]
        return f"{self._description}: " + "  ".join(parts)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> IntervalProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            line = self.record()
            if line is not None:
                self._write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}")


def _clock_text(seconds: float) -> str:
    """``1:05:09`` / ``4:07``: hours only when there are any."""
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _field_text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)
