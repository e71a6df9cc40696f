"""Offline LiRA beside the loss-threshold attack on the embedded NIH sample (issue 19, item 3).

Two target U-Nets at noise std 0.2 on `meddenoise prepare --source nih-sample --size 64` (train 361 images
of 138 patients, val 243 / 78, test 121 / 48; split by patient):
- non-private, quick-sized: base width 8, depth 3, GroupNorm, batch 8, Adam lr 5e-3 one-cycle, 12 epochs;
- deliberately overfit: the same network on the first 24 training images for 150 epochs (lr 3e-3).
Both are audited (best and last checkpoints) with one shared set of `--reference-models` reference models of
`--reference-epochs` epochs trained like the non-private U-Net on the val patients (disjoint from members
and non-members), exactly as the quick preset's privacy-modes table does. Finished runs are kept.
Writes benchmarks/results/membership_lira.json.

    python benchmarks/membership_lira.py --work /tmp/mia_runs
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import bench_common as common

COMMON = ["--model", "unet", "--base-channels", "8", "--depth", "3", "--norm", "group", "--batch-size", "8"]
COMMON += ["--val-batch-size", "64", "--patience", "0", "--noise-std", "0.2", "--device", "cpu", "--quiet"]
TARGETS = {
    "nonprivate_quick": ["--epochs", "12", "--lr", "5e-3", "--lr-schedule", "onecycle"],
    "overfit_24_images": ["--epochs", "150", "--lr", "3e-3", "--limit-train", "24", "--limit-val", "32"],
}


def meddenoise(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "meddenoise", *args], check=True)
    return time.perf_counter() - start


def brief(entry: dict[str, Any]) -> dict[str, Any]:
    keys = ("auc", "auc_ci", "auc_upper_95", "tpr_at_lowest_fpr", "lowest_fpr", "lowest_fpr_unit")
    return {k: entry[k] for k in keys if k in entry}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--reference-models", type=int, default=2)
    parser.add_argument("--reference-epochs", type=int, default=3)
    args = parser.parse_args()
    from meddenoise.fileio import atomic_write_json
    from meddenoise.privacy.membership import run_membership_audit

    device = torch.device("cpu")
    environment = common.environment(device)
    work = Path(args.work)
    data = work / "data"
    if not (data / "manifest.csv").is_file():
        meddenoise("prepare", "--source", "nih-sample", "--size", "64", "--out", str(data))
    timings: dict[str, float] = {}
    for name, options in TARGETS.items():
        run = work / name
        if not (run / "summary.csv").is_file():
            timings[f"train_{name}_s"] = meddenoise(
                "train", "--data", str(data), "--out", str(run), *COMMON, *options
            )
    references = work / f"references_{args.reference_models}x{args.reference_epochs}"
    results = {}
    for name in TARGETS:
        start = time.perf_counter()
        audit = run_membership_audit(
            work / name,
            data_dir=str(data),
            out=work / f"audit_{name}",
            reference_models=args.reference_models,
            reference_epochs=args.reference_epochs,
            reference_dir=references,
            reference_recipe=work / "nonprivate_quick",
            device="cpu",
        )
        timings[f"audit_{name}_s"] = time.perf_counter() - start  # the first one trains the references
        results[name] = {
            "members": audit["members"],
            "nonmembers": audit["nonmembers"],
            "checkpoints": {
                checkpoint: {
                    "epoch": entry["epoch"],
                    "lira": brief(entry["lira"]),
                    "loss_threshold": brief(entry["loss_threshold"]),
                }
                for checkpoint, entry in audit["checkpoints"].items()
            },
            "lira_setup": {
                k: v for k, v in audit["lira"].items() if k.startswith("reference") or k == "method"
            },
        }
        for checkpoint, entry in results[name]["checkpoints"].items():
            print(
                f"{name} {checkpoint}: LiRA AUC {entry['lira']['auc']:.3f} {entry['lira']['auc_ci']}, "
                f"loss AUC {entry['loss_threshold']['auc']:.3f} {entry['loss_threshold']['auc_ci']}"
            )
    environment["load_average_end"] = [round(v, 2) for v in __import__("os").getloadavg()]
    payload = {
        "what": __doc__.split("\n\n")[0],
        "data": "embedded NIH ChestX-ray14 sample, 64x64, split by patient (seed 0)",
        "targets": {name: " ".join(COMMON + options) for name, options in TARGETS.items()},
        "reference_models": args.reference_models,
        "reference_epochs": args.reference_epochs,
        "results": results,
        "timings_s": timings,
        "environment": environment,
        "load_note": common.load_warning(environment),
    }
    path = common.RESULTS / "membership_lira.json"
    atomic_write_json(path, payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
