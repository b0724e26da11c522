"""What every command shares: rich console, progress bars, logging, error → exit code 1.

Exit codes: 0 done; 1 a pairmine error (bad input, an output that cannot be written, a
damaged store), one line on stderr; 2 a command line that cannot be used: one click cannot
parse, or an option value the stage's config refuses (``pairmine.cli``,
``commands.options``), or no command at all; 130 interrupted.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
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
from pairmine.progress import Progress as ProgressReport

console = Console(stderr=True)
# off a terminal (a Slurm log, CI) a message stays one line, however long: a log is read with
# grep, not at a fixed width (tables are laid out at the width all the same)
console.soft_wrap = not console.is_terminal
out = Console()

P = ParamSpec("P")
R = TypeVar("R")


def setup_logging(verbose: int) -> None:
    """Log records on stderr: rich's handler on a terminal; off one (a Slurm log, ``nohup``,
    CI) plain lines with date and time, never wrapped at 80 columns."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler: logging.Handler
    if console.is_terminal:
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False)
        fmt, datefmt = "%(message)s", "[%X]"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt, datefmt = "%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"
    logging.basicConfig(level=level, format=fmt, datefmt=datefmt, handlers=[handler],
                        force=True)


def known_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn pairmine's known errors into one line on stderr and exit code 1, no traceback."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except PairmineError as exc:
            # one line, whatever a file name or a library's message holds
            raise click.ClickException(" ".join(str(exc).splitlines())) from None
        except MemoryError:
            # an allocation no step named (numpy's, Arrow's, Python's): still one line, exit
            # 1, and its frames (holding what did not fit) go with the traceback
            raise click.ClickException(_out_of_memory_line()) from None
        except OSError as exc:
            from pairmine.errors import is_out_of_memory

            if is_out_of_memory(exc):  # Arrow reports some failed reallocs as OSError
                raise click.ClickException(_out_of_memory_line()) from None
            if exc.filename is None:  # not about a file: a bug, keep its traceback
                raise
            # a file the environment refused (read-only, full, gone) that no stage turned
            # into a StoreError: still one line that says which file and what to do
            raise click.ClickException(" ".join(str(file_failure(exc)).splitlines())) from None
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted[/]{interrupt_note(_command_name())}")
            sys.exit(130)

    return wrapper


def _out_of_memory_line() -> str:
    """The last-resort line for a ``MemoryError`` that no step turned into OutOfMemory."""
    from pairmine.errors import out_of_memory

    command = _command_name()
    return str(out_of_memory(f"pairmine {command}" if command else "pairmine"))


# commands whose stores keep their finished shards and resume when run again
RESUMES = frozenset({"embed", "match", "export", "train", "import"})
# commands that write only at the very end, atomically (or never): interrupted, nothing is left
WRITES_AT_END = frozenset({"eval", "calibrate", "eval-pairs", "verify", "encoders"})


def interrupt_note(command: str | None) -> str:
    """What an interrupted command leaves behind, promised only where it is true."""
    if command in RESUMES:
        return ": finished shards are kept; run the same command again to resume"
    if command in WRITES_AT_END:
        return ": nothing was written"
    return ""


def _command_name() -> str | None:
    ctx = click.get_current_context(silent=True)
    return None if ctx is None else ctx.command.name


def file_failure(exc: OSError) -> PairmineError:
    """An ``OSError`` about a file as pairmine's one clear error."""
    import errno
    from pathlib import Path

    from pairmine.stores import write_failure

    path = Path(exc.filename)
    if exc.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return write_failure(path, exc)
    if exc.errno in (errno.EACCES, errno.EPERM):  # a read or a write: say which file
        return PairmineError(f"cannot use {path}: permission denied",
                             "check its permissions; an output directory must be writable")
    return PairmineError(f"{path}: {exc.strerror or exc}",
                         "check the path and run the same command again")


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
def progress_bar() -> Iterator[ProgressReport]:
    """Where a command's stage reports its progress: a rich bar when stderr is a terminal;
    off one (a Slurm log, ``nohup``, CI) a one-line record every
    ``$PAIRMINE_PROGRESS_INTERVAL`` seconds (default 20), so a long run is seen to move."""
    if not console.is_terminal:
        import os

        from pairmine.progress import INTERVAL_VARIABLE, IntervalProgress, interval_from

        with IntervalProgress(_write_stderr,
                              interval_from(os.environ.get(INTERVAL_VARIABLE))) as records:
            yield records
        return
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


def _write_stderr(line: str) -> None:
    # sys.stderr looked up at each write: click's test runner swaps it
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class RateColumn(ProgressColumn):
    """Items per second over rich's sliding window."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f}/s", style="green")


# calibrate's default --floor (CalibrateConfig.floor): below it calibrate sees no score
_CALIBRATE_FLOOR = 0.9


def empty_band_warning(emb: str | Path, band: tuple[float, float]) -> str:
    """One line for a band that holds no pair: the ``calibrate`` command, with this store's
    path, that measures pairs per image over a grid of bands and suggests one."""
    import shlex

    lo, hi = band
    command = f"pairmine calibrate {shlex.quote(str(emb))} --target-yield 1"
    if lo < _CALIBRATE_FLOOR:  # calibrate's grid starts at the band the user tried
        command += f" --floor {lo:g}"
    return (f"no pairs: the band [{lo:g}, {hi:g}] holds no pair of {emb}; run `{command}` to "
            "find a band with pairs, then pass its --min/--max")


def warn_empty_band(pairs_count: int, *, emb: str | Path | None = None,
                    band: tuple[float, float] | None = None,
                    pairs: str | Path | None = None) -> None:
    """Print :func:`empty_band_warning` on stderr when ``pairs_count`` is 0; ``pairs`` (a
    pairs store) gives the embeddings store and the band when they are not passed."""
    if pairs_count:
        return
    if pairs is not None and (emb is None or band is None):
        from pairmine.stores import open_pairs

        store = open_pairs(pairs)
        emb, band = store.embeddings_path, (store.info.min, store.info.max)
    if emb is None or band is None:
        return
    from rich.markup import escape

    console.print(f"[yellow]{escape(empty_band_warning(emb, band))}[/]", soft_wrap=True)


def number_table(title: str, headers: Sequence[str], *, left: Sequence[str] = ()) -> Table:
    """A table of numbers that keeps every number whole at 80 columns (a Slurm log, a CI
    page): no vertical rules, one space of padding, headers of two words on two lines, cells
    never wrapped. The band table of calibrate and eval-pairs (7 columns) fits 80 columns with
    counts up to 9,999,999; print it through :func:`fitted`, which stacks the rows of a table
    too wide for the console instead of letting rich cut its numbers to "…".
    ``left`` names the columns aligned left (labels); the others are numbers, right-aligned."""
    from rich import box

    # as wide as its title (up to the console's width): a title wraps only when it must
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False, padding=(0, 0, 0, 1),  # 2 spaces between columns
                  min_width=min(Text.from_markup(title).cell_len, console.width))
    for name in headers:
        # no cell is wrapped (rich would break [0.97, 0.99] at its space, or shrink the
        # widest column below its numbers); a header of two words takes two lines instead
        header = name if name in left else name.replace(" ", "\n", 1)
        table.add_column(header, justify="left" if name in left else "right", no_wrap=True,
                         overflow="fold")
    return table


def fitted(table: Table, width: int | None = None) -> Any:
    """``table`` when its cells fit ``width`` (default: the console's) whole; else its rows
    stacked, one block per row of ``header value`` pairs that wraps between pairs, never
    inside a number (a count of 1,234,567,890 at 80 columns)."""
    from rich.console import Group

    width = width or out.width
    columns = table.columns
    cells = [[str(cell) for cell in column.cells] for column in columns]

    def cell_width(text: str) -> int:
        return max((Text.from_markup(line).cell_len for line in text.splitlines()), default=0)

    widths = [max([cell_width(str(column.header))] + [cell_width(c) for c in column_cells])
              for column, column_cells in zip(columns, cells, strict=True)]
    gaps = 2 * (len(columns) - 1)  # number_table's padding
    if sum(widths) + gaps <= width:
        return table
    lines: list[Any] = [] if table.title is None else [Text.from_markup(str(table.title))]
    names = [" ".join(str(column.header).split()) for column in columns]
    for row in zip(*cells, strict=True):
        pairs = [f"{name} [bold]{value}[/]" for name, value in zip(names, row, strict=True)]
        lines.append(Text.from_markup("  ".join(pairs)))
    return Group(*lines)


def summary_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for name, value in rows:
        table.add_row(name, _fmt(value))
    return table


class LazyChoice(click.Choice[str]):
    """A Choice whose names come from a registry when first needed (at parse or help time),
    so listing commands imports no engine, format or architecture module."""

    def __init__(self, names: Callable[[], Sequence[str]]) -> None:
        self._names = names
        super().__init__((), case_sensitive=True)

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self._names())

    @choices.setter
    def choices(self, value: Any) -> None:  # click's __init__ assigns; the registry decides
        pass


def engine_choice() -> click.Choice[str]:
    """``--engine``: auto and every registered band-search engine."""

    def names() -> list[str]:
        from pairmine.engines import engine_names

        return engine_names()

    return LazyChoice(names)


class DeviceType(click.ParamType[str]):
    """``--device``: auto, cpu, cuda or cuda:N. The stage checks it (``runtime.device_kind``,
    the one rule), so a bad name is the same one-line error, exit 1, in every command."""

    name = "device"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "[auto|cpu|cuda|cuda:N]"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        return str(value)


DEVICE = DeviceType()
