"""One registry, one factory: a model is one decorated class (or builder function), and the same list
drives `build_model`, the `meddenoise models` table and the parametrised tests.

    @register_model("unet")
    class UNet(Denoiser):
        "U-Net: ... (first docstring line is the table's description)"
        def __init__(self, base_channels: int = 64, depth: int = 5, ...): ...

The constructor's keyword arguments are the model's options; their defaults are the documented defaults.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from meddenoise.errors import ConfigError
from meddenoise.registry import Registry

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Builder
    description: str
    defaults: dict[str, Any]
    # Extra rows for the summary table: (label, options), e.g. the pruned U-Net++ heads.
    variants: tuple[tuple[str, dict[str, Any]], ...] = field(default=())


MODELS: Registry[ModelEntry] = Registry("model", parameter="model")


def register_model(
    name: str, *, variants: tuple[tuple[str, dict[str, Any]], ...] = ()
) -> Callable[[Builder], Builder]:
    """Register `builder` (a model class or a function returning a model) under `name`; its keyword defaults
    become the model's documented options and the first line of its own docstring the description."""

    def decorator(builder: Builder) -> Builder:
        signature = inspect.signature(builder)
        defaults = {
            key: parameter.default
            for key, parameter in signature.parameters.items()
            if parameter.default is not inspect.Parameter.empty
        }
        # `__doc__`, not `inspect.getdoc`: a class without a docstring would inherit its base class's.
        description = inspect.cleandoc(builder.__doc__ or name).splitlines()[0]
        MODELS.add(name, ModelEntry(name, builder, description, defaults, tuple(variants)))
        return builder

    return decorator


def list_models() -> list[str]:
    """Registered model names, in registration order."""
    return MODELS.names()


def get_model_entry(name: str) -> ModelEntry:
    return MODELS.get(name)


def build_model(name: str, base_channels: int = 64, **options: Any) -> nn.Module:
    """Build a registered model by name, e.g. `build_model("unetpp", base_channels=32,
    deep_supervision=True)`.

    Unknown options and invalid values raise `ConfigError` naming the model and the option.
    """
    entry = get_model_entry(name)
    unknown = sorted(set(options) - set(entry.defaults))
    if unknown:
        known = ", ".join(sorted(entry.defaults))
        raise ConfigError(f"model {name!r} has no option(s) {', '.join(unknown)}; its options are: {known}")
    if not isinstance(base_channels, int) or base_channels < 1:
        raise ConfigError(f"model {name!r}: base_channels must be a positive integer; got {base_channels!r}")
    try:
        return entry.builder(base_channels=base_channels, **options)
    except ValueError as exc:
        raise ConfigError(f"model {name!r}: {exc}") from None
