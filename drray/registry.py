"""Name -> builder registries, so users plug in data sources, corruptions, raters and inner
models by name:
    @RATERS.register("my_rater")
    def build(row_shape, num_classes): ...

and then `rater: {arch: my_rater}` in YAML. The built-ins register the same way, when their
package is imported (drray.data.sources, drray.data.corruption, drray.models). The config does
not check names: an unknown one is refused where it is looked up, in one line naming the key.
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from drray.errors import ConfigError

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    def __init__(self, kind: str, key: str, also: tuple[str, ...] = ()):
        """kind: what an entry is, for messages; key: the config key that names one; also: names
        the key allows besides the entries (handled by the caller, e.g. 'auto')."""
        self.kind, self.key, self.also = kind, key, also
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
            allowed = ", ".join([*self.also, *sorted(self._entries)])
            raise ConfigError(f"{self.key}: unknown {self.kind} {name!r}; allowed: {allowed}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


DATA_SOURCES: Registry = Registry("source", "data.source")
RATERS: Registry = Registry("arch", "rater.arch", also=("auto",))
INNER_MODELS: Registry = Registry("arch", "inner.arch", also=("auto",))
CORRUPTIONS: Registry = Registry("corruption", "data.corruption")
