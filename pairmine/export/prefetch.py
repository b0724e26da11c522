"""Reading ahead: the reader stage of export runs in threads while the writer writes the tar.

Reading a file and hashing it both release the GIL, so a few threads that fetch and check
the next samples keep the single tar writer busy; results still come back strictly in plan
order, so the output does not depend on thread timing. Work is handed out in chunks of
consecutive positions: one task per sample would cost more than reading a small image.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")

CHUNK = 16  # positions per task
AHEAD = 4  # tasks in flight beyond the one being consumed
THREADS = 2  # the machine's other core does the reading; more threads only fight for the GIL


class Prefetcher(Generic[T]):
    """``get(p)`` returns ``make(p)``, computed ahead in chunks of ``chunk`` positions.

    Positions must be asked for in increasing order from ``start``; the last one may be asked
    for again (a sample that did not fit into a full shard starts the next one).
    """

    def __init__(self, make: Callable[[int], T], start: int, stop: int, *,
                 chunk: int = CHUNK, ahead: int = AHEAD, threads: int = THREADS) -> None:
        self._make = make
        self._start = start
        self._stop = stop
        self._chunk = chunk
        self._ahead = ahead
        self._submitted = 0  # chunks handed out so far
        self._futures: dict[int, Future[list[T]]] = {}
        self._current: tuple[int, list[T]] | None = None
        self._pool = ThreadPoolExecutor(max_workers=threads,
                                        thread_name_prefix="pairmine-export-read")

    def _run(self, first: int) -> list[T]:
        return [self._make(p) for p in range(first, min(first + self._chunk, self._stop))]

    def get(self, position: int) -> T:
        if position < self._start or position >= self._stop:
            raise IndexError(position)
        number = (position - self._start) // self._chunk
        if self._current is None or self._current[0] != number:
            last = min(number + self._ahead, (self._stop - self._start - 1) // self._chunk)
            while self._submitted <= last:
                first = self._start + self._submitted * self._chunk
                self._futures[self._submitted] = self._pool.submit(self._run, first)
                self._submitted += 1
            self._current = (number, self._futures.pop(number).result())
        return self._current[1][(position - self._start) % self._chunk]

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
