"""Classical baselines: model-like call, mean handling, denoising effect, tuning, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from meddenoise.baselines import BASELINES, build_baseline, tune_baseline
from meddenoise.errors import ConfigError
from meddenoise.metrics import psnr

NOISE_MEAN, NOISE_STD = 0.1, 0.15


def _clean_and_noisy(batch: int = 2, size: int = 32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    phases = torch.rand(batch, 1, 1, 1, generator=generator) * 3
    clean = 0.45 + 0.3 * torch.sin(5 * cols + phases) * torch.cos(3 * rows)  # (B, 1, H, W), smooth
    noise = NOISE_MEAN + NOISE_STD * torch.randn(clean.shape, generator=generator)
    return clean, (clean + noise).clamp(0, 1)


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_keeps_shape_dtype_range_and_beats_or_equals_noisy(name):
    clean, noisy = _clean_and_noisy(
        batch=1 if name == "bm3d" else 2
    )  # BM3D costs ~1 s per call even when tiny
    baseline = build_baseline(name, NOISE_MEAN, NOISE_STD)
    denoised = baseline(noisy)
    assert denoised.shape == noisy.shape and denoised.dtype == noisy.dtype and denoised.device == noisy.device
    assert float(denoised.min()) >= 0.0 and float(denoised.max()) <= 1.0
    gain = float(psnr(denoised, clean).mean() - psnr(noisy, clean).mean())
    if name == "noisy":
        assert torch.equal(denoised, noisy) and denoised is not noisy
    else:
        assert gain > 3.0, f"{name} improved PSNR by only {gain:.2f} dB on smooth images"


def test_gaussian_is_scipy_after_subtracting_the_known_mean():
    _, noisy = _clean_and_noisy(batch=1)
    denoised = build_baseline("gaussian", NOISE_MEAN, NOISE_STD, sigma=1.5)(noisy.double())
    image = np.clip(noisy[0, 0].double().numpy() - NOISE_MEAN, 0, 1)
    expected = np.clip(gaussian_filter(image, 1.5, mode="reflect", truncate=4.0), 0, 1)
    np.testing.assert_allclose(denoised[0, 0].numpy(), expected, atol=1e-12)


def test_subtracting_the_mean_removes_the_brightness_bias():
    clean, noisy = _clean_and_noisy()
    with_mean = build_baseline("gaussian", NOISE_MEAN, NOISE_STD, sigma=1.5)(noisy)
    without = build_baseline("gaussian", NOISE_MEAN, NOISE_STD, subtract_mean=False, sigma=1.5)(noisy)
    assert abs(float((with_mean - clean).mean())) < 0.02
    assert float((without - clean).mean()) > 0.07


def test_tuning_picks_the_best_validation_psnr_and_reports_every_grid_point():
    clean, noisy = _clean_and_noisy(batch=3, seed=4)
    grid = {"sigma": (0.3, 1.0, 2.0)}
    params, table = tune_baseline("gaussian", noisy, clean, NOISE_MEAN, NOISE_STD, grid=grid)
    assert [row["sigma"] for row in table] == [0.3, 1.0, 2.0]
    best_row = max(table, key=lambda row: row["psnr"])
    assert params == {"sigma": best_row["sigma"]}
    assert params["sigma"] != 0.3  # hardly smoothing cannot win on smooth images with strong noise
    assert all({"psnr", "ssim", "seconds"} <= set(row) for row in table)
    rebuilt = build_baseline("gaussian", NOISE_MEAN, NOISE_STD, **params)(noisy[:3])
    assert float(psnr(rebuilt, clean).mean()) == pytest.approx(best_row["psnr"])


def test_tuning_without_a_grid_evaluates_the_defaults_once():
    clean, noisy = _clean_and_noisy(batch=1)
    params, table = tune_baseline("noisy", noisy, clean, NOISE_MEAN, NOISE_STD)
    assert params == {} and len(table) == 1


def test_user_mistakes_raise_config_errors():
    with pytest.raises(ConfigError, match="unknown baseline 'median'"):
        build_baseline("median", NOISE_MEAN, NOISE_STD)
    with pytest.raises(ConfigError, match="no parameter radius"):
        build_baseline("gaussian", NOISE_MEAN, NOISE_STD, radius=2)
    with pytest.raises(ConfigError, match="noise_std"):
        build_baseline("bm3d", NOISE_MEAN, 0.0)


def test_describe_is_json_ready():
    description = build_baseline("nlm", NOISE_MEAN, NOISE_STD, h_factor=0.6).describe()
    assert description["params"]["h_factor"] == 0.6 and description["subtract_mean"] is True
