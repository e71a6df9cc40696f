"""Noise operators (the paper's Gaussian obfuscation, Poisson, Poisson-Gaussian), seeded per image.

    from meddenoise.noise import build_noise
    op = build_noise("gaussian", mean=0.1, std=0.2)
    noisy = op(clean, image_keys, seed=0)                       # fixed: same noise everywhere, every time
    noisy = op(clean, image_keys, seed=0, epoch=3, mode="fresh") # new noise each epoch

See docs/noise.md for the model, the meaning of "10% noise" and the effect of clamping.
"""

from __future__ import annotations

from meddenoise.noise.operators import (
    GENERATOR,
    KINDS,
    MODES,
    GaussianNoise,
    NoiseOperator,
    PoissonGaussianNoise,
    PoissonNoise,
    build_noise,
)

__all__ = [
    "GENERATOR",
    "KINDS",
    "MODES",
    "GaussianNoise",
    "NoiseOperator",
    "PoissonGaussianNoise",
    "PoissonNoise",
    "build_noise",
]
