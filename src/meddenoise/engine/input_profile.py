"""What the model's inputs looked like in training, and whether a new input looks the same.

A denoiser trained on one site's images can quietly misbehave on another's (it darkened bright regions of
another site's radiographs by about 0.11). Training records, in every checkpoint, the distribution of simple
per-image statistics of its *noisy* training inputs (the released images it learned from): the mean
intensity, the standard deviation and the 1st / 99th percentiles, each summarised by its 1st-99th percentile
range over up to PROFILE_IMAGES training images. `denoise` compares each input file with that profile and
flags it.

The profile also records the training images' size and the noise level estimated on them the same way it is
estimated on an input (`estimate_noise_std`: the median absolute finest-scale Haar detail / 0.6745, Donoho's
robust estimator), so `denoise` can also say when an input looks un-obfuscated (far less noise than the
training inputs: the network will remove detail it takes for noise) or is far from the training resolution.

The check is deliberately simple and one-sided: a flag means "unlike the training inputs", not "the output is
wrong"; no flag does not prove the output right.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

PROFILE_IMAGES = 256
STATISTICS = ("mean", "std", "p01", "p99")
LABELS = {
    "mean": "mean intensity",
    "std": "intensity spread (std)",
    "p01": "1st percentile",
    "p99": "99th percentile",
}
# A statistic this far outside the training range (in units of full intensity) is flagged: the range's own
# width from a few hundred images is noisy, so a small margin avoids flagging the training images themselves.
MARGIN = 0.02


def image_statistics(images: torch.Tensor) -> dict[str, np.ndarray]:
    """(B, 1, H, W) float in [0, 1] -> per-image mean, std, 1st and 99th percentile, each (B,)."""
    flat = images.float().flatten(1)
    quantiles = torch.quantile(flat, torch.tensor([0.01, 0.99], device=flat.device), dim=1)  # (2, B)
    return {
        "mean": flat.mean(dim=1).double().cpu().numpy(),
        "std": flat.std(dim=1).double().cpu().numpy(),
        "p01": quantiles[0].double().cpu().numpy(),
        "p99": quantiles[1].double().cpu().numpy(),
    }


# An input whose estimated noise is below this fraction of the training inputs' looks un-obfuscated; above
# NOISIER_RATIO times it, noisier than anything seen. Its size is flagged beyond SIZE_RATIO either way.
CLEAN_RATIO = 0.4
NOISIER_RATIO = 2.0
SIZE_RATIO = 2.0


def estimate_noise_std(pixels: np.ndarray) -> float:
    """Robust noise std of an (H, W) image in [0, 1]: median |HH| / 0.6745 over the finest Haar detail."""
    image = np.asarray(pixels, dtype=np.float64)
    height, width = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    if height < 2 or width < 2:
        return float("nan")
    blocks = image[:height, :width]
    detail = (blocks[0::2, 0::2] - blocks[0::2, 1::2] - blocks[1::2, 0::2] + blocks[1::2, 1::2]) / 2.0
    return float(np.median(np.abs(detail)) / 0.6745)


def training_profile(data: Any, split: str, noise_op: Any, noise_seed: int) -> dict[str, Any]:
    """The profile of the noisy training inputs (fixed noise of the run's level) of `split`."""
    rows = data.indices(split)
    if rows.size > PROFILE_IMAGES:  # evenly spread, deterministic
        rows = rows[np.linspace(0, rows.size - 1, PROFILE_IMAGES).astype(np.int64)]
    values: dict[str, list[np.ndarray]] = {name: [] for name in STATISTICS}
    noise_estimates: list[float] = []
    for start in range(0, rows.size, 64):
        chunk = rows[start : start + 64]
        clean = torch.from_numpy(np.ascontiguousarray(data.images[chunk])).unsqueeze(1).float()
        clean = clean / float(data.max_value)  # (b, H, W) integer -> (b, 1, H, W) in [0, 1]
        noisy = noise_op(clean, torch.from_numpy(data.image_keys[chunk]), seed=noise_seed, mode="fixed")
        for name, found in image_statistics(noisy).items():
            values[name].append(found)
        noise_estimates.extend(estimate_noise_std(image[0].numpy()) for image in noisy)
    profile: dict[str, Any] = {"images": int(rows.size), "split": split, "of": "noisy training inputs"}
    profile["size"] = [int(data.images.shape[-2]), int(data.images.shape[-1])]
    if noise_estimates:
        profile["noise_std_estimate"] = float(np.median(noise_estimates))
    for name in STATISTICS:
        merged = np.concatenate(values[name]) if values[name] else np.zeros(0)
        if merged.size:
            low, high = np.quantile(merged, [0.01, 0.99])
            profile[name] = {"low": float(low), "high": float(high), "median": float(np.median(merged))}
    return profile


def compare(profile: dict[str, Any] | None, pixels: np.ndarray) -> list[str]:
    """Why an input (H, W) float in [0, 1] differs from the training inputs; [] when it does not (or the
    checkpoint has no profile)."""
    if not profile:
        return []
    found = image_statistics(torch.from_numpy(np.asarray(pixels, dtype=np.float32))[None, None])
    reasons = []
    for name in STATISTICS:
        bounds = profile.get(name)
        if not bounds:
            continue
        value = float(found[name][0])
        if value < bounds["low"] - MARGIN or value > bounds["high"] + MARGIN:
            reasons.append(
                f"{LABELS[name]} {value:.3f} is outside the training inputs' {bounds['low']:.3f}-"
                f"{bounds['high']:.3f} (1st-99th percentile over {profile.get('images', '?')} images)"
            )
    trained_noise = profile.get("noise_std_estimate")
    if trained_noise:
        estimate = estimate_noise_std(pixels)
        if estimate < CLEAN_RATIO * trained_noise:
            reasons.append(
                f"it looks un-obfuscated: estimated noise std {estimate:.3f} against {trained_noise:.3f} on "
                "the training inputs; the network removes what it takes for noise, here real detail"
            )
        elif estimate > NOISIER_RATIO * trained_noise:
            reasons.append(
                f"it is noisier than the training inputs: estimated noise std {estimate:.3f} against "
                f"{trained_noise:.3f}"
            )
    size = profile.get("size")
    if size:
        height, width = np.asarray(pixels).shape[-2:]
        ratio = max(height / size[0], size[0] / height, width / size[1], size[1] / width)
        if ratio > SIZE_RATIO:
            reasons.append(
                f"it is {width}x{height} pixels, the training images were {size[1]}x{size[0]}: structures "
                "sit at another scale than the network learned"
            )
    return reasons
