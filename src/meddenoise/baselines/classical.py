"""Classical denoisers called like a model at inference: `baseline(noisy) -> denoised`, both (B, 1, H, W).

Names (`BASELINES`):
- "noisy": the noisy input itself (identity), the floor every method must beat.
- "gaussian": Gaussian filter (scipy.ndimage.gaussian_filter, reflected borders, truncate 4); parameter
  `sigma` in pixels, tuned on validation images.
- "nlm": non-local means (skimage.restoration.denoise_nl_means, fast mode, 5 x 5 patches, 13 x 13 search
  window, `sigma` = the noise std); parameter `h_factor`, the filtering strength h in units of the noise std,
  tuned.
- "bm3d": BM3D (the `bm3d` package, profile "np", both stages) with sigma_psd = the noise std; no tuning.
  Slow: measured 9.9 s per 256 x 256 image on one core of a shared 2-core AMD EPYC VM at load ~8 (NLM: 0.23 s,
  Gaussian: 0.01 s); plus about 1 s of fixed cost per call, whatever the image size.

The obfuscation noise has a known, non-zero mean (0.1 by default): these filters assume zero-mean noise, so by
default (`subtract_mean=True`) the known mean is subtracted first and the result is clipped to [0, 1] before
filtering (the usual practice for BM3D; applied to all three filters so that they are compared alike). Outputs
are clipped to [0, 1]. The filters run in float64 numpy on the CPU; results come back on the input's device
and dtype.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from meddenoise.errors import ConfigError
from meddenoise.registry import Registry

Filter = Callable[[np.ndarray, float, Mapping[str, Any]], np.ndarray]
FILTERS: Registry[Filter] = Registry("baseline", parameter="baseline")
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "noisy": {},
    "gaussian": {"sigma": 1.0},
    "nlm": {"h_factor": 0.8, "patch_size": 5, "patch_distance": 6},
    "bm3d": {"profile": "np"},
}
DEFAULT_GRIDS: dict[str, dict[str, Sequence[Any]]] = {
    "noisy": {},
    "gaussian": {"sigma": (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)},
    "nlm": {"h_factor": (0.4, 0.6, 0.8, 1.0, 1.2)},
    "bm3d": {},
}


def _identity(images: np.ndarray, noise_std: float, params: Mapping[str, Any]) -> np.ndarray:
    return images


def _gaussian(images: np.ndarray, noise_std: float, params: Mapping[str, Any]) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    sigma = float(params["sigma"])
    # (B, H, W): no smoothing across the batch axis.
    return gaussian_filter(images, sigma=(0.0, sigma, sigma), mode="reflect", truncate=4.0)


def _nlm(images: np.ndarray, noise_std: float, params: Mapping[str, Any]) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    h = float(params["h_factor"]) * noise_std
    return np.stack(
        [
            denoise_nl_means(
                image,
                h=h,
                sigma=noise_std,
                patch_size=int(params["patch_size"]),
                patch_distance=int(params["patch_distance"]),
                fast_mode=True,
            )
            for image in images
        ]
    )


def _bm3d(images: np.ndarray, noise_std: float, params: Mapping[str, Any]) -> np.ndarray:
    try:
        import bm3d
    except ImportError:
        raise ConfigError(
            "baseline 'bm3d' needs the bm3d package: pip install 'meddenoise[baselines]' "
            "(or pip install bm3d)"
        ) from None
    return np.stack(
        [bm3d.bm3d(image, sigma_psd=noise_std, profile=str(params["profile"])) for image in images]
    )


for _name, _filter in (("noisy", _identity), ("gaussian", _gaussian), ("nlm", _nlm), ("bm3d", _bm3d)):
    FILTERS.add(_name, _filter)
BASELINES = tuple(FILTERS.names())


@dataclass
class ClassicalBaseline:
    """A configured classical denoiser; call it (or `.denoise`) like a model at inference."""

    name: str
    noise_mean: float
    noise_std: float
    params: dict[str, Any] = field(default_factory=dict)
    subtract_mean: bool = True

    def denoise(self, noisy: torch.Tensor) -> torch.Tensor:
        if noisy.ndim != 4 or noisy.shape[1] != 1:
            raise ValueError(f"baseline {self.name!r} expects (B, 1, H, W) images, got {tuple(noisy.shape)}")
        if self.name == "noisy":
            return noisy.clone()
        images = noisy.detach()[:, 0].to("cpu", torch.float64).numpy()  # (B, 1, H, W) -> (B, H, W)
        if self.subtract_mean:
            images = np.clip(images - self.noise_mean, 0.0, 1.0)
        denoised = np.clip(FILTERS.get(self.name)(images, self.noise_std, self.params), 0.0, 1.0)
        return torch.from_numpy(np.ascontiguousarray(denoised)).unsqueeze(1).to(noisy.device, noisy.dtype)

    __call__ = denoise

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for run files and reports."""
        return {
            "baseline": self.name,
            "params": dict(self.params),
            "noise_mean": self.noise_mean,
            "noise_std": self.noise_std,
            "subtract_mean": self.subtract_mean,
        }


def build_baseline(
    name: str, noise_mean: float, noise_std: float, subtract_mean: bool = True, **params: Any
) -> ClassicalBaseline:
    """A baseline by name; unspecified parameters take DEFAULT_PARAMS[name]. Unknown names/params:
    ConfigError."""
    FILTERS.get(name)
    unknown = sorted(set(params) - set(DEFAULT_PARAMS[name]))
    if unknown:
        allowed = ", ".join(DEFAULT_PARAMS[name]) or "none"
        raise ConfigError(f"baseline {name!r} has no parameter {', '.join(unknown)} (parameters: {allowed})")
    if noise_std <= 0:
        raise ConfigError(f"baseline {name!r}: noise_std must be > 0, got {noise_std}")
    merged = {**DEFAULT_PARAMS[name], **params}
    return ClassicalBaseline(name, float(noise_mean), float(noise_std), merged, subtract_mean)


def tune_baseline(
    name: str,
    noisy_val: torch.Tensor,
    clean_val: torch.Tensor,
    noise_mean: float,
    noise_std: float,
    grid: Mapping[str, Sequence[Any]] | None = None,
    subtract_mean: bool = True,
    max_images: int | None = 8,
    quiet: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Pick the parameters with the best mean validation PSNR over `grid` (default DEFAULT_GRIDS[name]).

    Uses the first `max_images` validation images (all if None). Returns (params, table): the chosen
    parameters (complete, ready for `build_baseline(name, ..., **params)`) and one row per grid point with the
    parameters, mean PSNR, mean SSIM and seconds taken. Ties keep the first grid point.
    """
    from meddenoise.metrics.image import psnr, ssim

    if noisy_val.shape != clean_val.shape:
        raise ValueError(f"noisy {tuple(noisy_val.shape)} and clean {tuple(clean_val.shape)} differ in shape")
    if max_images is not None:
        noisy_val, clean_val = noisy_val[:max_images], clean_val[:max_images]
    FILTERS.get(name)
    grid = DEFAULT_GRIDS[name] if grid is None else grid
    keys = list(grid)
    table: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any]] | None = None
    from meddenoise.console import progress

    points = list(itertools.product(*(grid[key] for key in keys)))
    for values in progress(points, quiet=quiet, desc=f"tune {name}", unit="setting"):
        candidate = dict(zip(keys, values))
        baseline = build_baseline(name, noise_mean, noise_std, subtract_mean=subtract_mean, **candidate)
        started = time.perf_counter()
        denoised = baseline(noisy_val)
        seconds = time.perf_counter() - started
        mean_psnr = float(psnr(denoised, clean_val).mean())
        mean_ssim = float(ssim(denoised, clean_val).mean())
        table.append({**baseline.params, "psnr": mean_psnr, "ssim": mean_ssim, "seconds": seconds})
        if best is None or mean_psnr > best[0]:
            best = (mean_psnr, dict(baseline.params))
    assert best is not None  # itertools.product of an empty grid yields one empty combination
    return best[1], table
