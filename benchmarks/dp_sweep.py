"""DP-SGD settings sweep on real patients (issue 19): which expected batch, learning rate, clipping norm and
epochs make DP-SGD useful, from scratch and fine-tuned from a network pretrained on public data.

Every configuration trains the privacy-modes U-Net (GroupNorm; width and depth as given) on the prepared
private data at one noise level. Per start (scratch / public) and epsilon, the configuration with the best
validation PSNR is selected; its test PSNR is reported beside the non-private reference's (the best
validation configuration of the same start without DP). Test patients never enter a selection. The DP unit
is the patient; `--batch-sizes` are expected images per step (the sample rate is batch / train images).

    python benchmarks/dp_sweep.py --data RUN/data --public-data RUN/privacy_modes/public_data \
        --work /tmp/dp_sweep --device cuda

Writes `dp_sweep_<device>.json` and a table on stdout. Resumable: finished runs under --work are kept.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import time
from pathlib import Path
from typing import Any

import bench_common as common


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help="prepared private data with patient ids")
    parser.add_argument("--public-data", help="prepared public data (the rendered default)")
    parser.add_argument("--work", help="folder for the runs (reused when present)")
    parser.add_argument(
        "--merge", nargs="+", metavar="JSON", help="combine the runs of these result files (parallel slices)"
    )
    parser.add_argument("--noise-std", type=float, default=0.2)
    parser.add_argument("--noise-mean", type=float, default=0.1)
    parser.add_argument(
        "--epsilons", type=float, nargs="+", default=[0.0, 1.0, 8.0], help="0: the non-private reference"
    )
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--starts", nargs="+", default=["scratch", "public"], choices=["scratch", "public"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 96])
    parser.add_argument("--lrs", type=float, nargs="+", default=[5e-4, 2e-3, 5e-3])
    parser.add_argument("--clips", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[4, 16])
    parser.add_argument(
        "--ema-decays", type=float, nargs="+", default=[0.0], help="weight averages to try (0: none)"
    )
    parser.add_argument(
        "--views", type=int, nargs="+", default=[1], help="DP-SGD augmentation multiplicities (dp_views)"
    )
    parser.add_argument("--name", default="dp_sweep", help="result file name (before _<device>.json)")
    parser.add_argument("--schedule", default="onecycle", choices=["none", "cosine", "onecycle"])
    parser.add_argument("--public-epochs", type=int, default=8)
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--time-budget", type=float, default=0.0, help="stop starting runs after this (s)")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    return parser.parse_args(argv)


def base_values(args: argparse.Namespace) -> dict[str, Any]:
    from meddenoise.noise.spec import NoiseSpec

    return {
        "model": "unet",
        "base_channels": args.base_channels,
        "depth": args.depth,
        "norm": "group",
        "amp": "off",
        "strategy": "single",
        "val_batch_size": 64,
        "patience": 0,
        "lr_schedule": args.schedule,
        "seed": 0,
        "device": args.device,
        "quiet": True,
        "noise": NoiseSpec(mean=args.noise_mean, std=args.noise_std).to_dict(),
    }


def train(values: dict[str, Any], out: Path) -> dict[str, Any]:
    """Train once (kept when finished) and return the summary row plus the test PSNR."""
    from meddenoise.config import config_from_mapping
    from meddenoise.engine.config import TrainConfig
    from meddenoise.engine.train import fit

    done = out / "summary.csv"
    if not done.is_file():
        if out.exists():
            import shutil

            shutil.rmtree(out)
        fit(config_from_mapping(TrainConfig, {**values, "out": str(out)}, source=f"sweep run {out.name}"))
    with done.open() as handle:
        row = next(csv.DictReader(handle))
    with (out / "test_metrics.csv").open() as handle:
        psnrs = [float(r["psnr"]) for r in csv.DictReader(handle)]
    return {
        "best_val_psnr": float(row["best_val_psnr"]),
        "noisy_val_psnr": float(row["noisy_val_psnr"]),
        "best_epoch": int(row["best_epoch"]),
        "test_psnr": sum(psnrs) / len(psnrs),
        "test_images": len(psnrs),
        "dp_epsilon": float(row["dp_epsilon"]) if row.get("dp_epsilon") else None,
        "dp_noise_multiplier": float(row["dp_noise_multiplier"]) if row.get("dp_noise_multiplier") else None,
        "dp_sample_rate": float(row["dp_sample_rate"]) if row.get("dp_sample_rate") else None,
        "train_seconds": float(row["train_seconds"]),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        return merge(args)
    if not (args.data and args.public_data and args.work):
        raise SystemExit("dp_sweep.py: --data, --public-data and --work are needed (or --merge)")
    device = common.resolve_device(args.device)
    env = common.environment(device)
    work = Path(args.work)
    base = base_values(args)
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []

    starts: dict[str, str] = {"scratch": ""}
    if "public" in args.starts:
        public = work / "public_pretrained"
        common.print_flush(f"public pretraining ({args.public_epochs} epochs) -> {public}")
        values = {**base, "data": args.public_data, "epochs": args.public_epochs, "batch_size": 8, "lr": 5e-3}
        runs.append({"start": "public-pretraining", "dp": False, **train(values, public)})
        starts["public"] = str(public)
    grid = [
        (start, epsilon, batch, lr, epochs, clip, ema, views)
        for start in args.starts
        for epsilon in args.epsilons
        for batch, lr, epochs, ema in itertools.product(
            args.batch_sizes, args.lrs, args.epochs, args.ema_decays
        )
        for clip in (args.clips if epsilon else [0.0])
        for views in (args.views if epsilon else [1])
    ]
    for start, epsilon, batch, lr, epochs, clip, ema, views in grid:
        if args.time_budget and time.perf_counter() - started > args.time_budget:
            common.print_flush(f"time budget spent: {len(runs)} of {len(grid)} runs started")
            break
        name = f"{start}_eps{epsilon:g}_b{batch}_lr{lr:g}_e{epochs}" + (f"_c{clip:g}" if clip else "")
        name += f"_ema{ema:g}" if ema else ""
        name += f"_k{views}" if views > 1 else ""
        values = {
            **base,
            "data": args.data,
            "batch_size": batch,
            "lr": lr,
            "epochs": epochs,
            "init_from": starts[start],
            "ema_decay": ema,
        }
        if epsilon:
            values.update(dp_epsilon=epsilon, dp_delta=args.delta, dp_unit="patient")
            values.update(dp_max_grad_norm=clip, dp_views=views)
        t0 = time.perf_counter()
        try:
            result = train(values, work / name)
        except Exception as exc:  # a setting the accountant refuses is a result too
            result = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        run = {
            "start": start,
            "target_epsilon": epsilon,
            "batch_size": batch,
            "lr": lr,
            "epochs": epochs,
            "clip": clip or None,
            "ema_decay": ema,
            "views": views,
            **result,
        }
        runs.append(run)
        common.print_flush(
            f"{name}: val {run.get('best_val_psnr', float('nan')):.2f} dB "
            f"(test {run.get('test_psnr', float('nan')):.2f}), {time.perf_counter() - t0:.1f} s"
            + (f" ERROR {run['error']}" if "error" in run else "")
        )

    settings = {k: v for k, v in vars(args).items() if k not in ("out", "merge", "name")}
    result = report(runs, settings, time.perf_counter() - started, env)
    common.finish(args.name, result, device, Path(args.out) if args.out else None)
    return 0


def select(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per start, epsilon and augmentation multiplicity the best configuration by validation PSNR, with its
    test gap to non-private."""
    selected = []
    keys = sorted(
        {
            (r["start"], r["target_epsilon"], r.get("views", 1))
            for r in runs
            if r.get("start") in ("scratch", "public")
        }
    )
    for start, epsilon, views in keys:
        candidates = [
            r
            for r in runs
            if r.get("start") == start
            and r.get("target_epsilon") == epsilon
            and r.get("views", 1) == views
            and "error" not in r
        ]
        if candidates:
            best = max(candidates, key=lambda r: r["best_val_psnr"])
            selected.append({**best, "candidates": len(candidates)})
    for row in selected:
        reference = next(
            (s for s in selected if s["start"] == row["start"] and s["target_epsilon"] == 0.0), None
        )
        if reference and row["target_epsilon"]:
            row["test_gap_db"] = row["test_psnr"] - reference["test_psnr"]
    return selected


def report(runs: list[dict[str, Any]], settings: dict[str, Any], wall: float, env: Any) -> dict[str, Any]:
    """Print the selected configurations; the result file's content."""
    selected = select(runs)
    columns = [
        ("start", "start"),
        ("target_epsilon", "epsilon"),
        ("batch_size", "batch"),
        ("lr", "lr"),
        ("epochs", "epochs"),
        ("clip", "clip"),
        ("ema_decay", "EMA"),
        ("views", "views"),
        ("best_val_psnr", "val PSNR"),
        ("test_psnr", "test PSNR"),
        ("test_gap_db", "gap to non-private"),
        ("candidates", "configs"),
    ]
    print(common.format_table(selected, columns))
    return {
        "what": "DP-SGD settings sweep: selected by validation PSNR; the test PSNR of the selected compared",
        "environment": env,
        "settings": settings,
        "selected": selected,
        "runs": runs,
        "wall_seconds": wall,
    }


def merge(args: argparse.Namespace) -> int:
    """One result from the slices a parallel sweep wrote (each process one start and epsilon)."""
    parts = [json.loads(Path(p).read_text()) for p in args.merge]
    runs = [run for part in parts for run in part["runs"]]
    settings = {"slices": [part["settings"] for part in parts]}
    wall = max(part["wall_seconds"] for part in parts)
    result = report(runs, settings, wall, parts[0]["environment"])
    result["merged_from"] = len(parts)
    out = Path(args.out or common.RESULTS) / f"{args.name}_{args.device}.json"
    from meddenoise.fileio import atomic_write_json

    atomic_write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
