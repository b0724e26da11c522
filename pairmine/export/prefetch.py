"""Reading ahead: the reader stage of export runs in threads while the writer writes the tar.

Reading a file and hashing it both release the GIL, so a few threads that fetch and check
the next samples keep the single tar writer busy; results still come back strictly in plan
order, so the output does not depend on thread timing.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")

WINDOW = 32  # samples in flight: enough to hide file latency, little memory for large photos
THREADS = 4


class Prefetcher(Generic[T]):
    """``get(p)`` returns ``make(p)``, computed ahead for positions ``p+1 .. p+window``.

    Positions must be asked for in increasing order; the last one may be asked for again
    (a sample that did not fit into a full shard starts the next one).
    """

    def __init__(self, make: Callable[[int], T], start: int, stop: int, *,
                 window: int = WINDOW, threads: int = THREADS) -> None:
        self._make = make
        self._next = start
        self._stop = stop
        self._window = window
        self._futures: dict[int, Future[T]] = {}
        self._last: tuple[int, T] | None = None
        self._pool = ThreadPoolExecutor(max_workers=threads,
                                        thread_name_prefix="pairmine-export-read")

    def get(self, position: int) -> T:
        if self._last is not None and self._last[0] == position:
            return self._last[1]
        self._next = max(self._next, position)
        while self._next < min(position + 1 + self._window, self._stop):
            self._futures[self._next] = self._pool.submit(self._make, self._next)
            self._next += 1
        future = self._futures.pop(position, None)
        value = self._make(position) if future is None else future.result()
        self._last = (position, value)
        return value

    def close(self) -> None:
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
