"""Test-set metrics (PSNR + SSIM per image): meddenoise's batched torch code vs a per-image scikit-image loop.

Both score the same images in the same run; the loop is what evaluation code usually writes:
`peak_signal_noise_ratio` + `structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)` per image, given float32 numpy views of the tensors (no conversion
is timed). The batched code runs with 1 torch thread and with all cores. Target (issue 5): >= 20x on the CPU.
Writes benchmarks/results/eval_speed_<device>.json with the machine, versions, settings and the load average,
because other work on a shared machine slows both sides, not necessarily alike.

    python benchmarks/eval_speed.py                       # 256 images of 256 x 256 on the CPU
    python benchmarks/eval_speed.py --device cuda         # batched side on a GPU (the loop stays on the CPU)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import skimage
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from meddenoise import __version__
from meddenoise.fileio import atomic_write_json
from meddenoise.metrics import psnr, ssim

RESULTS = Path(__file__).resolve().parent / "results"


def make_images(count: int, side: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, target) float32 (N, 1, side, side): smooth 8-bit "radiographs" and a noisy, clipped estimate."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.linspace(0, 1, side)
    rows, cols = torch.meshgrid(grid, grid, indexing="ij")
    target = torch.empty(count, 1, side, side)
    for index in range(count):
        waves = torch.rand(4, 3, generator=generator) * torch.tensor([5.0, 5.0, 6.28])
        image = sum(torch.cos(2 * torch.pi * (fy * rows + fx * cols) + phase) for fy, fx, phase in waves)
        target[index, 0] = torch.round((image - image.min()) / (image.max() - image.min()) * 200 + 20) / 255
    pred = (target + 0.03 * torch.randn(target.shape, generator=generator)).clamp(0, 1)
    return pred, target


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batched(
    pred: torch.Tensor, target: torch.Tensor, repeats: int
) -> tuple[float, np.ndarray, np.ndarray]:
    """Median seconds over `repeats` after one warm-up, and the values of the last run."""
    psnr(pred[:2], target[:2]), ssim(pred[:2], target[:2])  # warm-up: allocator, lazy init, CUDA context
    timings = []
    for _ in range(repeats):
        synchronize(pred.device)
        started = time.perf_counter()
        psnr_values, ssim_values = psnr(pred, target), ssim(pred, target)
        synchronize(pred.device)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings), psnr_values.cpu().numpy(), ssim_values.cpu().numpy()


def time_skimage(pred: np.ndarray, target: np.ndarray, repeats: int) -> tuple[float, np.ndarray, np.ndarray]:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        psnr_values = np.array([peak_signal_noise_ratio(t, p, data_range=1) for p, t in zip(pred, target)])
        ssim_values = np.array(
            [
                structural_similarity(
                    p, t, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1
                )
                for p, t in zip(pred, target)
            ]
        )
        timings.append(time.perf_counter() - started)
    return statistics.median(timings), psnr_values, ssim_values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="number of test images (default 256)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side; the median counts")
    parser.add_argument("--device", default="cpu", help="device for the batched side (default cpu)")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default results/eval_speed_<dev>.json)"
    )
    args = parser.parse_args()

    device = torch.device(args.device)
    pred, target = make_images(args.images, args.size)
    pred_np, target_np = pred[:, 0].numpy(), target[:, 0].numpy()  # (N, H, W) float32 views, not timed
    load_before = os.getloadavg()
    default_threads = torch.get_num_threads()

    skimage_seconds, skimage_psnr, skimage_ssim = time_skimage(pred_np, target_np, args.repeats)
    runs = {}
    thread_settings = (
        [1, default_threads] if device.type == "cpu" and default_threads > 1 else [default_threads]
    )
    for threads in thread_settings:
        torch.set_num_threads(threads)
        seconds, ours_psnr, ours_ssim = time_batched(pred.to(device), target.to(device), args.repeats)
        runs[f"torch_threads_{threads}"] = {
            "threads": threads,
            "seconds": round(seconds, 4),
            "ms_per_image": round(1000 * seconds / args.images, 4),
            "speedup_vs_skimage": round(skimage_seconds / seconds, 2),
            "max_abs_diff_psnr_db": float(np.abs(ours_psnr - skimage_psnr).max()),
            "max_abs_diff_ssim": float(np.abs(ours_ssim - skimage_ssim).max()),
        }
    torch.set_num_threads(default_threads)
    load_after = os.getloadavg()
    best = max(runs.values(), key=lambda run: run["speedup_vs_skimage"])

    print(f"{args.images} images of {args.size}x{args.size}, PSNR + SSIM per image, median of {args.repeats}")
    print(f"{'method':<34}{'seconds':>10}{'ms/image':>10}{'speed-up':>10}")
    skimage_ms = 1000 * skimage_seconds / args.images
    print(f"{'scikit-image loop (1 core)':<34}{skimage_seconds:>10.3f}{skimage_ms:>10.3f}{1.0:>10.1f}")
    for run in runs.values():
        label = f"meddenoise batched ({device.type}, {run['threads']} thr)"
        print(
            f"{label:<34}{run['seconds']:>10.3f}{run['ms_per_image']:>10.3f}{run['speedup_vs_skimage']:>10.1f}"
        )
    print(
        f"best speed-up {best['speedup_vs_skimage']}x (target 20x); "
        f"load average {load_before[0]:.2f} -> {load_after[0]:.2f}"
    )

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU: {cpu_name()}"
    payload = {
        "benchmark": "eval_speed",
        "device": device_name,
        "batched_device": str(device),
        "cpu_count": os.cpu_count(),
        "images": args.images,
        "image": f"{args.size}x{args.size} float32",
        "repeats": args.repeats,
        "statistic": "median seconds",
        "skimage_loop": {
            "seconds": round(skimage_seconds, 4),
            "ms_per_image": round(skimage_ms, 4),
            "calls": "peak_signal_noise_ratio + structural_similarity(gaussian_weights=True, sigma=1.5, "
            "use_sample_covariance=False, data_range=1), float32 inputs",
        },
        "batched": runs,
        "best_speedup": best["speedup_vs_skimage"],
        "target_speedup": 20,
        "meets_target": best["speedup_vs_skimage"] >= 20,
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "note": "1-minute load averages; a load above the core count means other processes shared the cores",
        "versions": {
            "meddenoise": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "skimage": skimage.__version__,
            "numpy": np.__version__,
        },
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = args.out or RESULTS / f"eval_speed_{device.type}.json"
    atomic_write_json(out, payload)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
