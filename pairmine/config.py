"""A stage's options as one typed, validated value: the stage config.

Each stage's API is ``stage(inputs, out, SomeConfig(...))``: a frozen dataclass whose fields are
the options, each declared once with :func:`setting` (its help, its CLI flag, its choices).
From those fields come the CLI options (``pairmine.commands.options.config_options``), the API
reference (``pairmine.apidoc``) and the validation (``__post_init__``), so an option is written
once, not once per layer::

    @dataclass(frozen=True, kw_only=True)
    class MatchConfig(StageConfig):
        min_score: float = setting(0.97, flag="--min", help="Lower bound of the band.")

        def __post_init__(self) -> None:
            check_number("--min", self.min_score)

Keyword arguments stay accepted for convenience: ``pairmine.match(emb, out, min_score=0.9)``
is ``StageConfig.build``'s ``MatchConfig(min_score=0.9)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pairmine.errors import ConfigError

C = TypeVar("C", bound="StageConfig")

METADATA_KEY = "pairmine.setting"

Choices = Sequence[str] | Callable[[], Sequence[str]]


@dataclass(frozen=True)
class Setting:
    """How one config field is offered: help text, CLI flag, choices, bounds.

    ``flag`` defaults to ``--field-name``. A boolean whose default is True is offered as the
    flag that turns it off (``negate``, e.g. ``--no-labels`` for ``labels``), or as both
    (``flag="--cos/--no-cos"``; that form also offers a ``bool | None`` whose None lets the
    stage decide). ``minimum``/``maximum`` bound a number (inclusive). ``choices`` is a
    list or a function returning one (a registry's ``names``, read when first needed).
    ``kind`` names a special CLI type: ``"device"``, ``"path"``, ``"size"`` (bytes written
    ``512M``, ``1G`` or ``none``), ``"ints"`` (a tuple of integers written ``1,5,10``) or
    ``"list"`` (a tuple of strings, the option repeated).
    ``cli=False`` keeps a field out of the CLI (an API-only option)."""

    help: str
    flag: str | None = None
    metavar: str | None = None
    choices: Choices | None = None
    minimum: float | None = None
    negate: str | None = None
    kind: str | None = None
    cli: bool = True
    show_default: bool = True
    maximum: float | None = None
    minimum_open: bool = False  # the minimum itself is excluded: --grid-step x>0

    def flag_for(self, name: str) -> str:
        if self.negate is not None:
            return self.negate
        return self.flag or "--" + name.replace("_", "-")

    def choice_names(self) -> list[str] | None:
        if self.choices is None:
            return None
        return list(self.choices() if callable(self.choices) else self.choices)


def setting(default: Any = dataclasses.MISSING, *, help: str,
            flag: str | None = None, metavar: str | None = None,
            choices: Choices | None = None, minimum: float | None = None,
            negate: str | None = None, kind: str | None = None, cli: bool = True,
            show_default: bool = True, maximum: float | None = None,
            minimum_open: bool = False) -> Any:
    """A config field with its :class:`Setting`; no ``default`` makes the field required."""
    meta = {METADATA_KEY: Setting(help=help, flag=flag, metavar=metavar, choices=choices,
                                  minimum=minimum, negate=negate, kind=kind, cli=cli,
                                  show_default=show_default, maximum=maximum,
                                  minimum_open=minimum_open)}
    return dataclasses.field(default=default, metadata=meta)


def setting_of(f: dataclasses.Field[Any]) -> Setting | None:
    value = f.metadata.get(METADATA_KEY)
    return value if isinstance(value, Setting) else None


@dataclass(frozen=True, kw_only=True)
class StageConfig:
    """Base of every stage config: building from keyword arguments, and the fields with
    their settings in the order a reader meets them (the stage's own, then inherited).

    Subclasses check their values in ``__post_init__`` (calling ``super().__post_init__()``)
    and raise :class:`ConfigError` naming the CLI flag."""

    def __post_init__(self) -> None:
        pass

    @classmethod
    def build(cls: type[C], config: C | None = None,
              overrides: Mapping[str, Any] | None = None) -> C:
        """``config`` with ``overrides`` applied (a fresh config when None). An unknown or
        missing option is a :class:`ConfigError` that names it, not a ``TypeError``."""
        overrides = dict(overrides or {})
        if config is not None and not isinstance(config, cls):
            raise ConfigError(f"expected a {cls.__name__}, got {type(config).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(names), n=1)
            raise ConfigError(f"{cls.__name__} has no option {unknown[0]!r}",
                              f"did you mean {close[0]!r}?" if close else
                              f"its options: {', '.join(sorted(names))}")
        if config is not None:
            return dataclasses.replace(config, **overrides) if overrides else config
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and f.name not in overrides]
        if missing:
            raise ConfigError(f"{cls.__name__} needs {', '.join(missing)}",
                              f"pass {missing[0]}=... or a {cls.__name__}")
        return cls(**overrides)

    @classmethod
    def settings(cls) -> list[tuple[dataclasses.Field[Any], Setting]]:
        """Every field that has a :class:`Setting`: the class's own first, then its bases'."""
        own_first: list[dataclasses.Field[Any]] = []
        inherited: set[str] = set()
        for base in cls.__mro__[1:]:
            if dataclasses.is_dataclass(base):
                inherited |= {f.name for f in dataclasses.fields(base)}
        fields = dataclasses.fields(cls)
        own_first = [f for f in fields if f.name not in inherited] + \
                    [f for f in fields if f.name in inherited]
        return [(f, s) for f in own_first if (s := setting_of(f)) is not None]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# checks for __post_init__: each names the CLI flag, so the API and the CLI say the same thing


def check_choice(flag: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {flag} {value!r}", f"choose from {', '.join(choices)}")


def check_int(flag: str, value: Any, minimum: int | None = None,
              optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{flag} {value!r} is not an integer")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{flag} must be at least {minimum}, got {value}")


def check_number(flag: str, value: Any, minimum: float | None = None,
                 maximum: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{flag} {value!r} is not a finite number")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{flag} must be at least {minimum:g}, got {value:g}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{flag} must be at most {maximum:g}, got {value:g}")


def check_bool(flag: str, value: Any) -> None:
    """A switch is True or False (``"no"`` would be truthy, and silently mean yes)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{flag} {value!r} is not True or False")


def check_device(value: Any) -> None:
    """``--device``: auto, cpu, cuda or cuda:N (the one rule, ``runtime.device_kind``)."""
    from pairmine.runtime import device_kind

    if not isinstance(value, str):
        raise ConfigError(f"--device {value!r} is not a device name",
                          "choose auto, cpu, cuda or cuda:N")
    device_kind(value)
