"""Name -> class registries for everything a schedule file may name in ``class:``.

A YAML file can only instantiate classes registered here: never ``globals()``, never an import path
taken from the file. Registration is a decorator, and a failed lookup names the kind, the bad name,
the nearest registered names and the full list.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, Optional, TypeVar

from .errors import listing, suggest

T = TypeVar("T")


class Registry:
    """A named mapping from class name (as written in YAML) to a constructor."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Callable] = {}

    def register(self, obj: Optional[T] = None, *, name: Optional[str] = None,
                 aliases: tuple = ()) -> T:
        """Register ``obj`` under its ``__name__`` (or ``name``) and any ``aliases``.

        Usable as ``@REG.register``, ``@REG.register(name="X", aliases=("Y",))`` or
        ``REG.register(cls, name="X")``.
        """
        def add(o):
            for key in (name or o.__name__,) + tuple(aliases):
                if key in self._entries and self._entries[key] is not o:
                    raise ValueError(f"{self.kind} '{key}' is already registered")
                self._entries[key] = o
            return o
        return add(obj) if obj is not None else add

    def get(self, key: str) -> Callable:
        try:
            return self._entries[key]
        except KeyError:
            raise KeyError(self.unknown_message(key)) from None

    def unknown_message(self, key: str) -> str:
        return (f"unknown {self.kind} class '{key}'{suggest(key, self._entries)}; "
                f"registered: {listing(self._entries, limit=40)}")

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list:
        return sorted(self._entries)


PRUNERS = Registry("pruner")
REGULARIZERS = Registry("regularizer")
LR_SCHEDULERS = Registry("lr_scheduler")
EXTENSIONS = Registry("extension")

# The schedule section each registry serves.
SECTIONS = {
    "pruners": PRUNERS,
    "regularizers": REGULARIZERS,
    "lr_schedulers": LR_SCHEDULERS,
    "extensions": EXTENSIONS,
}
