"""Named registries: figures, samplers and optimal-loss estimators, each registered once.

A registry maps a name to its entry (a dataclass: the function and what the spec, the CLI and
the workflow need to know about it). The spec's choices, the CLI's ``choices``/help and the
Snakemake rules are read from it, so adding one is its function and its registration
(docs/contributing.md). ``check`` is how the spec loader refuses an unknown name: one line
with the file, the key, the value and the known names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from diffobj.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> entry, in registration order (the order choices and help list them in)."""

    def __init__(self, what: str):
        self.what = what  # "figure", "sampler", "estimator": for messages
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> T:
        """Unregister (tests that register a toy entry)."""
        return self._entries.pop(name)

    def decorator(self, make: Callable[..., T], name: str, **fields) -> Callable:
        """``@registry.decorator(Entry, name, ...)`` on a function: registers
        ``Entry(name=name, fn=function, **fields)`` and returns the function unchanged."""

        def register(fn: Callable) -> Callable:
            self.add(name, make(name=name, fn=fn, **fields))
            return fn

        return register

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(f"unknown {self.what} {name!r} (known: {self.names()})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self):
        return self._entries.items()

    def names(self, keep: Callable[[T], bool] | None = None) -> list[str]:
        return [n for n, e in self._entries.items() if keep is None or keep(e)]

    def check(self, value: str, where: str, known: list[str] | None = None) -> None:
        """UserError ``WHERE: unknown <what> 'value' (known: [...])`` unless registered (and,
        given ``known``, among those)."""
        known = self.names() if known is None else known
        if value not in known:
            raise UserError(f"{where}: unknown {self.what} {value!r} (known: {known})")
