"""Noise operators (the paper's Gaussian obfuscation, Poisson, Poisson-Gaussian), seeded per image.

    from meddenoise.noise import NoiseSpec, build_noise
    spec = NoiseSpec(kind="gaussian", mean=0.1, std=0.2)  # what the noise is (config, files, CLI group)
    op = spec.build()                                      # == build_noise("gaussian", mean=0.1, std=0.2)
    noisy = op(clean, image_keys, seed=spec.seed)          # fixed: same noise everywhere, every time
    noisy = op(clean, image_keys, seed=0, epoch=3, mode="fresh")  # new noise each epoch

See docs/noise.md for the model, the meaning of "10% noise" and the effect of clamping. `NoiseSpec` does not
import torch; the operators are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from meddenoise.noise.spec import COPY_SEED_STRIDE, KINDS, MODES, PAPER_STDS, NoiseSpec

_OPERATOR_NAMES = (
    "GENERATOR",
    "GaussianNoise",
    "NoiseOperator",
    "PoissonGaussianNoise",
    "PoissonNoise",
    "build_noise",
)

__all__ = ["COPY_SEED_STRIDE", "KINDS", "MODES", "PAPER_STDS", "NoiseSpec", *_OPERATOR_NAMES]


def __getattr__(name: str) -> Any:
    if name in _OPERATOR_NAMES:
        return getattr(importlib.import_module("meddenoise.noise.operators"), name)
    raise AttributeError(f"module 'meddenoise.noise' has no attribute {name!r}")
