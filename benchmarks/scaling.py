"""Benchmark 5: scaling, controlled. One device vs DataParallel vs DDP, AMP off and on, at EQUAL global batch
and at equal per-device batch, so that parallelism, precision and batch size are not confounded (the paper's
batch went 16 -> 32 -> 64 as it added GPUs and AMP).

Every row is a real `meddenoise train` run (a subprocess: DDP needs torchrun) of `--epochs` epochs on the same
prepared folder; the figures are the last epoch's training images/s and seconds from metrics.jsonl, and the
final training / validation loss (at equal global batch the runs optimise the same objective; BatchNorm still
normalises each device's part of the batch separately).

CPU: each core plays one device. DDP is 2 gloo processes of 1 thread each; the single-device rows use 1
thread. DataParallel has no CPU parallelism (it is a pass-through on one CPU device), so its CPU rows show
only the wrapper's cost. GPU: DP and DDP (NCCL) over all visible GPUs when there are at least 2, else skipped.

    python benchmarks/scaling.py --device cpu                         # 64 x 64 synthetic, U-Net base 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

import bench_common as common


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA if present) or cpu")
    parser.add_argument(
        "--data", type=Path, default=None, help="a prepared folder (default: synthetic images)"
    )
    parser.add_argument("--train-images", type=int, default=384)
    parser.add_argument("--size", type=int, default=64, help="side of synthetic images")
    parser.add_argument("--model", default="unet")
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--global-batch", type=int, default=16, help="the single-device batch")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (the last is reported)")
    parser.add_argument("--amp-on", default="bf16", choices=["bf16", "fp16"], help="precision of 'AMP on'")
    parser.add_argument("--amp-settings", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--strategies", nargs="+", default=["dp", "ddp"], choices=["dp", "ddp"],
                        help="compared with one device")  # fmt: skip
    parser.add_argument("--batch-settings", nargs="+", default=["global", "per-device"],
                        choices=["global", "per-device"], help="which batch is held equal")  # fmt: skip
    parser.add_argument("--norm", default="batch", choices=["batch", "group"])
    parser.add_argument("--out-dir", type=Path, default=None, help="where the JSON goes (default results/)")
    return parser.parse_args(argv)


def plan(args: argparse.Namespace, device: torch.device) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The runs (strategy, processes, per-device batch, amp, threads) and the rows skipped, with reasons."""
    if device.type == "cuda":
        devices = torch.cuda.device_count()
        threads = None
    else:
        # Each CPU core plays one device: one thread per process, so DDP's 2 processes use 2 cores and the
        # single-device run 1 (2-thread pools also stall badly on a shared machine).
        devices, threads = 2, 1
    runs, skipped = [], []
    for amp in ["off" if setting == "off" else args.amp_on for setting in args.amp_settings]:
        runs.append(
            {
                "strategy": "single",
                "devices": 1,
                "batch": args.global_batch,
                "amp": amp,
                "threads": threads,
                "setting": "baseline",
            }
        )
        if device.type == "cuda" and devices < 2:
            reason = f"{devices} GPU visible: DP and DDP need at least 2"
            skipped += [{"strategy": s, "amp": amp, "reason": reason} for s in args.strategies]
            continue
        if args.global_batch % devices:
            raise SystemExit(f"--global-batch {args.global_batch} must be divisible by {devices} devices")
        for strategy in args.strategies:
            if strategy == "dp" and device.type == "cpu":
                # DataParallel has one CPU device to use: a single run shows the wrapper's cost, nothing more.
                runs.append({"strategy": "dp", "devices": 1, "batch": args.global_batch, "amp": amp,
                             "threads": threads, "setting": "one CPU device (DP wrapper only)"})  # fmt: skip
                continue
            per_process_threads = 1 if (strategy == "ddp" and device.type == "cpu") else threads
            settings = {
                "global": ("equal global batch", args.global_batch // devices),
                "per-device": ("equal per-device batch", args.global_batch),
            }
            for setting, batch in (settings[name] for name in args.batch_settings):
                runs.append(
                    {
                        "strategy": strategy,
                        "devices": devices,
                        "batch": batch,
                        "amp": amp,
                        "threads": per_process_threads,
                        "setting": setting,
                    }
                )
    return runs, skipped


def run_one(
    run: dict[str, Any], data: Path, out: Path, args: argparse.Namespace, device: torch.device
) -> dict:
    argv = [
        sys.executable,
        "-m",
        "meddenoise",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--model",
        args.model,
        "--base-channels",
        str(args.base_channels),
        "--norm",
        args.norm,
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(run["batch"]),
        "--amp",
        run["amp"],
        "--strategy",
        run["strategy"],
        "--device",
        "cuda" if device.type == "cuda" else "cpu",
        "--limit-train",
        str(args.train_images),
        "--limit-val",
        "32",
        "--patience",
        "0",
        "--no-evaluate-test",
        "--quiet",
    ]
    if run["strategy"] == "ddp":
        argv += ["--nproc", str(run["devices"])]
    environment = dict(os.environ)
    if run["threads"]:
        environment["OMP_NUM_THREADS"] = str(run["threads"])
    completed = subprocess.run(argv, env=environment, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(
            f"run failed: {' '.join(argv)}\n{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}"
        )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    return {
        **run,
        "global_batch": run["batch"] * (run["devices"] if run["strategy"] != "single" else 1),
        "images_per_second": last["images_per_second"],
        "train_seconds": last["train_seconds"],
        "train_loss": last["train_loss"],
        "val_loss": last["val_loss"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = common.resolve_device(args.device)
    environment = common.environment(device)
    runs, skipped = plan(args, device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="scaling-") as scratch:
        data = args.data or common.write_synthetic_prepared(
            Path(scratch) / "data", {"train": args.train_images, "val": 32}, args.size
        )
        for index, run in enumerate(runs):
            row = run_one(run, data, Path(scratch) / f"run{index}", args, device)
            rows.append(row)
            print(
                f"{row['strategy']:<6} amp {row['amp']:<4} {row['setting']:<22} batch {row['batch']:>3} x "
                f"{row['devices']}: {row['images_per_second']:.1f} img/s",
                flush=True,
            )
    for row in rows:
        baseline = next(r for r in rows if r["strategy"] == "single" and r["amp"] == row["amp"])
        row["speedup_vs_single"] = row["images_per_second"] / baseline["images_per_second"]
    columns = [
        ("strategy", "strategy"),
        ("devices", "devices"),
        ("amp", "amp"),
        ("setting", "setting"),
        ("batch", "batch/device"),
        ("global_batch", "global"),
        ("threads", "threads"),
        ("images_per_second", "img/s"),
        ("speedup_vs_single", "x single"),
        ("train_loss", "train loss"),
        ("val_loss", "val loss"),
    ]
    print(common.format_table(rows, columns))
    for item in skipped:
        print(f"skipped {item['strategy']} (amp {item['amp']}): {item['reason']}")
    settings = common.settings_record(args, common.data_description(args))
    payload = {
        "benchmark": "scaling",
        "environment": environment,
        "settings": settings,
        "backend": "nccl" if device.type == "cuda" else "gloo",
        "notes": [
            "DataParallel on CPU wraps one device: no parallelism, only its overhead",
            "each CPU core plays one device: DDP 2 processes x 1 thread, single and DP 1 process x 1 thread",
        ]
        if device.type == "cpu"
        else [],
        "results": rows,
        "skipped": skipped,
    }
    common.finish("scaling", payload, device, args.out_dir)
    return payload


if __name__ == "__main__":
    main()
