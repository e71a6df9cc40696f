"""Full-reference image metrics, batched in torch on the tensors' device: PSNR, SSIM and the paper's SSIM.

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

# Pixels per chunk: on the CPU small chunks keep a chunk's intermediates in the caches (measured best: two
# 256 x 256 images); on an accelerator the limit only bounds memory (about 100 bytes per pixel).
_CPU_CHUNK_PIXELS = 1 << 17
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
    """The paper's code's SSIM per image: uniform 3 x 3 window, sample covariance (N - 1 = 8), float64 (B,).

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
    # float64 inputs stay float64 (tests compare to 1e-8 dB); anything narrower is differenced in float32, as
    # scikit-image does for float32 arrays. torch's float32 sums are pairwise, so the mean keeps ~7 digits
    # (1e-7 relative error in the MSE is 4e-7 dB), and it avoids converting every pixel to float64.
    compute_dtype = torch.float64 if torch.float64 in (pred.dtype, target.dtype) else torch.float32
    difference = pred.to(compute_dtype) - target.to(compute_dtype)
    return difference.square_().mean(dim=(1, 2, 3)).double()


@lru_cache(maxsize=8)
def _gaussian_taps(sigma: float, truncate: float) -> tuple[float, ...]:
    """The 1-D kernel of scipy.ndimage.gaussian_filter: radius int(truncate * sigma + 0.5), normalised to sum
    1."""
    radius = int(truncate * sigma + 0.5)
    weights = [math.exp(-0.5 * (offset / sigma) ** 2) for offset in range(-radius, radius + 1)]
    total = math.fsum(weights)
    return tuple(w / total for w in weights)


def _shifted_valid_filter(maps: torch.Tensor, taps: tuple[float, ...]) -> torch.Tensor:
    """Separable correlation without padding by shifted multiply-adds: (4, n, H, W) -> (4, n, H', W'),
    H' = H - k + 1, W' = W - k + 1, k = len(taps).

    Exact in any dtype on any device (no TF32 or reduced-precision conv algorithms), and one fused kernel
    per tap on an accelerator; used off the CPU.
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


def _conv_valid_filter(maps: torch.Tensor, taps: tuple[float, ...]) -> torch.Tensor:
    """The same filter as two depthwise oneDNN convolutions on the CPU: (4, n, H, W) -> (4, n, H', W').

    Each eager torch op streams whole tensors through memory, so the 22 shifted adds per map are bound by
    memory bandwidth; a convolution reads and writes each map once per axis. The layouts are chosen so that
    neither pass needs a transpose (measured: a transpose of the maps costs about as much as the filter):

    - columns: the maps' memory (M, H, W), M = 4n, is a channels-last tensor of shape (1, W, M, H) whose W
      "channels" are the image columns, so a depthwise (1, k) convolution filters along H, vectorised
      across columns, and writes (M, H', W) contiguous again;
    - rows: each of the M H' rows is a channel of a 1-D depthwise convolution along the contiguous W.
    """
    moments, count, height, width = maps.shape
    size = len(taps)
    out_rows, out_cols = height - size + 1, width - size + 1
    planes = moments * count
    kernel = torch.tensor(taps, dtype=maps.dtype, device=maps.device)
    # (4, n, H, W) memory viewed as channels-last (1, W, M, H): batch, channel = column, "height" = plane,
    # "width" = image row.
    by_column = maps.as_strided(
        (1, width, planes, height), (planes * height * width, 1, height * width, width)
    )
    column_kernel = kernel.view(1, 1, 1, size).expand(width, 1, 1, size).contiguous()
    filtered = torch.nn.functional.conv2d(by_column, column_kernel, groups=width)  # (1, W, M, H')
    # Back to (1, M H', W); a no-op copy when oneDNN kept the channels-last layout, a real one otherwise.
    rows = filtered.permute(0, 2, 3, 1).reshape(1, planes * out_rows, width)
    row_kernel = kernel.view(1, 1, size).expand(planes * out_rows, 1, size).contiguous()
    out = torch.nn.functional.conv1d(rows, row_kernel, groups=planes * out_rows)  # (1, M H', W')
    return out.view(moments, count, out_rows, out_cols)


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
    """SSIM from the local statistics of u = x + y and v = x - y instead of x and y.

    With P = var(u) and Q = var(v) over the window, var_x + var_y = (P + Q) / 2 and 2 cov_xy = (P - Q) / 2;
    with A = mean(u)^2 and B = mean(v)^2, mean_x^2 + mean_y^2 = (A + B) / 2 and 2 mean_x mean_y = (A - B) / 2.
    So SSIM = (A - B + 2 C1)(P - Q + 2 C2) / ((A + B + 2 C1)(P + Q + 2 C2)): four filtered maps (u, v, u^2,
    v^2) instead of five, and fewer elementwise passes afterwards than the x, y form.
    """
    count, _, height, width = pred.shape
    # float32 is enough once u is centred: P = E[u^2] - E[u]^2 loses digits to cancellation only through
    # the offset of u, which centring removes (v = x - y is already near zero). Measured error vs float64
    # scikit-image: ~4e-8.
    x = pred[:, 0].float()  # (n, H, W)
    y = target[:, 0].float()
    offset = (x.mean(dim=(1, 2)) + y.mean(dim=(1, 2))).view(count, 1, 1)  # mean of u per image
    maps = torch.empty(4, count, height, width, device=x.device)
    u, v, u_sq, v_sq = maps.unbind(0)
    torch.add(x, y, out=u).sub_(offset)
    torch.sub(x, y, out=v)
    torch.mul(u, u, out=u_sq)
    torch.mul(v, v, out=v_sq)
    valid_filter = _conv_valid_filter if x.device.type == "cpu" else _shifted_valid_filter
    mean_u, mean_v, mean_u_sq, mean_v_sq = valid_filter(maps, taps).unbind(0)  # each (n, H', W')
    var_u = mean_u_sq.addcmul_(mean_u, mean_u, value=-1)  # shift-invariant, so the centred u is fine
    var_v = mean_v_sq.addcmul_(mean_v, mean_v, value=-1)
    square_v = mean_v.mul_(mean_v)
    square_u = mean_u.add_(offset).square_()  # luminance needs the true mean of u
    luminance_num = (square_u - square_v).add_(2 * SSIM_K1**2)  # 2 C1, C1 = (K1 * data_range)^2
    luminance_den = square_u.add_(square_v).add_(2 * SSIM_K1**2)
    structure_num = var_u - var_v
    structure_den = var_u.add_(var_v)
    if covariance_scale != 1.0:
        structure_num.mul_(covariance_scale)
        structure_den.mul_(covariance_scale)
    structure_num.add_(2 * SSIM_K2**2)
    structure_den.add_(2 * SSIM_K2**2)
    ssim_map = luminance_num.mul_(structure_num).div_(luminance_den.mul_(structure_den))
    # Row sums in float32 (pairwise, ~1e-7 relative), then float64 across rows: a float64 reduction over the
    # whole map would convert every pixel first and cost as much as the filter.
    row_sums = ssim_map.sum(dim=2)  # (n, H')
    return row_sums.double().sum(dim=1) / (ssim_map.shape[1] * ssim_map.shape[2])
