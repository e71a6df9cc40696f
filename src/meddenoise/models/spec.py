"""`ModelSpec`: which network a run trains and with which options, as one value.

Training builds its model from it, checkpoints store it (`to_dict()`), and loading a trained model rebuilds
it through the registry's `build_model` (`ModelSpec.from_metadata(...).build()`), so there is no second way
to construct a network.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str = "unet"
    base_channels: int = 64
    depth: int = 0  # 0: the model's own default
    norm: str = "batch"
    deep_supervision: bool = True
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # any other constructor option

    def build_options(self) -> dict[str, Any]:
        """Keyword arguments of `build_model(self.name, ...)`. A field left at its default is passed only to a
        model that has that option, so one spec type serves U-Net (depth, norm), U-Net++ (also deep
        supervision) and DnCNN (neither); a field set to anything else must be an option of the model, or a
        `ConfigError` names it and the model's options (as timm refuses unexpected keyword arguments)."""
        from meddenoise.models.registry import get_model_entry

        accepted = get_model_entry(self.name).defaults
        options: dict[str, Any] = {"base_channels": self.base_channels}
        for key, value in self._typed_options().items():
            if key in accepted:
                options[key] = value
            elif value != _FIELD_DEFAULTS[key]:
                from meddenoise.errors import ConfigError

                known = ", ".join(sorted(accepted))
                raise ConfigError(
                    f"model {self.name!r} has no option {key} ({key}={value!r}); its options are: {known}",
                    key,
                )
        options.update(self.options)
        return options

    def _typed_options(self) -> dict[str, Any]:
        wanted: dict[str, Any] = {"norm": self.norm, "deep_supervision": self.deep_supervision}
        if self.depth:
            wanted["depth"] = self.depth
        return wanted

    def check_input_size(self, height: int, width: int) -> None:
        """Refuse a depth the images cannot take, before the network is built: each U-Net / U-Net++ level
        halves the image and the input is padded to a multiple of 2^(depth-1), so a deeper network only adds
        padding and channels (base x 2^(depth-1): `depth 40` asks for more memory than any machine has)."""
        depth = self.build_options().get("depth")
        if not isinstance(depth, int) or isinstance(depth, bool):
            return  # a model without levels (DnCNN)
        deepest = min(height, width).bit_length()  # 2^(depth-1) <= side: 7 at 64 x 64 (1 x 1 deepest)
        if depth > deepest:
            from meddenoise.errors import ConfigError

            raise ConfigError(
                f"depth {depth} is too deep for {height}x{width} images: each level of {self.name} halves "
                f"the image, so at most depth {deepest} fits (1x1 at the deepest level); use 2 to {deepest}",
                "depth",
            )

    def build(self, **overrides: Any) -> Any:
        """The network (an `nn.Module`), through the registry; `overrides` e.g. `head=2` for a pruned
        U-Net++."""
        from meddenoise.models.registry import build_model

        return build_model(self.name, **{**self.build_options(), **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelSpec:
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> ModelSpec:
        """From checkpoint metadata: its `model_spec`, or (older checkpoints) `model` and the resolved
        `model_options` it was built with."""
        if isinstance(metadata.get("model_spec"), dict):
            return cls.from_dict(metadata["model_spec"])._without_ignored_fields()
        options = dict(metadata.get("model_options") or {})
        fields = {
            key: options.pop(key)
            for key in ("base_channels", "depth", "norm", "deep_supervision")
            if key in options
        }
        return cls(name=metadata["model"], **fields, options=options)

    def _without_ignored_fields(self) -> ModelSpec:
        """Checkpoints written while unaccepted settings were silently ignored may store one (a DnCNN with
        depth 3); its network was built without it, so it is reset to the default rather than refused."""
        from meddenoise.models.registry import get_model_entry

        accepted = get_model_entry(self.name).defaults
        ignored = {key: _FIELD_DEFAULTS[key] for key in self._typed_options() if key not in accepted}
        return dataclasses.replace(self, **ignored) if ignored else self


# A typed field at its default counts as not set (timm drops None keyword arguments the same way).
_FIELD_DEFAULTS = {
    field.name: field.default
    for field in dataclasses.fields(ModelSpec)
    if field.name in ("depth", "norm", "deep_supervision")
}
