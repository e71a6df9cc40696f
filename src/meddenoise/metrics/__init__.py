"""Image-quality metrics (batched torch, one value per image) and the statistics to compare them.

    from meddenoise.metrics import psnr, ssim, ssim_win3      # (B, 1, H, W) pairs in [0, 1] -> float64 (B,)
    from meddenoise.metrics import LPIPS, lpips_status        # LPIPS needs weight files; see perceptual.py
    from meddenoise.metrics import stats                      # CIs, paired tests, Holm correction (scipy)

`PIXEL_METRICS` lists the metrics that need no weights, with the direction in which they improve, so
evaluation and statistics code can loop over them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from meddenoise.metrics.image import psnr, ssim, ssim_win3
from meddenoise.metrics.perceptual import LPIPS, MetricUnavailable, lpips_available, lpips_status


@dataclass(frozen=True)
class MetricInfo:
    name: str
    compute: Callable | None  # (pred, target) -> (B,) tensor; None when it needs a loaded module
    higher_is_better: bool
    unit: str
    description: str


PIXEL_METRICS: dict[str, MetricInfo] = {
    "psnr": MetricInfo("psnr", psnr, True, "dB", "PSNR, data range 1 (+inf for identical images)"),
    "ssim": MetricInfo("ssim", ssim, True, "", "SSIM of Wang et al. (11x11 Gaussian window, sigma 1.5)"),
    "ssim_win3": MetricInfo(
        "ssim_win3", ssim_win3, True, "", "the paper's code's SSIM (skimage win_size=3, uniform window)"
    ),
}
LPIPS_INFO = MetricInfo(
    "lpips", None, False, "", "LPIPS (AlexNet, v0.1), lower is better; compute with LPIPS.from_pretrained()"
)


def __getattr__(name: str):
    # `meddenoise.metrics.stats` imports scipy; load it on first use only.
    if name == "stats":
        import importlib

        return importlib.import_module("meddenoise.metrics.stats")
    raise AttributeError(f"module 'meddenoise.metrics' has no attribute {name!r}")


__all__ = [
    "LPIPS",
    "LPIPS_INFO",
    "PIXEL_METRICS",
    "MetricInfo",
    "MetricUnavailable",
    "lpips_available",
    "lpips_status",
    "psnr",
    "ssim",
    "ssim_win3",
]
