"""Test-set metrics (PSNR + SSIM per image): meddenoise's batched torch code vs a per-image scikit-image loop.

Both score the same images in the same run; the loop is what evaluation code usually writes:
`peak_signal_noise_ratio` + `structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)` per image, given float32 numpy views of the tensors (no conversion
is timed). The batched code runs with 1 torch thread and with all cores. Target: >= 20x on the CPU.
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

import bench_common as common
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


def _timed(function, repeats: int) -> tuple[float, float, object]:
    """Median wall seconds and median process CPU seconds over `repeats` calls, and the last result.

    CPU time is reported beside wall time because on a shared machine other processes stretch the wall
    clock (and, with several torch threads, make OpenMP threads wait for each other) while CPU time mostly
    measures our own work.
    """
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        result = function()
        walls.append(time.perf_counter() - wall_start)
        cpus.append(time.process_time() - cpu_start)
    return statistics.median(walls), statistics.median(cpus), result


def time_batched(
    pred: torch.Tensor, target: torch.Tensor, repeats: int
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Median wall and CPU seconds over `repeats` after a warm-up, and the values of the last run."""
    warm = slice(0, min(8, pred.shape[0]))
    psnr(pred[warm], target[warm]), ssim(pred[warm], target[warm])  # allocator, oneDNN kernels, CUDA context

    def both():
        values = psnr(pred, target), ssim(pred, target)
        common.synchronize(pred.device)
        return values

    wall, cpu, (psnr_values, ssim_values) = _timed(both, repeats)
    return wall, cpu, psnr_values.cpu().numpy(), ssim_values.cpu().numpy()


def time_skimage(
    pred: np.ndarray, target: np.ndarray, repeats: int
) -> tuple[float, float, np.ndarray, np.ndarray]:
    def loop():
        psnr_values = np.array([peak_signal_noise_ratio(t, p, data_range=1) for p, t in zip(pred, target)])
        ssim_values = np.array(
            [
                structural_similarity(
                    p, t, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1
                )
                for p, t in zip(pred, target)
            ]
        )
        return psnr_values, ssim_values

    structural_similarity(pred[0], target[0], data_range=1)  # warm-up: lazy imports inside scikit-image
    wall, cpu, (psnr_values, ssim_values) = _timed(loop, repeats)
    return wall, cpu, psnr_values, ssim_values


def single_core_gflops() -> float:
    """float32 GEMM rate of one torch thread (MKL/oneDNN), the practical arithmetic ceiling of this CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    a, b = torch.rand(1024, 1024), torch.rand(1024, 1024)
    torch.mm(a, b)
    seconds = min(_timed(lambda: torch.mm(a, b), 1)[1] for _ in range(5))
    torch.set_num_threads(previous)
    return 2 * 1024**3 / seconds / 1e9


def ssim_filter_mmac(side: int, window: int = 11) -> float:
    """Multiply-adds of the separable SSIM filter per image: 4 maps (u, v, u^2, v^2), two valid passes."""
    valid = side - window + 1
    return 4 * window * (valid * side + valid * valid) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="number of test images (default 256)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side; the median counts")
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

    skimage_seconds, skimage_cpu, skimage_psnr, skimage_ssim = time_skimage(pred_np, target_np, args.repeats)
    runs = {}
    thread_settings = (
        [1, default_threads] if device.type == "cpu" and default_threads > 1 else [default_threads]
    )
    for threads in thread_settings:
        torch.set_num_threads(threads)
        seconds, cpu_seconds, ours_psnr, ours_ssim = time_batched(
            pred.to(device), target.to(device), args.repeats
        )
        runs[f"torch_threads_{threads}"] = {
            "threads": threads,
            "seconds": round(seconds, 4),
            "cpu_seconds": round(cpu_seconds, 4),
            "ms_per_image": round(1000 * seconds / args.images, 4),
            "speedup_vs_skimage": round(skimage_seconds / seconds, 2),
            "cpu_time_speedup_vs_skimage": round(skimage_cpu / cpu_seconds, 2),
            "max_abs_diff_psnr_db": float(np.abs(ours_psnr - skimage_psnr).max()),
            "max_abs_diff_ssim": float(np.abs(ours_ssim - skimage_ssim).max()),
        }
    torch.set_num_threads(default_threads)
    load_after = os.getloadavg()
    best = max(runs.values(), key=lambda run: run["speedup_vs_skimage"])
    gflops = single_core_gflops() if device.type == "cpu" else None
    filter_mmac = ssim_filter_mmac(args.size)

    print(f"{args.images} images of {args.size}x{args.size}, PSNR + SSIM per image, median of {args.repeats}")
    print(f"{'method':<34}{'seconds':>10}{'ms/image':>10}{'speed-up':>10}{'cpu s':>10}{'cpu x':>8}")
    skimage_ms = 1000 * skimage_seconds / args.images
    print(
        f"{'scikit-image loop (1 core)':<34}{skimage_seconds:>10.3f}{skimage_ms:>10.3f}{1.0:>10.1f}"
        f"{skimage_cpu:>10.3f}{1.0:>8.1f}"
    )
    for run in runs.values():
        label = f"meddenoise batched ({device.type}, {run['threads']} thr)"
        print(
            f"{label:<34}{run['seconds']:>10.3f}{run['ms_per_image']:>10.3f}{run['speedup_vs_skimage']:>10.1f}"
            f"{run['cpu_seconds']:>10.3f}{run['cpu_time_speedup_vs_skimage']:>8.1f}"
        )
    print(
        f"best speed-up {best['speedup_vs_skimage']}x (target 20x); "
        f"load average {load_before[0]:.2f} -> {load_after[0]:.2f} on {os.cpu_count()} CPUs"
    )
    floor_ms = None
    if gflops is not None:
        floor_ms = 2 * filter_mmac / gflops  # 2 flops per multiply-add; M / G = ms
        print(
            f"SSIM filter: {filter_mmac:.1f} M multiply-adds per image; at this core's float32 GEMM rate "
            f"({gflops:.0f} GFLOP/s) that alone takes {floor_ms:.3f} ms per image per core"
        )

    device_name = common.device_name(device)
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
        "skimage_loop_cpu_seconds": round(skimage_cpu, 4),
        "single_core_gemm_gflops": None if gflops is None else round(gflops, 1),
        "ssim_filter_mmac_per_image": round(filter_mmac, 2),
        "ssim_filter_floor_ms_per_image_one_core": None if floor_ms is None else round(floor_ms, 4),
        "note": "1-minute load averages; a load above the core count means other processes shared the cores. "
        "cpu_seconds is process CPU time (all threads), less sensitive to that sharing than wall seconds.",
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
