"""Classical baselines with a model's inference signature (see classical.py); DnCNN lives in
meddenoise.models."""

from __future__ import annotations

from meddenoise.baselines.classical import (
    BASELINES,
    DEFAULT_GRIDS,
    DEFAULT_PARAMS,
    ClassicalBaseline,
    build_baseline,
    tune_baseline,
)

__all__ = [
    "BASELINES",
    "DEFAULT_GRIDS",
    "DEFAULT_PARAMS",
    "ClassicalBaseline",
    "build_baseline",
    "tune_baseline",
]
