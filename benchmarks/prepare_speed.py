"""Images/s of `meddenoise prepare` on 1024x1024 8-bit PNGs vs a plain single-process PIL decode+resize loop.

Both read the same files in the same run. The target is prepare >= 0.8 x cores x the plain rate.
Writes benchmarks/results/prepare_speed_<host>.json with the machine, versions and the load average, because
a shared machine's other work lowers the parallel figure.

    python benchmarks/prepare_speed.py                  # makes 96 synthetic PNGs in a temporary folder
    python benchmarks/prepare_speed.py --images DIR     # or times real files (PNGs directly in DIR)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from meddenoise import __version__
from meddenoise.data.cache import available_cpus, prepare
from meddenoise.data.prepare_config import PrepareConfig
from meddenoise.data.sources.folder import FolderSource

RESAMPLE = {
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
}


def make_pngs(folder: Path, count: int, side: int = 1024, seed: int = 0) -> list[Path]:
    """Radiograph-like 8-bit PNGs: smooth large-scale structure plus grain (compresses like real ones)."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0, 1, side, dtype=np.float32)
    y, x = np.meshgrid(grid, grid, indexing="ij")
    paths = []
    for index in range(count):
        image = np.zeros((side, side), np.float32)
        for _ in range(6):
            fy, fx, phase = rng.uniform(0.5, 6), rng.uniform(0.5, 6), rng.uniform(0, 2 * np.pi)
            image += rng.uniform(0.2, 1) * np.cos(2 * np.pi * (fy * y + fx * x) + phase)
        image = (image - image.min()) / (image.max() - image.min()) * 200 + 20
        image += rng.normal(0, 4, image.shape).astype(np.float32)
        path = folder / f"{index // 3:08d}_{index % 3:03d}.png"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "L").save(path)
        paths.append(path)
    return paths


def plain_loop(paths: list[Path], size: int, filter_name: str) -> float:
    """Seconds for the baseline: open, decode, to grayscale, resize, to numpy; one process."""
    started = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            np.asarray(image.convert("L").resize((size, size), RESAMPLE[filter_name]))
    return time.perf_counter() - started


def timed_prepare(root: Path, out: Path, size: int, workers: int, filter_name: str) -> float:
    config = PrepareConfig(source="folder", root=str(root), out=str(out), size=size, workers=workers,
                           quiet=True, force=True, resize_filter=filter_name)  # fmt: skip
    config.check()
    started = time.perf_counter()
    prepare(FolderSource(config.root, exclude=[config.out]), config)
    return time.perf_counter() - started


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="folder of PNGs to time (default: make synthetic 1024x1024 ones)")
    parser.add_argument("--count", type=int, default=96, help="synthetic images to make")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--filter", default="lanczos", choices=sorted(RESAMPLE))
    parser.add_argument("--workers", type=int, default=0, help="prepare processes (0: all available cores)")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs of each")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/prepare_speed_<host>.json)")
    args = parser.parse_args()

    cores = args.workers or available_cpus()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="prepare_speed_") as scratch:
        scratch_path = Path(scratch)
        if args.images:
            root = Path(args.images)
            paths = sorted(root.glob("*.png"))
        else:
            root = scratch_path / "images"
            root.mkdir()
            paths = make_pngs(root, args.count)
        if not paths:
            raise SystemExit(f"no PNG files in {root}")
        with Image.open(paths[0]) as first:
            image_shape = f"{first.width}x{first.height} {first.mode}"
        plain = min(plain_loop(paths, args.size, args.filter) for _ in range(args.repeats))
        parallel = min(
            timed_prepare(root, scratch_path / "cache", args.size, cores, args.filter)
            for _ in range(args.repeats)
        )
        single = min(
            timed_prepare(root, scratch_path / "cache1", args.size, 1, args.filter) for _ in range(1)
        )
    plain_rate, parallel_rate, single_rate = len(paths) / plain, len(paths) / parallel, len(paths) / single
    ratio = parallel_rate / (cores * plain_rate)
    load_after = os.getloadavg()
    result = {
        "benchmark": "prepare_speed",
        "host": socket.gethostname(),
        "device": f"CPU: {cpu_model()}",
        "cpu_count": os.cpu_count(),
        "available_cpus": available_cpus(),
        "workers": cores,
        "images": len(paths),
        "image": image_shape,
        "synthetic": not args.images,
        "size": args.size,
        "filter": args.filter,
        "plain_loop_images_per_s": round(plain_rate, 2),
        "prepare_images_per_s": round(parallel_rate, 2),
        "prepare_1_worker_images_per_s": round(single_rate, 2),
        "ratio_vs_cores_x_plain": round(ratio, 3),
        "prepare_1_worker_vs_plain": round(single_rate / plain_rate, 3),
        "target_ratio": 0.8,
        "meets_target": ratio >= 0.8,
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "note": "load average > 0 means other processes shared the cores during the run",
        "versions": {
            "meddenoise": __version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pillow": Image.__version__,
        },
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    default_out = Path(__file__).parent / "results" / f"prepare_speed_{socket.gethostname()}.json"
    out = Path(args.out) if args.out else default_out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{len(paths)} images {image_shape} -> {args.size}: plain loop {plain_rate:.1f} img/s, "
        f"prepare ({cores} workers) {parallel_rate:.1f} img/s, prepare (1 worker) {single_rate:.1f} img/s; "
        f"ratio vs {cores} x plain = {ratio:.2f} (target 0.8); "
        f"load avg {load_before[0]:.1f} -> {load_after[0]:.1f}"
    )
    print(f"written {out}")


if __name__ == "__main__":
    main()
