"""What every command shares: rich console, progress bars, logging, error → exit code 1."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from pairmine.errors import PairmineError

console = Console(stderr=True)
out = Console()

P = ParamSpec("P")
R = TypeVar("R")


def setup_logging(verbose: int) -> None:
    from rich.logging import RichHandler

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=console, show_path=False)], force=True)


def known_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn pairmine's known errors into one line on stderr and exit code 1, no traceback."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except PairmineError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: finished shards are kept; run the same "
                          "command again to resume")
            sys.exit(130)

    return wrapper


class RichProgress:
    """pairmine.progress.Progress drawn as a rich bar with rate and ETA."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None
        self._unit = "items"

    def start(self, description: str, total: int | None, unit: str = "items") -> None:
        self._unit = unit
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(description, total=total, info="", unit=unit)

    def advance(self, n: int = 1, **fields: Any) -> None:
        if self._task is None:
            return
        info = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        self._progress.update(self._task, advance=n, info=info)

    def finish(self) -> None:
        if self._task is not None:
            self._progress.refresh()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


@contextmanager
def progress_bar() -> Iterator[RichProgress]:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"),
        RateColumn(),
        TextColumn("[cyan]{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        yield RichProgress(progress)


class RateColumn(ProgressColumn):
    """Items per second over rich's sliding window."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f}/s", style="green")


def summary_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for name, value in rows:
        table.add_row(name, _fmt(value))
    return table
