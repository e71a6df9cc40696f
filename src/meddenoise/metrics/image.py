"""Full-reference image metrics, batched in torch on the tensors' device: PSNR, SSIM and the seed code's SSIM.

Every function takes `(pred, target)`, two floating tensors of shape (B, 1, H, W) with values in [0, 1], and
returns a float64 tensor of shape (B,) on the same device: one value per image, so that evaluation can write
per-image tables and run paired statistics.

Correspondence with scikit-image (checked per image in tests/unit/test_metrics.py, within 1e-4, float64
inputs):

- `psnr(pred, target)` == `skimage.metrics.peak_signal_noise_ratio(target, pred, data_range=1)`.
- `ssim(pred, target)` == `structural_similarity(pred, target, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)`, i.e. Wang et al. (2004): Gaussian window with sigma 1.5
  truncated at 3.5 sigma (radius int(3.5 * 1.5 + 0.5) = 5, so 11 x 11 taps), K1 = 0.01, K2 = 0.03.
- `ssim_win3(pred, target)` == `structural_similarity(pred, target, win_size=3, data_range=1)`: the seed
  repository's variant (uniform 3 x 3 window, sample covariance).

scikit-image filters the whole image with reflected borders and then crops `(win_size - 1) // 2` pixels from
every side of the SSIM map before averaging. The crop equals the filter radius, so no cropped-in value ever
touches the padding: filtering without padding ("valid") gives exactly the cropped map, and we never pad.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from meddenoise.errors import MeddenoiseError

# Pixels per chunk: on the CPU a chunk's intermediates stay in cache (a few 256 x 256 images); on an
# accelerator the limit only bounds memory (about 100 bytes per pixel).
_CPU_CHUNK_PIXELS = 1 << 16
_DEVICE_CHUNK_PIXELS = 1 << 24

SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_SIGMA = 1.5
# scikit-image sets truncate = 3.5 when gaussian_weights=True, which makes the 11-tap window of Wang et al.
SSIM_TRUNCATE = 3.5


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: 10 log10(data_range^2 / MSE), float64 (B,).

    Identical images have MSE 0 and PSNR +inf; we return +inf for them on purpose (as scikit-image does,
    without its divide-by-zero warning) so that a perfect reconstruction is never mistaken for a finite score.
    Statistics code must decide what to do with +inf (meddenoise.metrics.stats refuses non-finite values).
    """
    _check_pair(pred, target, "psnr")
    mse = torch.cat([_mse(p, t) for p, t in _chunks(pred, target)])
    peak = torch.full_like(mse, float(data_range) ** 2)
    finite = 10.0 * torch.log10(peak / mse.clamp_min(torch.finfo(torch.float64).tiny))
    return torch.where(mse == 0, torch.full_like(mse, math.inf), finite)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM of Wang et al. (2004) per image (11 x 11 Gaussian window, sigma 1.5, population covariance),
    float64 (B,).

    Matches scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)`. Images must be at least 11 x 11 pixels.
    """
    _check_pair(pred, target, "ssim")
    return _mean_ssim(pred, target, _gaussian_taps(SSIM_SIGMA, SSIM_TRUNCATE), covariance_scale=1.0)


def ssim_win3(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The seed code's SSIM per image: uniform 3 x 3 window, sample covariance (N - 1 = 8), float64 (B,).

    Matches scikit-image's `structural_similarity(win_size=3, data_range=1)`. This is NOT Wang et al.'s SSIM:
    a 3 x 3 window measures structure at the scale of single pixels, so noise dominates it, and the unbiased
    covariance scales variances by 9/8. Report it only beside the paper's numbers, under its own name.
    """
    _check_pair(pred, target, "ssim_win3")
    taps = (1.0 / 3.0,) * 3
    window_pixels = len(taps) ** 2
    return _mean_ssim(pred, target, taps, covariance_scale=window_pixels / (window_pixels - 1))


def _check_pair(pred: torch.Tensor, target: torch.Tensor, metric: str) -> None:
    for name, tensor in (("pred", pred), ("target", target)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{metric}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.ndim != 4 or tensor.shape[1] != 1:
            raise ValueError(f"{metric}: {name} must have shape (B, 1, H, W), got {tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            raise ValueError(
                f"{metric}: {name} has dtype {tensor.dtype}; convert to float in [0, 1] first "
                "(e.g. meddenoise.data's to_float)"
            )
    if pred.shape != target.shape:
        raise ValueError(
            f"{metric}: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape"
        )
    if pred.device != target.device:
        raise ValueError(f"{metric}: pred is on {pred.device} but target is on {target.device}")


def _chunks(pred: torch.Tensor, target: torch.Tensor):
    budget = _CPU_CHUNK_PIXELS if pred.device.type == "cpu" else _DEVICE_CHUNK_PIXELS
    images_per_chunk = max(1, budget // (pred.shape[-1] * pred.shape[-2]))
    return zip(pred.split(images_per_chunk), target.split(images_per_chunk))


def _mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    difference = pred.double() - target.double()  # float64 so that tiny errors keep their digits
    return (difference * difference).mean(dim=(1, 2, 3))


@lru_cache(maxsize=8)
def _gaussian_taps(sigma: float, truncate: float) -> tuple[float, ...]:
    """The 1-D kernel of scipy.ndimage.gaussian_filter: radius int(truncate * sigma + 0.5), normalised to sum
    1."""
    radius = int(truncate * sigma + 0.5)
    weights = [math.exp(-0.5 * (offset / sigma) ** 2) for offset in range(-radius, radius + 1)]
    total = math.fsum(weights)
    return tuple(w / total for w in weights)


def _valid_filter(maps: torch.Tensor, taps: tuple[float, ...]) -> torch.Tensor:
    """Separable correlation without padding: (..., H, W) -> (..., H - k + 1, W - k + 1), k = len(taps).

    Shifted multiply-adds (one fused `add_` per tap and axis) beat torch's conv2d for single-channel 11-tap
    kernels on the CPU several times over, and are exact in any dtype.
    """
    size = len(taps)
    out_rows = maps.shape[-2] - size + 1
    rows_done = maps[..., 0:out_rows, :] * taps[0]
    for offset in range(1, size):
        rows_done.add_(maps[..., offset : offset + out_rows, :], alpha=taps[offset])
    out_cols = maps.shape[-1] - size + 1
    out = rows_done[..., 0:out_cols] * taps[0]
    for offset in range(1, size):
        out.add_(rows_done[..., offset : offset + out_cols], alpha=taps[offset])
    return out


def _mean_ssim(
    pred: torch.Tensor, target: torch.Tensor, taps: tuple[float, ...], covariance_scale: float
) -> torch.Tensor:
    window = len(taps)
    height, width = pred.shape[-2:]
    if height < window or width < window:
        raise MeddenoiseError(
            f"SSIM with a {window} x {window} window needs images of at least {window} x {window} pixels, "
            f"got {height} x {width}; evaluate on larger images"
        )
    return torch.cat([_mean_ssim_chunk(p, t, taps, covariance_scale) for p, t in _chunks(pred, target)])


def _mean_ssim_chunk(
    pred: torch.Tensor, target: torch.Tensor, taps: tuple[float, ...], covariance_scale: float
) -> torch.Tensor:
    # float32 is enough once each image is centred: variances are E[x^2] - E[x]^2, and centring removes the
    # large common offset that makes that difference lose digits (measured error vs float64 scikit-image:
    # ~1e-8).
    x = pred[:, 0].float()  # (B, H, W)
    y = target[:, 0].float()
    centre = 0.5 * (x.mean(dim=(1, 2), keepdim=True) + y.mean(dim=(1, 2), keepdim=True))
    x = x - centre
    y = y - centre
    # (B, 4, H, W) -> (B, 4, H', W'): local means of x, y, x^2 + y^2 and x y. Only the sum of the second
    # moments is needed (the SSIM denominator uses var_x + var_y), which saves one of the five filters of the
    # usual form.
    stacked = torch.stack((x, y, x * x + y * y, x * y), dim=1)
    mean_x, mean_y, mean_sq_sum, mean_xy = _valid_filter(stacked, taps).unbind(dim=1)
    # Second moments from the centred means (shift-invariant) ...
    mean_sq = mean_x * mean_x
    mean_sq.addcmul_(mean_y, mean_y)
    variance_sum = mean_sq_sum.sub_(mean_sq).mul_(covariance_scale)  # var_x + var_y
    covariance = mean_xy.sub_(mean_x * mean_y).mul_(covariance_scale)
    # ... luminance from the true means.
    shift = centre.view(-1, 1, 1)
    mean_x = mean_x.add_(shift)
    mean_y = mean_y.add_(shift)
    luminance_num = (mean_x * mean_y).mul_(2).add_(SSIM_K1**2)  # C1 = (K1 * data_range)^2, data_range 1
    luminance_den = mean_sq.copy_(mean_x).mul_(mean_x).addcmul_(mean_y, mean_y).add_(SSIM_K1**2)
    structure_num = covariance.mul_(2).add_(SSIM_K2**2)
    structure_den = variance_sum.add_(SSIM_K2**2)
    ssim_map = luminance_num.mul_(structure_num).div_(luminance_den.mul_(structure_den))
    return ssim_map.mean(dim=(1, 2), dtype=torch.float64)
