"""One registry for every pluggable kind (encoders, sources, engines, export formats).

A registry knows three kinds of entries:

- **built-ins**, an explicit list of ``Builtin(name, module, priority)``: the names are known
  without importing anything (``pairmine --help`` stays instant); the module is imported the
  first time one of its names is needed, and registers its objects with ``register``;
- objects registered at run time with ``register`` (a test's toy encoder, a built-in module);
- **third-party plugins**: ``importlib.metadata`` entry points in the group ``pairmine.<kind>``
  (``[project.entry-points."pairmine.sources"] mykind = "mypkg.source:KIND"``), loaded lazily;
  the loaded object's ``priority`` attribute places it (default ``PLUGIN_PRIORITY``).

Order is by priority, highest first, then by position (built-in list order, then registration,
then plugins by name): that order is the detection order of sources and the order names appear
in the CLI's choices.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from typing import Generic, TypeVar

from pairmine.errors import PairmineError

log = logging.getLogger(__name__)

T = TypeVar("T")

_NO_PLUGINS = EntryPoint(name="", value="", group="")  # a marker: the scan found none
DEFAULT_PRIORITY = 100
# a plugin without a priority comes after the specific built-ins and before catch-alls
PLUGIN_PRIORITY = 50


@dataclass(frozen=True)
class Builtin:
    """A built-in entry: ``name`` is registered by importing ``module``."""

    name: str
    module: str
    priority: int = DEFAULT_PRIORITY


@dataclass
class _Entry(Generic[T]):
    name: str
    priority: int
    position: int
    module: str | None = None  # a built-in not imported yet
    entry_point: EntryPoint | None = None  # a plugin not loaded yet
    obj: T | None = None
    plugin: bool = False


class Registry(Generic[T]):
    """Named objects of one kind: ``names()``, ``get(name)``, ``ordered()``, ``help(name)``."""

    def __init__(self, kind: str, builtins: Iterable[Builtin] = (), *,
                 name_of: Callable[[T], str], help_of: Callable[[T], str],
                 error: type[PairmineError] = PairmineError, what: str | None = None) -> None:
        self.kind = kind  # entry-point group: pairmine.<kind>
        self.what = what or kind.rstrip("s")  # "source", for messages
        self._name_of, self._help_of, self._error = name_of, help_of, error
        self._entries: dict[str, _Entry[T]] = {}
        self._positions = 0
        self._plugins_seen = False
        for b in builtins:
            self._add(_Entry(name=b.name, priority=b.priority, position=self._next(),
                             module=b.module))

    @property
    def group(self) -> str:
        return f"pairmine.{self.kind}"

    # --- registration

    def register(self, obj: T, *, priority: int | None = None) -> T:
        """Register ``obj`` under its name; a built-in keeps the priority of its list entry,
        anything else gets ``priority`` (default: the object's ``priority`` or the default)."""
        name = self._name_of(obj)
        entry = self._entries.get(name)
        if entry is not None and priority is None:
            entry.obj, entry.module, entry.entry_point = obj, None, None
            return obj
        prio = priority if priority is not None else _priority(obj, DEFAULT_PRIORITY)
        position = entry.position if entry is not None else self._next()
        self._add(_Entry(name=name, priority=prio, position=position, obj=obj))
        return obj

    def unregister(self, name: str) -> None:
        """Drop ``name`` (tests that register a temporary kind clean up with this)."""
        self._entries.pop(name, None)

    def forget_plugins(self) -> None:
        """Drop every plugin found so far; the next lookup reads the entry points again (after
        a package was installed or removed in this process)."""
        for name in [e.name for e in self._entries.values() if e.plugin]:
            del self._entries[name]
        self._plugins_seen = False
        _ALL_ENTRY_POINTS.clear()

    # --- lookup

    def names(self) -> list[str]:
        """Every name, in order (imports nothing but entry-point metadata)."""
        self._discover_plugins()
        return [e.name for e in self._sorted()]

    def __contains__(self, name: object) -> bool:
        self._discover_plugins()
        return name in self._entries

    def get(self, name: str) -> T:
        """The object called ``name``, or an error that lists the choices."""
        self._discover_plugins()
        entry = self._entries.get(name)
        if entry is None:
            raise self._error(f"unknown {self.what} {name!r}",
                              f"choose one of: {', '.join(self.names())}")
        return self._load(entry)

    def ordered(self) -> list[T]:
        """Every object, loaded, in priority order. A plugin that fails to load is skipped
        with a warning (``get`` of its name raises the error)."""
        self._discover_plugins()
        loaded: list[T] = []
        for entry in self._sorted():
            try:
                loaded.append(self._load(entry))
            except PairmineError as exc:
                if entry.entry_point is None:
                    raise
                log.warning("%s", exc.message)
        # loading may have re-prioritised plugins (their priority attribute)
        order = {e.name: (-e.priority, e.position) for e in self._entries.values()}
        return sorted(loaded, key=lambda obj: order[self._name_of(obj)])

    def __iter__(self) -> Iterator[T]:
        return iter(self.ordered())

    def items(self) -> list[tuple[str, T]]:
        """The objects loaded so far (built-ins imported, registered, plugins used), by name,
        in order; loads nothing."""
        return [(e.name, e.obj) for e in self._sorted() if e.obj is not None]

    def help(self, name: str) -> str:
        return self._help_of(self.get(name))

    # --- internals

    def _next(self) -> int:
        self._positions += 1
        return self._positions

    def _add(self, entry: _Entry[T]) -> None:
        self._entries[entry.name] = entry

    def _sorted(self) -> list[_Entry[T]]:
        return sorted(self._entries.values(), key=lambda e: (-e.priority, e.position))

    def _discover_plugins(self) -> None:
        if self._plugins_seen:
            return
        self._plugins_seen = True
        for ep in sorted(_entry_points(self.group), key=lambda ep: ep.name):
            if ep.name in self._entries:  # built-ins win: a plugin cannot shadow them
                log.warning("plugin %s = %s (group %s) ignored: a %s of that name exists",
                            ep.name, ep.value, self.group, self.what)
                continue
            self._add(_Entry(name=ep.name, priority=PLUGIN_PRIORITY, position=self._next(),
                             entry_point=ep, plugin=True))

    def _load(self, entry: _Entry[T]) -> T:
        if entry.obj is not None:
            return entry.obj
        if entry.module is not None:
            importlib.import_module(entry.module)  # registers its objects
            if entry.obj is None:
                raise PairmineError(f"built-in {self.what} {entry.name!r}: {entry.module} did "
                                    "not register it", "a bug in pairmine: please report it")
            return entry.obj
        ep = entry.entry_point
        where = f"the {self.what} plugin {entry.name!r} ({ep.value if ep else '?'})"
        try:
            assert ep is not None
            obj: T = ep.load()
            name = self._name_of(obj)
        except Exception as exc:
            raise self._error(f"{where} cannot be loaded: {_one_line(exc)}",
                              "fix or uninstall the package that provides it") from None
        if name != entry.name:
            raise self._error(f"{where} is named {name!r}",
                              "the entry point's name must be the object's name")
        entry.obj, entry.entry_point = obj, None
        entry.priority = _priority(obj, PLUGIN_PRIORITY)
        return obj


# every installed distribution's entry points, read once per process for all registries (the
# scan reads each distribution's metadata: a few hundred ms with many packages installed)
_ALL_ENTRY_POINTS: list[EntryPoint] = []


def _entry_points(group: str) -> list[EntryPoint]:
    if not _ALL_ENTRY_POINTS:
        from importlib.metadata import distributions

        seen: set[tuple[str, str]] = set()
        for dist in distributions():  # in sys.path order: the first of a name wins
            for ep in dist.entry_points:
                if ep.group.startswith("pairmine.") and (ep.group, ep.name) not in seen:
                    seen.add((ep.group, ep.name))
                    _ALL_ENTRY_POINTS.append(ep)
        if not _ALL_ENTRY_POINTS:  # none at all: remember that too
            _ALL_ENTRY_POINTS.append(_NO_PLUGINS)
    return [ep for ep in _ALL_ENTRY_POINTS if ep.group == group]


def _priority(obj: object, default: int) -> int:
    value = getattr(obj, "priority", default)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
