"""One small registry for models and distillers: names in, constructors out, clear errors.

A registry knows each thing by one canonical name; aliases (the spellings other code bases use)
resolve to it through `canonical`, so configs, results and reports all see one name.
"""
from __future__ import annotations

from typing import Callable, Generic, Optional, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name no one registered; the message lists the known names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._canonical: dict[str, str] = {}  # every known spelling -> its canonical name
        self._alias_notes: dict[str, str] = {}  # alias -> why it maps where it does (optional)

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            for key in (name, *aliases):
                if key in self._canonical:
                    raise ValueError(f"{self.kind} {key!r} registered twice")
                self._canonical[key] = name
            self._items[name] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        self.register(name)(obj)

    def alias(self, alias: str, name: str, note: str = "") -> None:
        """Make `alias` another spelling of the registered `name` (`note` says why, for notices)."""
        if alias in self._canonical:
            raise ValueError(f"{self.kind} {alias!r} registered twice")
        if name not in self._items:
            raise ValueError(f"{self.kind} alias {alias!r} -> {name!r}: no such {self.kind}")
        self._canonical[alias] = name
        if note:
            self._alias_notes[alias] = note

    def canonical(self, name: str) -> str:
        """The canonical name of `name` (itself, or what an alias stands for)."""
        try:
            return self._canonical[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            ) from None

    def alias_note(self, name: str) -> Optional[str]:
        """The note registered with an alias (None for canonical names and plain aliases)."""
        return self._alias_notes.get(name)

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        return name in self._canonical

    def names(self) -> list[str]:
        """Canonical names, sorted (aliases are not listed)."""
        return sorted(self._items)

    def aliases(self) -> dict[str, str]:
        """alias -> canonical name, for every alias."""
        return {a: n for a, n in self._canonical.items() if a != n}
