"""Attributes of a package imported on first use, so `import pairmine` stays light."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, table: dict[str, tuple[str, str]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that resolves ``name`` to ``table[name] = (module, attribute)``
    by importing that module when the name is first asked for."""

    def __getattr__(name: str) -> Any:
        if name in table:
            import importlib

            module, attr = table[name]
            return getattr(importlib.import_module(module), attr)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
