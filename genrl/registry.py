"""Plain-dict registries with a `register("name")` decorator.

A user's own model, reward, algorithm or grouping strategy registers from
outside the package exactly the way the built-in ones do. A package may also
`provide` names whose module is imported only when the name is first asked
for (heavy adapters and reward models); the table of those modules lives in
the package's `__init__`, which the modules themselves never import, so that
lazy loading does not make an import cycle.
"""

from __future__ import annotations

import importlib
from typing import Callable, Generic, TypeVar

from genrl.plugins import HOW_TO_REGISTER

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._modules: dict[str, str] = {}  # name -> module that registers it when imported

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def provide(self, modules: dict[str, str]) -> None:
        """Names registered by importing a module, on first `get`: {name: module}."""
        self._modules.update(modules)

    def get(self, name: str) -> T:
        if name not in self._entries and name in self._modules:
            importlib.import_module(self._modules[name])
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}: {HOW_TO_REGISTER}; registered: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(set(self._entries) | set(self._modules))

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._modules
