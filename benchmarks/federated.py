"""Federated training vs centralized training on the quick data, and Flower's overhead per round.

Runs, on one prepared folder (the rendered default of the quick preset unless --data is given), with the
quick preset's U-Net settings:
- centralized: `meddenoise train` for R epochs;
- FedAvg on 3 IID sites, R rounds of one local epoch each (so the sites together take as many local steps
  as the centralized run takes steps, give or take one partial batch per site);
- FedAvg and FedProx on 3 non-IID sites (Dirichlet alpha, 0.1 by default; more alphas with --alphas).

For each: the mean test PSNR / SSIM of the best checkpoint on the same test images (the union of the sites'
test splits is the folder's test split), the gap to centralized, the rounds until the global validation
PSNR comes within 0.5 dB of the centralized run's best, megabytes per round, wall time, and per round the
share of Flower's own time (messages, serialisation, aggregation, Ray) in the sites' local training time.
Writes `results/federated_<device kind>.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import environment, finish, format_table, settings_record  # noqa: E402

# The quick preset's U-Net (meddenoise.reproduce, preset "quick").
QUICK_UNET = {
    "model": "unet",
    "base_channels": 8,
    "depth": 3,
    "batch_size": 8,
    "val_batch_size": 64,
    "lr": 5e-3,
    "lr_schedule": "onecycle",
}
WITHIN_DB = 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="a prepared folder (default: the quick data)")
    parser.add_argument(
        "--cache", type=Path, default=Path("/tmp/meddenoise-bench"), help="where to prepare it"
    )
    parser.add_argument("--rounds", type=int, default=12, help="rounds, and epochs of the centralized run")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1], help="Dirichlet alphas (non-IID)")
    parser.add_argument("--proximal-mu", type=float, default=0.01)
    parser.add_argument("--noise-std", type=float, default=0.2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--runs", type=Path, default=None, help="keep the run folders here (default: temporary)"
    )
    parser.add_argument("--out-dir", type=Path, default=None, help="where the JSON goes (default results/)")
    return parser.parse_args(argv)


def quick_data(args: argparse.Namespace) -> Path:
    from meddenoise.cli import main as cli_main

    folder = args.cache / "default-480-64"
    # The quick preset's data; `prepare` reuses an up-to-date folder.
    command = ["prepare", "--source", "default", "--count", "480", "--size", "64", "--out", str(folder)]
    if cli_main([*command, "--quiet"]) != 0:
        raise SystemExit(f"could not prepare the quick data in {folder}")
    return folder


def centralized(data: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    from meddenoise.config import config_from_mapping
    from meddenoise.engine.config import TrainConfig
    from meddenoise.engine.train import fit
    from meddenoise.rundir import RunDir, read_rows

    values = {**QUICK_UNET, "data": str(data), "out": str(out), "epochs": args.rounds, "patience": 0}
    values.update(noise_std=args.noise_std, device=args.device, quiet=True)
    started = time.perf_counter()
    fit(config_from_mapping(TrainConfig, values))
    seconds = time.perf_counter() - started
    run = RunDir(out)
    records = run.read_metrics()
    rows = read_rows(run.test_table_file)
    return {
        "name": "centralized",
        "val_psnr": [r["val_psnr"] for r in records],
        "best_val_psnr": max(r["val_psnr"] for r in records),
        "test_psnr": statistics.fmean(float(r["psnr"]) for r in rows),
        "test_ssim": statistics.fmean(float(r["ssim"]) for r in rows),
        "test_images": len(rows),
        "local_steps": sum(r["steps"] for r in records),
        "wall_seconds": seconds,
        "train_seconds": sum(r["train_seconds"] for r in records),
    }


def federated(name: str, data: Path, out: Path, args: argparse.Namespace, **options: Any) -> dict[str, Any]:
    from meddenoise.config import config_from_mapping
    from meddenoise.federated import run_federated
    from meddenoise.federated.config import FederatedConfig
    from meddenoise.rundir import RunDir

    values = {**QUICK_UNET, "data": str(data), "out": str(out), "sites": args.sites, "rounds": args.rounds}
    values.update(local_epochs=1, noise_std=args.noise_std, device=args.device, quiet=True, sim_cpus=1)
    values.update(options)
    started = time.perf_counter()
    run_federated(config_from_mapping(FederatedConfig, values))
    seconds = time.perf_counter() - started
    records = RunDir(out).read_metrics()
    test = json.loads((out / "test_summary.json").read_text())
    sites = json.loads((out / "sites.json").read_text())["sites"]
    # Flower's share per round; the first round also pays for starting the site processes (torch imports).
    shares = [r["flower_overhead_seconds"] / r["local_train_seconds"] for r in records]
    return {
        "name": name,
        "options": options,
        "site_train_images": [int(s["train-images"]) for s in sites],
        "val_psnr": [r["val_psnr"] for r in records],
        "best_val_psnr": max(r["val_psnr"] for r in records),
        "test_psnr": test["psnr"],
        "test_ssim": test["ssim"],
        "test_images": test["images"],
        "local_steps": sum(r["steps"] for r in records),
        "megabytes_per_round": statistics.fmean(
            (r["bytes_sent"] + r["bytes_received"]) / 1e6 for r in records
        ),
        "wall_seconds": seconds,
        "round_seconds": [r["round_seconds"] for r in records],
        "local_train_seconds": [r["local_train_seconds"] for r in records],
        "local_eval_seconds": [r["local_eval_seconds"] for r in records],
        "flower_seconds": [r["flower_overhead_seconds"] for r in records],
        "flower_share_first_round": shares[0],
        "flower_share_median_later_rounds": statistics.median(shares[1:]) if len(shares) > 1 else None,
        "flower_share_all_rounds": sum(r["flower_overhead_seconds"] for r in records)
        / sum(r["local_train_seconds"] for r in records),
    }


def rounds_within(run: dict[str, Any], target: float) -> int | None:
    return next((k + 1 for k, value in enumerate(run["val_psnr"]) if value >= target - WITHIN_DB), None)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    args = parse_args(argv)
    device = torch.device(args.device if args.device != "auto" else "cpu")
    machine = environment(device)  # at the start: the load average before the runs
    data = args.data or quick_data(args)
    runs_root = args.runs or Path(tempfile.mkdtemp(prefix="federated-bench-"))
    runs_root.mkdir(parents=True, exist_ok=True)
    results = [centralized(data, runs_root / "centralized", args)]
    results.append(federated("fedavg_iid", data, runs_root / "fedavg-iid", args, partition="iid"))
    for alpha in args.alphas:
        common = {"partition": "dirichlet", "alpha": alpha}
        label = f"dirichlet_{alpha:g}"
        results.append(federated(f"fedavg_{label}", data, runs_root / f"fedavg-{label}", args, **common))
        prox = {"strategy": "fedprox", "proximal_mu": args.proximal_mu, **common}
        results.append(federated(f"fedprox_{label}", data, runs_root / f"fedprox-{label}", args, **prox))
    reference = results[0]
    for run in results:
        run["test_psnr_gap_db"] = run["test_psnr"] - reference["test_psnr"]
        run["rounds_within_0_5_db"] = rounds_within(run, reference["best_val_psnr"])
    columns = [
        ("name", "run"),
        ("test_psnr", "test PSNR"),
        ("test_psnr_gap_db", "gap dB"),
        ("test_ssim", "test SSIM"),
        ("rounds_within_0_5_db", "rounds to -0.5 dB"),
        ("local_steps", "local steps"),
        ("megabytes_per_round", "MB/round"),
        ("flower_share_median_later_rounds", "Flower/local (rounds 2+)"),
        ("wall_seconds", "wall s"),
    ]
    print(format_table(results, columns), flush=True)
    from importlib.metadata import version

    payload = {
        "benchmark": "federated",
        "environment": machine,
        "libraries": {name: version(name) for name in ("flwr", "ray")},
        "settings": {**settings_record(args, str(data)), "unet": QUICK_UNET, "runs": str(runs_root)},
        "results": results,
    }
    finish("federated", payload, device, args.out_dir)
    return payload


if __name__ == "__main__":
    main()
