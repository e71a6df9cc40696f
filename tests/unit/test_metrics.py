"""PSNR / SSIM / SSIM(win 3) against scikit-image, per image, on images that stress different parts of
SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from meddenoise.errors import MeddenoiseError
from meddenoise.metrics import PIXEL_METRICS, image, psnr, ssim, ssim_win3

SKIMAGE_SSIM = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": 1}
SKIMAGE_WIN3 = {"win_size": 3, "data_range": 1}


def _test_pairs(height: int = 40, width: int = 52, dtype: torch.dtype = torch.float64):
    """(pred, target) batches: noise, flat, piecewise-constant, smooth, 8-bit quantised, near-identical,
    identical."""
    generator = torch.Generator().manual_seed(1234)
    rows, cols = torch.meshgrid(
        torch.linspace(0, 1, height, dtype=torch.float64),
        torch.linspace(0, 1, width, dtype=torch.float64),
        indexing="ij",
    )
    smooth = 0.5 + 0.4 * torch.sin(7 * cols) * torch.cos(5 * rows)
    targets = [
        torch.rand(height, width, generator=generator, dtype=torch.float64),
        torch.full((height, width), 0.7, dtype=torch.float64),
        torch.where(cols < 0.5, 0.15, 0.9).to(torch.float64),
        smooth,
        torch.round(smooth * 255) / 255,
        smooth,
        smooth,
        torch.zeros(height, width, dtype=torch.float64),
    ]
    target = torch.stack(targets).unsqueeze(1)
    noise = torch.randn(target.shape, generator=generator, dtype=torch.float64)
    pred = (target + 0.1 + 0.2 * noise).clamp(0, 1)
    pred[1] = (0.7 + 1e-3 * noise[1]).clamp(0, 1)  # nearly flat: structure term dominated by C2
    pred[5] = target[5] * 0.97 + 0.02  # near-identical: SSIM close to 1
    pred[6] = target[6]  # identical
    pred[7] = (0.05 * noise[7]).abs().clamp(0, 1)  # dark image: luminance term dominated by C1
    return pred.to(dtype), target.to(dtype)


def _per_image(function, pred: torch.Tensor, target: torch.Tensor, **kwargs) -> np.ndarray:
    return np.array(
        [function(p[0].double().numpy(), t[0].double().numpy(), **kwargs) for p, t in zip(pred, target)]
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ssim_matches_skimage_gaussian_within_1e4(dtype):
    pred, target = _test_pairs(dtype=dtype)
    ours = ssim(pred, target)
    reference = _per_image(structural_similarity, pred, target, **SKIMAGE_SSIM)
    assert ours.dtype == torch.float64 and ours.shape == (pred.shape[0],)
    np.testing.assert_allclose(ours.numpy(), reference, rtol=0, atol=1e-4)
    # The margin is large in practice; a regression that nearly breaks the contract should show up here first.
    assert np.abs(ours.numpy() - reference).max() < 1e-6


def test_ssim_win3_matches_skimage_within_1e4():
    pred, target = _test_pairs()
    ours = ssim_win3(pred, target)
    reference = _per_image(structural_similarity, pred, target, **SKIMAGE_WIN3)
    np.testing.assert_allclose(ours.numpy(), reference, rtol=0, atol=1e-4)
    assert np.abs(ours.numpy() - reference).max() < 1e-5


def test_ssim_and_win3_are_different_metrics():
    pred, target = _test_pairs()
    assert not torch.allclose(ssim(pred, target), ssim_win3(pred, target), atol=1e-3)


def test_psnr_matches_skimage_and_is_inf_for_identical_images():
    pred, target = _test_pairs()
    ours = psnr(pred, target)
    identical = torch.all((pred == target).flatten(1), dim=1)
    assert ours.dtype == torch.float64
    assert torch.equal(torch.isinf(ours), identical) and bool((ours[identical] > 0).all())
    with np.errstate(divide="ignore"):
        reference = _per_image(lambda p, t: peak_signal_noise_ratio(t, p, data_range=1), pred, target)
    finite = ~identical.numpy()
    np.testing.assert_allclose(ours.numpy()[finite], reference[finite], rtol=0, atol=1e-8)


def test_psnr_known_value():
    target = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    pred = torch.full_like(target, 0.1)  # MSE 0.01 -> 20 dB
    assert psnr(pred, target).item() == pytest.approx(20.0, abs=1e-12)


def test_identical_images_have_ssim_one():
    _, target = _test_pairs()
    np.testing.assert_allclose(ssim(target, target).numpy(), 1.0, atol=1e-7)
    np.testing.assert_allclose(ssim_win3(target, target).numpy(), 1.0, atol=1e-7)


def test_gaussian_window_is_scipys_11_tap_kernel():
    taps = image._gaussian_taps(image.SSIM_SIGMA, image.SSIM_TRUNCATE)
    assert len(taps) == 11
    impulse = np.zeros(31)
    impulse[15] = 1.0
    scipy_kernel = gaussian_filter(impulse, sigma=1.5, truncate=3.5, mode="constant")
    np.testing.assert_allclose(scipy_kernel[10:21], taps, rtol=0, atol=1e-15)
    assert np.count_nonzero(scipy_kernel) == 11


def test_batch_chunking_and_order_do_not_change_values(monkeypatch):
    pred, target = _test_pairs(dtype=torch.float32)
    whole_ssim, whole_psnr = ssim(pred, target), psnr(pred, target)
    monkeypatch.setattr(image, "_CPU_CHUNK_PIXELS", 3 * 40 * 52)  # chunks of 3 images: uneven split of 8
    np.testing.assert_allclose(ssim(pred, target).numpy(), whole_ssim.numpy(), rtol=0, atol=1e-7)
    assert torch.equal(psnr(pred, target), whole_psnr)
    order = torch.tensor([3, 0, 7, 1, 6, 2, 5, 4])
    np.testing.assert_allclose(ssim(pred[order], target[order]).numpy(), whole_ssim[order].numpy(), atol=1e-7)


def test_ssim_is_symmetric_and_handles_non_square_images():
    pred, target = _test_pairs(height=23, width=64)
    np.testing.assert_allclose(ssim(pred, target).numpy(), ssim(target, pred).numpy(), atol=1e-7)
    reference = _per_image(structural_similarity, pred, target, **SKIMAGE_SSIM)
    np.testing.assert_allclose(ssim(pred, target).numpy(), reference, atol=1e-4)


def test_half_precision_inputs_are_accepted():
    pred, target = _test_pairs(dtype=torch.float32)
    value = ssim(pred.to(torch.bfloat16), target.to(torch.bfloat16))
    assert value.dtype == torch.float64 and torch.isfinite(value).all()


@pytest.mark.parametrize("metric", [psnr, ssim, ssim_win3])
def test_bad_inputs_raise_clear_errors(metric):
    good = torch.rand(2, 1, 16, 16)
    with pytest.raises(ValueError, match="shape"):
        metric(good, torch.rand(2, 1, 16, 17))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        metric(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="dtype"):
        metric(good, (good * 255).to(torch.uint8))


def test_ssim_on_too_small_images_is_a_user_error():
    tiny = torch.rand(1, 1, 10, 40)
    with pytest.raises(MeddenoiseError, match="at least 11 x 11"):
        ssim(tiny, tiny)
    assert math.isfinite(ssim_win3(tiny, tiny * 0.5).item())


def test_metric_table_lists_directions():
    assert set(PIXEL_METRICS) == {"psnr", "ssim", "ssim_win3"}
    assert all(info.higher_is_better for info in PIXEL_METRICS.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metrics_stay_on_the_device():
    pred, target = _test_pairs(dtype=torch.float32)
    on_device = ssim(pred.cuda(), target.cuda())
    assert on_device.device.type == "cuda"
    np.testing.assert_allclose(on_device.cpu().numpy(), ssim(pred, target).numpy(), atol=1e-6)


@pytest.mark.parametrize("window", [3, 11])
def test_cpu_convolution_filter_matches_the_shifted_add_filter_used_on_accelerators(window):
    generator = torch.Generator().manual_seed(7)
    maps = torch.rand(4, 3, 29, 41, generator=generator)  # (moments, images, H, W), non-square on purpose
    taps = (1.0 / 3.0,) * 3 if window == 3 else image._gaussian_taps(image.SSIM_SIGMA, image.SSIM_TRUNCATE)
    by_convolution = image._conv_valid_filter(maps, taps)
    assert by_convolution.shape == (4, 3, 29 - window + 1, 41 - window + 1)
    np.testing.assert_allclose(
        by_convolution.numpy(), image._shifted_valid_filter(maps, taps).numpy(), rtol=0, atol=1e-6
    )
