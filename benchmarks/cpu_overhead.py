"""Benchmark 6: CPU overhead ratio = one training epoch's wall time / the same steps as bare compute.

The epoch is a real `fit` run (its metrics.jsonl `train_seconds`: gathering batches, making noise, the step,
the device-side loss bookkeeping). The bare loop runs the same number of `zero_grad / forward / L1 /
backward / Adam step` calls with the same model, optimizer and batch sizes, on noisy/clean tensors made
beforehand. The ratio says how much the pipeline adds to pure compute; the target is <= 1.05 for the fast
path. The reference pipeline's ratio is measured the same way for comparison.

Timings on a shared machine drift, so the bare loop runs before and after the epochs and every figure is the
median of several epochs (the first epoch of each fit run, warm-up, is left out).

    python benchmarks/cpu_overhead.py                     # 64 x 64 synthetic, U-Net base 16, batch 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import bench_common as common
from meddenoise.config import config_from_mapping
from meddenoise.data.cache import load_prepared
from meddenoise.data.loader import DeviceBatches
from meddenoise.engine.config import TrainConfig
from meddenoise.engine.losses import build_loss
from meddenoise.engine.step import build_optimizer
from meddenoise.engine.train import fit

TARGET_RATIO = 1.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=None, help="a prepared folder (default: synthetic images)"
    )
    parser.add_argument("--train-images", type=int, default=512)
    parser.add_argument("--size", type=int, default=64, help="side of synthetic images")
    parser.add_argument("--model", default="unet")
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per fit run (the first is warm-up)")
    parser.add_argument(
        "--pipelines", nargs="+", default=["fast", "reference"], choices=["fast", "reference"]
    )
    parser.add_argument("--workers", type=int, default=1, help="reference DataLoader workers (2 cores here)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both sides")
    parser.add_argument("--out-dir", type=Path, default=None, help="where the JSON goes (default results/)")
    return parser.parse_args(argv)


def train_config(data: Path, out: Path, pipeline: str, args: argparse.Namespace) -> TrainConfig:
    values = {
        "data": str(data),
        "out": str(out),
        "model": args.model,
        "base_channels": args.base_channels,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "limit_train": args.train_images,
        "limit_val": 16,
        "device": "cpu",
        "amp": "off",
        "patience": 0,
        "evaluate_test": False,
        "quiet": True,
        "pipeline": pipeline,
        "loader_workers": args.workers,
    }
    return config_from_mapping(TrainConfig, values)


def bare_epochs(config: TrainConfig, repeats: int) -> list[float]:
    """Seconds per epoch of bare steps on pre-made tensors (one untimed epoch first)."""
    data = load_prepared(config.data)
    batches = DeviceBatches.from_prepared(data, "train", "cpu", config.batch_size, limit=config.limit_train)
    noise = config.noise.build()
    pairs = []  # (noisy, clean) per step, the epoch-0 batches: (b, 1, H, W) float32 each
    for batch in batches.epoch(0):
        pairs.append((noise(batch.clean, batch.image_keys, seed=0, mode="fixed"), batch.clean))
    torch.manual_seed(config.seed)
    model = config.model_spec().build()
    optimizer = build_optimizer(model, "adam", config.lr, 0.0, torch.device("cpu"))
    loss_fn = build_loss("l1")
    model.train()

    def one_epoch() -> float:
        started = time.perf_counter()
        for noisy, clean in pairs:
            optimizer.zero_grad(set_to_none=True)
            output = model(noisy)
            heads = [output] if isinstance(output, torch.Tensor) else list(output)
            torch.stack([loss_fn(head, clean) for head in heads]).mean().backward()
            optimizer.step()
        return time.perf_counter() - started

    one_epoch()
    return [one_epoch() for _ in range(repeats)]


def fit_epochs(config: TrainConfig) -> list[float]:
    """`train_seconds` of each epoch after the first."""
    out = fit(config)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [record["train_seconds"] for record in records[1:]]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device("cpu")
    # One thread by default: on a shared 2-core machine a 2-thread OpenMP pool stalls whenever another process
    # holds a core, which swamps the few per cent being measured (fit keeps the thread count it finds).
    torch.set_num_threads(args.threads)
    environment = common.environment(device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cpu-overhead-") as scratch:
        data = args.data or common.write_synthetic_prepared(
            Path(scratch) / "data", {"train": args.train_images, "val": 16}, args.size
        )
        repeats = max(1, args.epochs - 1)
        bare_config = train_config(data, Path(scratch) / "bare", "fast", args)
        bare = bare_epochs(bare_config, repeats)
        epochs = {}
        for pipeline in args.pipelines:  # bare epochs before and after every fit run, against drift
            epochs[pipeline] = fit_epochs(train_config(data, Path(scratch) / pipeline, pipeline, args))
            bare += bare_epochs(bare_config, repeats)
        bare_median = statistics.median(bare)
        for pipeline, seconds in epochs.items():
            median = statistics.median(seconds)
            rows.append(
                {
                    "pipeline": pipeline,
                    "epoch_seconds": seconds,
                    "epoch_median_seconds": median,
                    "bare_median_seconds": bare_median,
                    "ratio": median / bare_median,
                    "ratio_of_minimums": min(seconds) / min(bare),
                }
            )
    steps = -(-args.train_images // args.batch_size)
    print(f"{steps} steps per epoch; bare epochs {', '.join(f'{s:.2f}' for s in bare)} s")
    columns = [
        ("pipeline", "pipeline"),
        ("epoch_median_seconds", "epoch s"),
        ("bare_median_seconds", "bare s"),
        ("ratio", "ratio (medians)"),
        ("ratio_of_minimums", "ratio (minimums)"),
    ]
    print(common.format_table(rows, columns))
    settings = common.settings_record(args, common.data_description(args))
    settings.update(steps_per_epoch=steps, precision="fp32")
    payload = {
        "benchmark": "cpu_overhead",
        "environment": environment,
        "settings": settings,
        "bare_epoch_seconds": bare,
        "target_ratio_fast": TARGET_RATIO,
        "results": rows,
    }
    common.finish(
        "cpu_overhead", payload, device, args.out_dir, f"target for the fast path: <= {TARGET_RATIO}; "
    )
    return payload


if __name__ == "__main__":
    main()
