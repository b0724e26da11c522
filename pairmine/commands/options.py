"""CLI options derived from a stage config's fields (``pairmine.config``): each option is
declared once, on the config, and the command receives the built config.

    @click.command("match")
    @click.argument("emb")
    @config_options(MatchConfig)
    def command(emb: str, config: MatchConfig) -> None: ...

Types come from the field's annotation, choices from its :class:`~pairmine.config.Setting`
(a registry's names, read lazily so ``--help`` imports no engine), defaults from the field.
Building the config runs its ``__post_init__`` checks: a bad value is one line, exit 2 (a usage
error, as click's own checks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from pairmine.commands.common import DEVICE, LazyChoice, known_errors
from pairmine.config import Setting, StageConfig
from pairmine.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=StageConfig)

_SCALARS: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}


def config_options(cls: type[StageConfig], *,
                   before: Mapping[str, Sequence[Callable[[Any], Any]]] | None = None,
                   ) -> Callable[[F], F]:
    """Add one click option per field of ``cls`` (``cli=False`` fields excepted); the command
    gets ``config=cls(...)`` and its own arguments and options as they are.

    ``before`` places the command's own options (``click.option(...)``, passed to it as
    keyword arguments) in ``--help`` just before a field's option, e.g. ``--overwrite``
    before the inherited Ray options, where the command showed it before there was a config."""
    before = dict(before or {})
    entries = [(f, s) for f, s in cls.settings() if s.cli]

    def decorate(fn: F) -> F:
        @wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {f.name: kwargs.pop(f.name) for f, _ in entries}
            config = known_errors(build_from_command_line)(cls, values)
            return fn(*args, config=config, **kwargs)

        decorated: Any = wrapper
        for f, s in reversed(entries):
            decorated = click_option(f, s)(decorated)
            for option in reversed(before.get(f.name, ())):  # the outer one is listed first
                decorated = option(decorated)
        return decorated  # type: ignore[no-any-return]

    return decorate


def build_from_command_line(cls: type[C], values: dict[str, Any]) -> C:
    """The config of the command line's options. A value the config refuses (out of range,
    options that contradict each other) is a usage error, exit code 2, as click's own range
    checks are: the command line is wrong, not the data. (The API raises the ConfigError.)"""
    from pairmine.cli import UsageFailure

    try:
        return cls.build(None, values)
    except ConfigError as exc:
        raise UsageFailure(" ".join(str(exc).splitlines())) from None


def overwrite_option(what: str = "store") -> Callable[[F], F]:
    """``--overwrite``: a switch of the call (how this run treats OUT), not of the config."""
    return click.option("--overwrite", is_flag=True, help=f"Replace a complete {what} at OUT.")


def click_option(f: dataclasses.Field[Any], s: Setting) -> Callable[[F], F]:
    """The click option of one config field."""
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    default: Any = None
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    kind = _annotation(f)
    flag = s.flag_for(f.name)
    common: dict[str, Any] = {"help": s.help}
    if s.metavar is not None:
        common["metavar"] = s.metavar
    if s.kind == "list":  # repeatable: --image-root A=B --image-root C=D -> a tuple
        return click.option(flag, f.name, multiple=True, type=str, default=default, **common)
    if kind is bool and "/" in flag:  # --cos/--no-cos; None (no default shown): stage decides
        return click.option(flag, f.name, default=default,
                            show_default=s.show_default and default is not None, **common)
    if kind is bool:
        if default is True:  # offered as the flag that turns it off: --no-labels
            if s.negate is None:
                raise TypeError(f"{f.name}: a boolean that defaults to True needs negate=")
            return click.option(flag, f.name, is_flag=True, flag_value=False, default=True,
                                **common)
        return click.option(flag, f.name, is_flag=True, default=False, **common)
    choices = s.choices
    ptype: Any
    if s.kind == "device":
        ptype = DEVICE
    elif s.kind == "path":
        ptype = click.Path(path_type=Path)
    elif s.kind == "size":  # shown and parsed as text: --max-shard-bytes 1G
        ptype, default = SIZE, size_text(default)
    elif s.kind == "ints":  # shown and parsed as text: --k 1,5,10
        ptype, default = INTS, ",".join(str(v) for v in default)
    elif choices is not None:
        ptype = LazyChoice(choices) if callable(choices) else click.Choice(list(choices))
    elif kind is int:
        ptype = int if s.minimum is None and s.maximum is None else click.IntRange(
            min=None if s.minimum is None else int(s.minimum),
            max=None if s.maximum is None else int(s.maximum), min_open=s.minimum_open)
    elif kind is float:
        ptype = float if s.minimum is None and s.maximum is None else click.FloatRange(
            min=s.minimum, max=s.maximum, min_open=s.minimum_open)
    else:
        ptype = str
    if required:
        return click.option(flag, f.name, type=ptype, required=True, **common)
    show = s.show_default and default is not None
    return click.option(flag, f.name, type=ptype, default=default, show_default=show, **common)


def _annotation(f: dataclasses.Field[Any]) -> type | None:
    """The scalar type of a field's annotation (``int | None`` → int); None for others."""
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    parts = [p.strip() for p in str(text).split("|") if p.strip() != "None"]
    return _SCALARS.get(parts[0]) if len(parts) == 1 else None


# ---------------------------------------------------------------------------------------------
# sizes in bytes: kind="size"

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class ByteSize(click.ParamType[int | None, Any]):
    """``1073741824``, ``512M``, ``1G`` (binary units) → bytes; ``none`` → no limit (None)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int | None:
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        if str(value).strip().lower() == "none":
            return None
        text = str(value).strip().upper().removesuffix("IB").removesuffix("B")
        unit = text[-1:] if text[-1:] in _UNITS else ""
        try:
            number = float(text[:-1] if unit else text)
        except ValueError:
            self.fail(f"{value!r} is not a size (e.g. 1G, 512M, 100000000)", param, ctx)
        return int(number * _UNITS[unit])


SIZE = ByteSize()


def size_text(size: int | None) -> str:
    """How ``--help`` shows a size: the largest binary unit that divides it (``1G``)."""
    if size is None:
        return "none"
    for unit in ("T", "G", "M", "K"):
        if size and size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)


# ---------------------------------------------------------------------------------------------
# lists of integers: kind="ints"


class IntList(click.ParamType[tuple[int, ...], Any]):
    """``1,5,10`` → ``(1, 5, 10)``: integers >= 1, comma-separated."""

    name = "integers"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            ints = tuple(int(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers, e.g. 1,5,10",
                      param, ctx)
        if not ints or any(k < 1 for k in ints):
            self.fail("give integers >= 1, e.g. 1,5,10", param, ctx)
        return ints


INTS = IntList()
