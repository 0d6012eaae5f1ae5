"""Name → factory registries filled by a decorator; unknown names list the valid ones."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from speakertrip.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A registry of named factories.

    >>> encoders = Registry("encoder")
    >>> @encoders.register("tiny")
    ... def build_tiny(): return "tiny"
    >>> encoders.get("tiny")()
    'tiny'
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; valid names: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
