"""One registry per grammar axis (mixers, routes, tokenizers, readouts, layouts, presets).

A registry maps a name to an entry; `get` fails with a did-you-mean message that lists every known name, and a
duplicate registration raises, so two files can never silently claim the same name.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → entry for one axis of the grammar."""

    def __init__(self, axis: str) -> None:
        self.axis = axis
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.axis} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        """`@REG.decorator("name")` registers the decorated object under `name`."""
        return lambda entry: self.register(name, entry)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(unknown_name_message(self.axis, name, self.names())) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def unknown_name_message(axis: str, name: object, known: list[str]) -> str:
    """'unknown mixer 'ssn'; did you mean 'ssm'? known: attention, gated_conv, mlstm, ssm'."""
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {axis} {name!r}{hint} known: {', '.join(known) or '(none)'}"
