"""The library entry points behind `from meddenoise import ...` that are not simply re-exported."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def prepare(out: str | Path, *, source: str = "default", **options: Any) -> Path:
    """Prepare a data set into the folder `out` (as `meddenoise prepare --out OUT --source SOURCE ...`) and
    return it; `options` are the other `PrepareConfig` fields (`root`, `count`, `size`, `seed`, ...). An
    up-to-date folder is reused."""
    from meddenoise.config import config_from_mapping, save_config
    from meddenoise.data.cache import prepare as prepare_cache
    from meddenoise.data.prepare_config import PrepareConfig
    from meddenoise.data.sources import build_source
    from meddenoise.locking import folder_lock

    config = config_from_mapping(
        PrepareConfig, {"quiet": True, **options, "out": str(out), "source": source}, source="prepare()"
    )
    result = prepare_cache(build_source(config), config)
    with folder_lock(result.folder):
        save_config(config, Path(result.folder) / "config.json")
    return Path(result.folder)
