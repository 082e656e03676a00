"""Name -> builder registries, so users plug in data sources, raters and inner models by name.

    from drray.registry import RATERS
    @RATERS.register("my_rater")
    def build(input_shape, num_classes): ...

and then `rater: {arch: my_rater}` in YAML. The built-ins register the same way.
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(fn: T) -> T:
            if name in self._entries and self._entries[name] is not fn:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = fn
            return fn

        return decorate

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self._entries))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


DATA_SOURCES: Registry = Registry("data source")
RATERS: Registry = Registry("rater arch")
INNER_MODELS: Registry = Registry("inner arch")
CORRUPTIONS: Registry = Registry("corruption kind")
