"""One small registry type for every name → object table of the project.

Advantage estimators, policy losses and loss-aggregation modes (``vapo.algos``), tasks
(``vapo.tasks``) and theory-lab experiments (``vapo.theory``) are each a :class:`Registry`:

>>> from vapo.registry import Registry
>>> SHAPES: Registry[int] = Registry("shape", where="shape.name")
>>> @SHAPES.register("square")
... def _square() -> int:
...     return 4
>>> SHAPES.get("square")()
4
>>> SHAPES.names()
['square']

``get`` of an unknown name raises :class:`vapo.errors.VapoError` listing the known names with
a did-you-mean hint. ``declare(name, module)`` makes a name known before the module that registers
it is imported (the module is imported on the first ``get``): a config can check names, and refuse
a typo, without importing torch. A registry is a read-only mapping (``in``, iteration, ``reg[name]``,
``len``); ``pop`` exists for tests and plug-ins that register temporary entries.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from vapo.errors import VapoError, unknown_name_error

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Mapping[str, T], Generic[T]):
    """A name → object table.

    Args:
        kind: what the entries are, for error messages ("advantage estimator", "task", ...).
        where: where a user wrote the name (config field, CLI argument), for error messages.
    """

    def __init__(self, kind: str, *, where: str | None = None):
        self.kind = kind
        self.where = where
        self._items: dict[str, T] = {}
        self._declared: dict[str, str] = {}  # name -> module whose import registers it

    def declare(self, name: str, module: str) -> None:
        """Make ``name`` known now and registered by importing ``module`` on its first ``get``."""
        if name not in self._items:
            self._declared[name] = module

    def _load(self, name: str) -> None:
        module = self._declared.pop(name, None)
        if module is None:
            return
        importlib.import_module(module)
        if name not in self._items:
            raise VapoError(f"{self.kind} {name!r} is declared in {module} but importing it did not register it",
                            where=f"{self.kind} registry", fix=f"register {name!r} in {module}, or fix the declaration")

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")`` adds the decorated object under ``name`` and
        returns it unchanged. Registering a taken name with another object raises VapoError
        (registering the same object twice is a no-op, so re-importing a module is safe)."""
        if not isinstance(name, str) or not name:
            raise VapoError(f"a {self.kind} name must be a non-empty string, got {name!r}",
                            where=f"register({name!r})", fix="pass a name such as 'my_name'")

        def deco(obj: T) -> T:
            self._declared.pop(name, None)
            old = self._items.get(name)
            if old is not None and old is not obj:
                raise VapoError(f"{self.kind} {name!r} is already registered",
                                where=f"register({name!r})",
                                fix="choose another name (names are global)")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:  # type: ignore[override]  # raises instead of a default
        """The object registered as ``name``; an unknown name raises VapoError with the known
        names and a did-you-mean hint."""
        try:
            return self[name]
        except (KeyError, TypeError):
            raise unknown_name_error(self.kind, str(name), self.names(), where=self.where) from None

    def names(self) -> list[str]:
        """Registered names in registration order, then declared ones not imported yet (the two
        never overlap: registering a name takes it off the declared ones)."""
        return [*self._items, *self._declared]

    def pop(self, name: str, default: T | None = None) -> T | None:
        """Remove ``name`` and return its object (``default`` when absent), as ``dict.pop``;
        for tests and plug-ins that register temporary entries."""
        self._declared.pop(name, None)
        return self._items.pop(name, default)

    def __getitem__(self, name: str) -> T:
        if isinstance(name, str) and name not in self._items:
            self._load(name)  # a declared name: import the module that registers it
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._declared

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"
