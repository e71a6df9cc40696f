"""Data placement: streamed vs resident training throughput, and peak memory of `train` against dataset size.

Part `throughput`: `fit` runs on one prepared folder, alternating `--data-placement device` and `stream`
(device, stream, device, stream, ... so drift on a shared machine hits both), each for a few epochs; the
figure is images/s of the epochs after the first (warm-up), median per placement, and the ratio
stream / device (target >= 0.9 on the CPU, where compute dominates). `--device cuda` measures the same on a
GPU (bf16), where streaming has to hide the host-to-device copies behind the step.

Part `rss`: `meddenoise train` as a child process on prepared folders of N images (default 10k, 30k, 100k at
64 x 64, uint8), once per placement, for a fixed number of steps. /proc/<pid>/status is sampled every 20 ms:
peak RssAnon (the process's own memory: tensors, the manifest, Python objects) and peak RssFile (pages of
mapped files: shared libraries and the touched pages of images.npy, i.e. page cache that the kernel can
reclaim), plus the peak of their sum (VmHWM-like). Resident placement copies the splits, so its RssAnon grows
with N; streaming should not, apart from per-image metadata (manifest rows, coverage counters).

    python benchmarks/data_placement.py --part throughput
    python benchmarks/data_placement.py --part rss --counts 10000 30000 100000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

import bench_common as common
from meddenoise.config import config_from_mapping
from meddenoise.engine.config import TrainConfig
from meddenoise.engine.train import fit

TARGET_RATIO = 0.9
SAMPLE_SECONDS = 0.02


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["throughput", "rss", "both"], default="both")
    parser.add_argument("--device", default="cpu", help="throughput part: cpu, cuda, auto (rss: CPU only)")
    parser.add_argument("--size", type=int, default=64, help="side of the synthetic images")
    parser.add_argument("--model", default="unet")
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    # throughput
    parser.add_argument("--train-images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fit run (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="fit runs per placement, alternating")
    # rss
    parser.add_argument("--counts", type=int, nargs="+", default=[10000, 30000, 100000])
    parser.add_argument("--val-images", type=int, default=256, help="rss: validation images per folder")
    parser.add_argument("--steps", type=int, default=100, help="rss: training steps per run")
    parser.add_argument("--scratch", type=Path, default=None, help="where the prepared folders go")
    parser.add_argument("--out-dir", type=Path, default=None, help="where the JSON goes (default results/)")
    return parser.parse_args(argv)


def write_large_prepared(folder: Path, train: int, val: int, size: int) -> Path:
    """A prepared folder of `train` + `val` smooth synthetic images, generated in chunks (bounded memory)."""
    from meddenoise.data.manifest import PreparedWriter
    from meddenoise.data.records import ImageRecord

    count = train + val
    writer = PreparedWriter(folder, count, size, size, "uint8")
    chunk = 2048
    for start in range(0, count, chunk):
        end = min(count, start + chunk)
        writer.images[start:end] = common.smooth_uint8_images(end - start, size, seed=start)
    records = [
        ImageRecord(
            image_id=f"synthetic{i:07d}",
            patient_id=f"p{i:07d}",
            source="synthetic",
            path=f"synthetic/{i:07d}",
            group=f"p{i:07d}",
        )
        for i in range(count)
    ]
    splits = ["train"] * train + ["val"] * val
    params = {"source": "synthetic-benchmark", "size": size, "counts": {"train": train, "val": val}}
    return writer.commit(records, splits, params)


# -- part 1: throughput ----------------------------------------------------------------------------------
def train_config(data: Path, out: Path, placement: str, args: argparse.Namespace) -> TrainConfig:
    values = {
        "data": str(data),
        "out": str(out),
        "model": args.model,
        "base_channels": args.base_channels,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "limit_val": 32,
        "device": args.device,
        "amp": "auto",  # bf16 on CUDA, fp32 on the CPU
        "patience": 0,
        "evaluate_test": False,
        "quiet": True,
        "data_placement": placement,
    }
    return config_from_mapping(TrainConfig, values)


def throughput(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    data = common.write_synthetic_prepared(
        scratch / "throughput", {"train": args.train_images, "val": 32}, args.size
    )
    rates: dict[str, list[float]] = {"device": [], "stream": []}
    for round_index in range(args.rounds):
        for placement in ("device", "stream"):
            out = fit(train_config(data, scratch / f"run-{placement}-{round_index}", placement, args))
            records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            rates[placement] += [r["images_per_second"] for r in records[1:]]
            print(
                f"  round {round_index + 1} {placement}: " + ", ".join(f"{r:.1f}" for r in rates[placement])
            )
    medians = {placement: statistics.median(values) for placement, values in rates.items()}
    ratio = medians["stream"] / medians["device"]
    rows = [{"placement": p, "images_per_second_median": medians[p], "epochs": len(rates[p])} for p in rates]
    print(common.format_table(rows, [("placement", "placement"), ("images_per_second_median", "img/s"),
                                     ("epochs", "epochs timed")]))  # fmt: skip
    print(f"stream / device = {ratio:.3f} (target >= {TARGET_RATIO})")
    return {"images_per_second": rates, "medians": medians, "ratio": ratio, "target_ratio": TARGET_RATIO}


# -- part 2: peak memory against dataset size ------------------------------------------------------------
def read_status(pid: int) -> dict[str, int]:
    values = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return values


def measure_train(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run `command`, sampling its memory until it exits; peaks in MiB and the wall time."""
    peaks = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0, "VmHWM": 0}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    while process.poll() is None:
        status = read_status(process.pid)
        for key in peaks:
            peaks[key] = max(peaks[key], status.get(key, 0))
        time.sleep(SAMPLE_SECONDS)
    reader.join()
    if process.returncode != 0:
        raise RuntimeError(f"train failed ({process.returncode}):\n{''.join(output)[-3000:]}")
    result = {f"peak_{key}_mib": value / 2**20 for key, value in peaks.items()}
    result["seconds"] = time.perf_counter() - started
    result["placement_line"] = next((line.strip() for line in output if "data placement" in line), "")
    return result


def rss(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": os.pathsep.join(sys.path)}
    rows = []
    for count in args.counts:
        started = time.perf_counter()
        data = write_large_prepared(scratch / f"rss-{count}", count, args.val_images, args.size)
        images_mib = (data / "images.npy").stat().st_size / 2**20
        seconds = time.perf_counter() - started
        print(f"  {count} images: images.npy {images_mib:.0f} MiB, written in {seconds:.0f} s")
        for placement in ("device", "stream"):
            out = scratch / f"rss-run-{count}-{placement}"
            command = [
                sys.executable, "-m", "meddenoise", "train", "--data", str(data), "--out", str(out),
                "--model", args.model, "--base-channels", str(args.base_channels),
                "--batch-size", str(args.batch_size), "--max-steps", str(args.steps), "--epochs", "1",
                "--device", "cpu", "--amp", "off", "--no-evaluate-test", "--quiet",
                "--data-placement", placement,
            ]  # fmt: skip
            measured = measure_train(command, env)
            rows.append({"images": count, "placement": placement, "images_npy_mib": images_mib, **measured})
            print(
                f"    {placement}: peak RssAnon {measured['peak_RssAnon_mib']:.0f} MiB, RssFile "
                f"{measured['peak_RssFile_mib']:.0f} MiB, VmHWM {measured['peak_VmHWM_mib']:.0f} MiB, "
                f"{measured['seconds']:.0f} s"
            )
        for path in (data / "images.npy",):
            path.unlink()  # free the disk before the next size
    columns = [("images", "images"), ("placement", "placement"), ("images_npy_mib", "images.npy MiB"),
               ("peak_RssAnon_mib", "peak anon MiB"), ("peak_RssFile_mib", "peak file MiB"),
               ("peak_VmHWM_mib", "peak RSS MiB"), ("seconds", "s")]  # fmt: skip
    print(common.format_table(rows, columns))
    return {"rows": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = common.resolve_device(args.device)
    args.device = str(device)
    if device.type != "cpu" and args.part != "throughput":
        raise SystemExit("--part rss measures host memory of CPU runs; use --part throughput on a GPU")
    torch.set_num_threads(args.threads)
    environment = common.environment(device)
    payload: dict[str, Any] = {
        "benchmark": "data_placement",
        "environment": environment,
        "settings": common.settings_record(args, f"synthetic {args.size}x{args.size} uint8"),
    }
    with tempfile.TemporaryDirectory(prefix="data-placement-", dir=args.scratch) as scratch:
        if args.part in ("throughput", "both"):
            print("throughput: streamed vs resident, alternating fit runs")
            payload["throughput"] = throughput(args, Path(scratch))
        if args.part in ("rss", "both"):
            print(f"peak memory of `train` ({args.steps} steps) against dataset size")
            payload["rss"] = rss(args, Path(scratch))
    name = "data_placement" if args.part == "both" else f"data_placement_{args.part}"
    common.finish(name, payload, device, args.out_dir)
    return payload


if __name__ == "__main__":
    main()
