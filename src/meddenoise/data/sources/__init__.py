"""Data sources: each lists its images as `ImageRecord`s and either decodes one record (file sources, run in
worker processes) or renders pixels in batches (the default rendered source).

    source.name: str
    source.records() -> list[ImageRecord]
    source.decode(record) -> DecodedImage          # file sources
    source.render(records, size, device) -> (N, size, size) uint8   # rendered default
    source.notes: list[str]                        # optional: what the user should know (in the summary)

Source modules are imported on demand, so listing the names costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from meddenoise.errors import ConfigError
from meddenoise.registry import Registry

DEFAULT_RENDER_COUNT = 2000


# name -> builder(PrepareConfig) -> source; the names are PrepareConfig's `source` choices (a test checks)
SOURCES: Registry[Callable[[Any], Any]] = Registry("data source", parameter="source")


def build_source(config: Any):
    """The source named by a `PrepareConfig` (meddenoise.data.cache), with its options."""
    return SOURCES.get(config.source)(config)


@SOURCES.register("nih")
def _build_nih(config: Any):
    from meddenoise.data.sources.nih import NihSource

    return NihSource(
        root=config.root,
        count=config.count,
        seed=config.seed,
        view_position="" if config.view_position == "any" else config.view_position,
        nih_folders=config.nih_folders,
        csv_path=config.csv,
        max_pixels=config.max_pixels,
    )


@SOURCES.register("nih-sample")
def _build_nih_sample(config: Any):
    from meddenoise.data.sources.nih_sample import NihSampleSource

    return NihSampleSource(
        count=config.count,
        seed=config.seed,
        view_position="" if config.view_position == "any" else config.view_position,
        max_pixels=config.max_pixels,
    )


@SOURCES.register("folder")
def _build_folder(config: Any):
    from meddenoise.data.sources.folder import FolderSource

    return FolderSource(
        root=config.root,
        count=config.count,
        seed=config.seed,
        patient_from=config.patient_from,
        exclude=[config.out],
        max_pixels=config.max_pixels,
    )


@SOURCES.register("default")
def _build_rendered(config: Any):
    try:
        from meddenoise.data.sources.rendered import RenderedChestSource
    except ImportError as exc:
        raise ConfigError(
            f"the default source is not available in this installation ({exc}); "
            "use the nih or folder source with the folder of your images (root)",
            "source",
        ) from None
    options = parse_render_options(config.render_option, RenderedChestSource)
    count = config.count or DEFAULT_RENDER_COUNT
    return RenderedChestSource(count=count, seed=config.seed, **options)


def parse_render_options(items: list[str], cls: type) -> dict[str, Any]:
    """`KEY=VALUE` strings -> keyword arguments of `cls`, each converted to the type of its default value."""
    import inspect

    parameters = inspect.signature(cls).parameters
    allowed = [name for name in parameters if name not in ("self", "count", "seed")]
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in allowed:
            raise ConfigError(
                f"render_option {item!r}: expected KEY=VALUE with KEY one of "
                f"{', '.join(allowed) or '(none)'}",
                "render_option",
            )
        default = parameters[key].default
        options[key] = _convert_like(raw.strip(), default, key)
    return options


def _convert_like(raw: str, default: Any, key: str) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, (tuple, list)):
            return type(default)(type(default[0])(v) if default else v for v in raw.split(","))
    except (ValueError, TypeError):
        raise ConfigError(
            f"render_option {key}={raw!r}: expected a value like {default!r}", "render_option"
        ) from None
    return raw


def resolve_root(root: str, source_name: str) -> Path:
    from meddenoise.errors import DataError

    if not root:
        raise ConfigError(
            f"root is required for the {source_name} source: the folder that holds the images", "root"
        )
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(
            f"image folder {root} does not exist; give the folder that holds the images", parameter="root"
        )
    if not path.is_dir():
        raise DataError(
            f"image folder {root} is a file, not a folder; give the folder that holds the images",
            parameter="root",
        )
    return path.resolve()
