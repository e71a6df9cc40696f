"""`Registry`: named implementations of one kind, the same way for models, training targets, data sources,
noise kinds, classical baselines and training pipelines.

    MODELS = Registry("model", parameter="model")
    @MODELS.register("unet")
    class UNet(...): ...
    MODELS.get("unet")          # or ConfigError: unknown model 'x'; available: unet, ...
    MODELS.names()              # registration order; the CLI's choices and the `meddenoise models` table

`plugins` are modules imported on first use that register more entries (the clean-free targets of
`meddenoise.privacy.targets`): the registry's owner does not import them, so layers stay one-way.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from meddenoise.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, *, parameter: str | None = None, plugins: Sequence[str] = ()) -> None:
        self.kind = kind
        self.parameter = parameter
        self._plugins = list(plugins)
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Forget an entry (tests register throw-away ones)."""
        self._entries.pop(name, None)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str) -> T:
        self._load_plugins()
        if name not in self._entries:
            known = ", ".join(self._entries) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; available: {known}", self.parameter)
        return self._entries[name]

    def names(self) -> list[str]:
        self._load_plugins()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _load_plugins(self) -> None:
        while self._plugins:
            module_name = self._plugins.pop(0)
            try:
                importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                # Only a missing plugin module is optional; an import error inside it is a bug to surface.
                if exc.name != module_name:
                    raise
