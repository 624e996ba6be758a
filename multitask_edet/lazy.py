"""Lazily resolved package attributes (PEP 562): a package names its public API without importing it."""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, Sequence


def lazy_attributes(package: str, api: Mapping[str, str], defined: Sequence[str] = ()
                    ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose ``api`` maps each public name to its module;
    ``defined``: public names the package defines itself (listed by ``dir`` too)."""
    names = sorted(api) + list(defined)

    def __getattr__(name: str) -> Any:
        mod = api.get(name)
        if mod is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(mod), name)

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__
