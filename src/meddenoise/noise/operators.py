"""Noise operators: the paper's additive Gaussian obfuscation, plus Poisson (quantum) and Poisson-Gaussian.

Every operator has one call, `op(clean, image_keys, *, seed, epoch=None, mode="fixed") -> noisy`. The noise
of an image is a pure function of (seed, image key, noise level) in `fixed` mode, and also of the epoch in
`fresh` mode; it is generated in the batch on clean's device by `meddenoise.noise.counter_rng`, so it is
identical on every device, process, rank and rerun, and whatever other images share the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from meddenoise.errors import ConfigError
from meddenoise.noise import counter_rng
from meddenoise.noise.spec import (
    check_dose,
    check_int,
    check_kind,
    check_mean,
    check_mode,
    check_std,
)
from meddenoise.registry import Registry

# Recorded with every description: a change to how bits become noise must change this name.
GENERATOR = "threefry2x32-20; box-muller with series log/sincos; v1"

# Counter streams, so the Poisson and Gaussian parts of one pixel never share random bits.
_STREAM_GAUSSIAN = 0
_STREAM_POISSON_UNIFORM = 1
_STREAM_POISSON_NORMAL = 2

# Poisson counts are sampled exactly (inversion) up to this mean, above it from a skew-corrected normal.
EXACT_POISSON_MAX_MEAN = 24.0
_EXACT_POISSON_MAX_COUNT = int(EXACT_POISSON_MAX_MEAN + 12 * math.sqrt(EXACT_POISSON_MAX_MEAN) + 20)


def format_number(value: float) -> str:
    """Shortest exact text of a float for labels: 0.1 -> '0.1', 1000.0 -> '1000', -0.0 -> '0'."""
    value = float(value) + 0.0
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


class NoiseOperator:
    """Base class: subclasses define `kind`, `noise_level`, `parameters()` and `_noisy(clean, key0, key1)`."""

    kind = "base"

    def __init__(self, clamp: bool = True) -> None:
        self.clamp = bool(clamp)

    @property
    def noise_level(self) -> str:
        raise NotImplementedError

    def parameters(self) -> dict[str, Any]:
        raise NotImplementedError

    def _noisy(self, clean: torch.Tensor, key0: torch.Tensor, key1: torch.Tensor) -> torch.Tensor:
        """(B, N) clean -> (B, N) noisy, unclamped, in clean's dtype (float32 or float64)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "noise_level": self.noise_level,
            **self.parameters(),
            "clamp": self.clamp,
            "generator": GENERATOR,
        }

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.parameters().items())
        return f"{type(self).__name__}({options}, clamp={self.clamp})"

    def add_noise_unclamped(
        self,
        clean: torch.Tensor,
        image_keys: Any,
        *,
        seed: int,
        epoch: int | None = None,
        mode: str = "fixed",
    ) -> torch.Tensor:
        """The noisy image before clamping (same shape, dtype and device as `clean`)."""
        return self._apply(clean, image_keys, seed, epoch, mode, clamp=False)

    def __call__(
        self,
        clean: torch.Tensor,
        image_keys: Any,
        *,
        seed: int,
        epoch: int | None = None,
        mode: str = "fixed",
    ) -> torch.Tensor:
        """Noisy copies of `clean` (B, C, H, W), float in [0, 1]; clamped to [0, 1] if the operator clamps."""
        return self._apply(clean, image_keys, seed, epoch, mode, clamp=self.clamp)

    def stream_key(self, seed: int, epoch: int | None, mode: str) -> tuple[int, int]:
        """The 64-bit key that, with an image key, determines the noise (host-side, no tensors)."""
        seed = check_int(seed, "noise.seed")
        check_mode(mode)
        if mode == "fresh":
            if epoch is None:
                raise ConfigError(
                    "noise mode 'fresh' draws new noise each epoch, so it needs the epoch number",
                    "noise.mode",
                )
            epoch = check_int(epoch, "epoch")
        else:
            epoch = None  # fixed noise must not change with the epoch
        return counter_rng.derive_key("meddenoise.noise", GENERATOR, self.noise_level, mode, epoch, seed)

    def _apply(
        self, clean: torch.Tensor, image_keys: Any, seed: int, epoch: int | None, mode: str, clamp: bool
    ) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # A compiler may fuse a * b + c into one rounding (FMA), which changes the last bits and breaks
            # "identical on every device". (`torch.compiler.disable` would import dynamo at import time.)
            raise RuntimeError("noise operators must run outside torch.compile; compile the model only")
        stream_key = self.stream_key(seed, epoch, mode)
        keys = _check_inputs(clean, image_keys)
        key0, key1 = counter_rng.image_stream_keys(keys, stream_key)  # (B, 1) each
        compute_dtype = torch.float64 if clean.dtype == torch.float64 else torch.float32
        flat = clean.reshape(clean.shape[0], -1).to(compute_dtype)  # (B, C, H, W) -> (B, C*H*W)
        noisy = self._noisy(flat, key0, key1)
        if clamp:
            noisy = noisy.clamp_(0.0, 1.0)
        return noisy.reshape(clean.shape).to(clean.dtype)


class GaussianNoise(NoiseOperator):
    """The paper's obfuscation: x + N(mean, std^2), then clamped to [0, 1] (optional)."""

    kind = "gaussian"

    def __init__(self, mean: float = 0.1, std: float = 0.2, clamp: bool = True) -> None:
        super().__init__(clamp)
        self.mean = check_mean(mean)
        self.std = check_std(std)

    @property
    def noise_level(self) -> str:
        return f"gaussian_m{format_number(self.mean)}_s{format_number(self.std)}"

    def parameters(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std}

    def _noisy(self, clean: torch.Tensor, key0: torch.Tensor, key1: torch.Tensor) -> torch.Tensor:
        normals = counter_rng.standard_normal(key0, key1, clean.shape[1], _STREAM_GAUSSIAN)
        return clean + (normals * self.std + self.mean).to(clean.dtype)


class PoissonNoise(NoiseOperator):
    """Quantum noise at a dose: counts ~ Poisson(dose * x), noisy = counts / dose (mean x, variance x / dose).

    `dose` is the expected photon count per pixel at full intensity (x = 1).
    """

    kind = "poisson"

    def __init__(self, dose: float, clamp: bool = True) -> None:
        super().__init__(clamp)
        self.dose = check_dose(dose)

    @property
    def noise_level(self) -> str:
        return f"poisson_d{format_number(self.dose)}"

    def parameters(self) -> dict[str, Any]:
        return {"dose": self.dose, "poisson_exact_below_mean": EXACT_POISSON_MAX_MEAN}

    def _noisy(self, clean: torch.Tensor, key0: torch.Tensor, key1: torch.Tensor) -> torch.Tensor:
        rates = clean.to(torch.float64).clamp(min=0.0) * self.dose
        counts = poisson_counts(rates, key0, key1)
        return (counts / self.dose).to(clean.dtype)


class PoissonGaussianNoise(PoissonNoise):
    """Quantum plus electronic noise: Poisson(dose * x) / dose + N(mean, std^2), then clamped (optional)."""

    kind = "poisson_gaussian"

    def __init__(self, dose: float, mean: float = 0.0, std: float = 0.01, clamp: bool = True) -> None:
        super().__init__(dose, clamp)
        self.mean = check_mean(mean)
        self.std = check_std(std)

    @property
    def noise_level(self) -> str:
        return (
            f"poisson_gaussian_d{format_number(self.dose)}"
            f"_m{format_number(self.mean)}_s{format_number(self.std)}"
        )

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "mean": self.mean, "std": self.std}

    def _noisy(self, clean: torch.Tensor, key0: torch.Tensor, key1: torch.Tensor) -> torch.Tensor:
        rates = clean.to(torch.float64).clamp(min=0.0) * self.dose
        quantum = poisson_counts(rates, key0, key1) / self.dose
        normals = counter_rng.standard_normal(key0, key1, clean.shape[1], _STREAM_GAUSSIAN)
        return (quantum + normals * self.std + self.mean).to(clean.dtype)


def poisson_counts(rates: torch.Tensor, key0: torch.Tensor, key1: torch.Tensor) -> torch.Tensor:
    """(B, N) float64 Poisson counts for (B, N) float64 rates, reproducible across devices.

    Small rates (<= EXACT_POISSON_MAX_MEAN) by exact inversion of the CDF; larger ones from the normal
    approximation with its Cornish-Fisher skew term, lambda + sqrt(lambda) z + (z^2 - 1) / 6, rounded (its
    variance exceeds lambda by about 0.14, under 0.6% at these rates).
    """
    count = rates.shape[1]
    counts = torch.zeros_like(rates)
    small = rates <= EXACT_POISSON_MAX_MEAN
    if bool(small.any()):
        uniforms = counter_rng.uniform_open(key0, key1, count, _STREAM_POISSON_UNIFORM)
        counts[small] = _poisson_by_inversion(rates[small], uniforms[small])
    large = ~small
    if bool(large.any()):
        normals = counter_rng.standard_normal(key0, key1, count, _STREAM_POISSON_NORMAL)[large]
        large_rates = rates[large]
        approximate = large_rates + torch.sqrt(large_rates) * normals + (normals * normals - 1.0) / 6.0
        counts[large] = torch.floor(approximate + 0.5).clamp_(min=0.0)
    return counts


def _poisson_by_inversion(rates: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Smallest k with CDF(k) >= u, for rates <= EXACT_POISSON_MAX_MEAN; (M,) float64 -> (M,) float64."""
    probability = counter_rng.exp_negative(rates)  # P(K = 0)
    cumulative = probability.clone()
    counts = torch.zeros_like(rates)
    for k in range(1, _EXACT_POISSON_MAX_COUNT + 1):
        above = uniforms > cumulative
        # Stop once no sample can move any further (checked every 8 steps: each check syncs a GPU).
        if k % 8 == 1 and not bool(above.any()):
            break
        counts += above.to(counts.dtype)
        probability = probability * rates / float(k)
        cumulative = cumulative + probability
    return counts


def _check_inputs(clean: Any, image_keys: Any) -> torch.Tensor:
    if not isinstance(clean, torch.Tensor) or not clean.is_floating_point():
        raise TypeError("noise operators take a floating-point tensor of clean images in [0, 1]")
    if clean.dim() < 2:
        raise ValueError(f"clean images must be (B, C, H, W) or (B, N); got shape {tuple(clean.shape)}")
    keys = torch.as_tensor(image_keys, device=clean.device)
    if keys.is_floating_point() or keys.dtype == torch.bool:
        raise TypeError("image_keys must be integers (the prepared cache's image_key column)")
    keys = keys.to(torch.int64).reshape(-1)
    if keys.shape[0] != clean.shape[0]:
        raise ValueError(f"got {keys.shape[0]} image keys for a batch of {clean.shape[0]} images")
    return keys


def build_noise(
    kind: str = "gaussian",
    mean: float = 0.1,
    std: float = 0.2,
    clamp: bool = True,
    dose: float | None = None,
    **options: Any,
) -> NoiseOperator:
    """The noise operator `kind` ("gaussian", "poisson", "poisson_gaussian").

    `mean`/`std` are the Gaussian part (ignored by "poisson"), `dose` the photons per pixel at full intensity
    (needed by the Poisson kinds, ignored by "gaussian"). Unknown options are errors.
    """
    if options:
        raise ConfigError(f"unknown noise option(s): {', '.join(sorted(options))}", "noise")
    check_kind(kind)  # the registry's error when unknown, as NoiseSpec gives
    if not isinstance(clamp, bool):
        raise ConfigError(f"noise.clamp must be true or false; got {clamp!r}", "noise.clamp")
    return OPERATORS.get(kind)(mean=mean, std=std, clamp=clamp, dose=dose)


# kind -> builder(mean, std, clamp, dose); the names are NoiseSpec KINDS (kept torch-free for the CLI)
OPERATORS: Registry[Callable[..., NoiseOperator]] = Registry("noise kind", parameter="noise.kind")
OPERATORS.add("gaussian", lambda mean, std, clamp, dose: GaussianNoise(mean=mean, std=std, clamp=clamp))
OPERATORS.add("poisson", lambda mean, std, clamp, dose: PoissonNoise(dose=dose, clamp=clamp))
OPERATORS.add(
    "poisson_gaussian",
    lambda mean, std, clamp, dose: PoissonGaussianNoise(dose=dose, mean=mean, std=std, clamp=clamp),
)
