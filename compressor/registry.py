"""Name -> class registries for everything a schedule file may name in ``class:``.

A YAML file can only instantiate classes registered here: never ``globals()``, never an import path
taken from the file. Registration is a decorator, and a failed lookup names the kind, the bad name,
the nearest registered names and the full list. Besides the five schedule sections, the ranking
criteria a structured pruner takes by name (``criterion: L1``) are a registry too, looked up in any
letter case and under a few informal spellings that are accepted but not listed.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, Optional, TypeVar

from .errors import listing, suggest

T = TypeVar("T")


class Registry:
    """A named mapping from class name (as written in YAML) to a constructor."""

    def __init__(self, kind: str, *, ignore_case: bool = False):
        self.kind = kind
        self.ignore_case = ignore_case
        self._entries: Dict[str, Callable] = {}
        # Other accepted spellings -> registered name; found by ``find`` but never listed.
        self._spellings: Dict[str, str] = {}

    def register(self, obj: Optional[T] = None, *, name: Optional[str] = None,
                 aliases: tuple = (), spellings: tuple = ()) -> T:
        """Register ``obj`` under its ``__name__`` (or ``name``) and any ``aliases``.

        Usable as ``@REG.register``, ``@REG.register(name="X", aliases=("Y",))`` or
        ``REG.register(cls, name="X")``. ``spellings`` are accepted by ``find`` and ``get`` but,
        unlike aliases, not listed by ``names()``.
        """
        def add(o):
            primary = name or o.__name__
            for key in (primary,) + tuple(aliases):
                if key in self._entries and self._entries[key] is not o:
                    raise ValueError(f"{self.kind} '{key}' is already registered")
                self._entries[key] = o
            for key in spellings:
                self._spellings[key] = primary
            return o
        return add(obj) if obj is not None else add

    def find(self, key: str) -> Optional[Callable]:
        """The entry for ``key``: its name, a spelling, or (``ignore_case``) either in any case."""
        if key in self._entries:
            return self._entries[key]
        if key in self._spellings:
            return self._entries[self._spellings[key]]
        if self.ignore_case and isinstance(key, str):
            folded = key.lower()
            for table in (self._entries, self._spellings):
                for k in table:
                    if k.lower() == folded:
                        return self.find(k)
        return None

    def get(self, key: str) -> Callable:
        found = self.find(key)
        if found is None:
            raise KeyError(self.unknown_message(key))
        return found

    def unknown_message(self, key: str) -> str:
        return (f"unknown {self.kind} class '{key}'{suggest(key, self._entries)}; "
                f"registered: {listing(self._entries, limit=40)}")

    def __contains__(self, key: str) -> bool:
        return self.find(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list:
        return sorted(self._entries)


PRUNERS = Registry("pruner")
REGULARIZERS = Registry("regularizer")
LR_SCHEDULERS = Registry("lr_scheduler")
EXTENSIONS = Registry("extension")
QUANTIZERS = Registry("quantizer")
CRITERIA = Registry("criterion", ignore_case=True)   # structure ranking: pruners/criteria.py

# The schedule section each registry serves.
SECTIONS = {
    "pruners": PRUNERS,
    "regularizers": REGULARIZERS,
    "lr_schedulers": LR_SCHEDULERS,
    "extensions": EXTENSIONS,
    "quantizers": QUANTIZERS,
}
