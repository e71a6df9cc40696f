"""What a run is: the model options and noise settings stored with its weights, and the settings that must
match for `--resume` to continue it (the rest, e.g. `--epochs`, may change between the two invocations)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from meddenoise.config import config_to_dict
from meddenoise.engine.config import MODEL_FIELDS, TrainConfig
from meddenoise.errors import MeddenoiseError

if TYPE_CHECKING:
    from meddenoise.engine.runtime import Runtime

IDENTITY_FIELDS = (
    *MODEL_FIELDS,
    "noise",
    "target",
    "target_options",
    "batch_size",
    "optimizer",
    "loss",
    "seed",
    "train_split",
    "limit_train",
)


def run_identity(config: TrainConfig, runtime: Runtime) -> dict[str, Any]:
    values = config_to_dict(config)
    identity = {name: values[name] for name in IDENTITY_FIELDS}
    identity["data_parallel_width"] = runtime.data_parallel_width
    return identity


def check_identity(saved: dict[str, Any], current: dict[str, Any], source: Path) -> None:
    differences = [
        f"{name}: checkpoint {saved.get(name)!r} vs now {value!r}"
        for name, value in current.items()
        if saved.get(name) != value
    ]
    if differences:
        raise MeddenoiseError(
            f"cannot resume from {source}: it was trained with other settings ({'; '.join(differences)}); "
            "use the same options as the original run or start a new run in another output folder",
            parameter="out",
        )
