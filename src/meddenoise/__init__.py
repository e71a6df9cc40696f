"""meddenoise: train, evaluate and audit deep denoisers for medical images.

    from meddenoise import prepare, train, TrainConfig, NoiseSpec, evaluate_run, obfuscate, denoise

The names are loaded on first use, so `import meddenoise` (and `meddenoise --help`) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC = {
    "prepare": "meddenoise.api",
    "fit": "meddenoise.engine.train",
    "train": "meddenoise.engine.launch",  # fit with any strategy: DDP outside torchrun starts the workers
    "TrainConfig": "meddenoise.engine.config",
    "NoiseSpec": "meddenoise.noise.spec",
    "ModelSpec": "meddenoise.models.spec",
    "build_model": "meddenoise.models.registry",
    "build_noise": "meddenoise.noise.operators",
    "load_trained_model": "meddenoise.engine.checkpoint",
    "CheckpointMetadata": "meddenoise.engine.checkpoint",
    "evaluate_run": "meddenoise.evaluation.runs",
    "denoise": "meddenoise.inference",
    "obfuscate": "meddenoise.release",
    "ObfuscateConfig": "meddenoise.release",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'meddenoise' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
