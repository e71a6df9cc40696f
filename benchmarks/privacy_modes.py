"""The privacy-modes table on the quick data, and the measurements behind issue 14's targets.

Trains (resumable: finished runs are kept) with the quick preset's U-Net settings (base width 8, depth 3,
batch 8, Adam lr 5e-3 one-cycle, 12 epochs, L1, noise mean 0.1):
- supervised (the paper's mode) and noise2noise / neighbor2neighbor / r2r at every `--levels` std, the
  clean-free ones selecting their checkpoint on released data only (the default rule);
- at `--dp-level`: the same U-Net with GroupNorm, non-private and DP-SGD at each `--epsilons` (equal epochs;
  the privacy unit is the image, because the rendered default holds one patient: see docs/privacy.md).
Then: the obfuscation audit (linkage / re-identification of released images) at every level, membership
audits (loss threshold + `--reference-models` reference models) of every run at `--dp-level`, R2R test PSNR
for several re-corruption counts, and how often the released-data rule picks the clean oracle's epoch.
Writes `privacy_modes_<device>.json` and `privacy_modes.md` under benchmarks/results/.

    python benchmarks/privacy_modes.py --data /tmp/quick/data --work /tmp/privacy_modes
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import bench_common as common

QUICK = {
    "model": "unet",
    "base_channels": 8,
    "depth": 3,
    "lr": 5e-3,
    "lr_schedule": "onecycle",
    "epochs": 12,
    "batch_size": 8,
    "val_batch_size": 64,
    "patience": 0,
    "device": "cpu",
    "quiet": True,
}
CLEAN_FREE = ("noise2noise", "neighbor2neighbor", "r2r")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", required=True, help="prepared quick data (prepare --source default --count 480 --size 64)"
    )
    parser.add_argument("--work", required=True, help="folder for the runs and audits (reused when present)")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--dp-level", type=float, default=0.2)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    parser.add_argument("--dp-delta", type=float, default=1e-5)
    parser.add_argument("--reference-models", type=int, default=2)
    parser.add_argument("--r2r-samples", type=int, nargs="+", default=[0, 1, 4, 8, 16])
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    return parser.parse_args(argv)


def train(data: str, out: Path, **overrides: Any) -> tuple[Path, float]:
    """Train unless finished; returns the folder and the process CPU seconds it took (0 when reused)."""
    from meddenoise.config import config_from_mapping
    from meddenoise.engine.config import TrainConfig
    from meddenoise.engine.train import fit

    if (out / "test_metrics.csv").is_file():
        return out, 0.0
    if out.exists():
        import shutil

        shutil.rmtree(out)
    values = {**QUICK, "data": data, "out": str(out), **overrides}
    started = time.process_time()
    fit(config_from_mapping(TrainConfig, values, source=str(out)))
    return out, time.process_time() - started


def selection_record(run: Path) -> dict[str, Any]:
    """Selected epoch (released-data rule) vs the clean oracle's (highest clean validation PSNR)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    selected = min(records, key=lambda r: r["val_selection_loss"])
    oracle = max(records, key=lambda r: r["val_psnr"])
    return {
        "rule": selected.get("selection"),
        "selected_epoch": selected["epoch"] + 1,
        "oracle_epoch": oracle["epoch"] + 1,
        "picks_oracle": selected["epoch"] == oracle["epoch"],
        "val_psnr_cost_db": oracle["val_psnr"] - selected["val_psnr"],
    }


def r2r_gain(run: Path, data: Any, samples: list[int]) -> dict[str, float]:
    """Test PSNR of an r2r run's best checkpoint for each re-corruption count (0: the model on y)."""
    from meddenoise.engine.checkpoint import load_trained_model
    from meddenoise.engine.runtime import Runtime
    from meddenoise.engine.targets import build_target
    from meddenoise.engine.validation import evaluate_split

    model, metadata = load_trained_model(run, inference=False)
    noise = metadata.noise
    noise_op = noise.build()
    runtime = Runtime(torch.device("cpu"))
    result = {}
    for count in samples:
        wrapped = build_target("r2r", noise_op, seed=0, samples=count).inference_model(model)
        scores = evaluate_split(
            wrapped, data, "test", noise_op, runtime, noise_seed=noise.seed, batch_size=64
        )
        result[str(count)] = float(np.mean(scores["psnr"]))
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from meddenoise.data.cache import load_prepared
    from meddenoise.noise.spec import NoiseSpec
    from meddenoise.privacy import modes
    from meddenoise.privacy.audit import run_audit
    from meddenoise.privacy.membership import run_membership_audit

    work = Path(args.work)
    data = load_prepared(args.data)
    groups = {r["image_id"]: r.get("group") or r["patient_id"] for r in data.records}
    cpu: dict[str, float] = {}

    def run(name: str, **overrides: Any) -> Path:
        folder, seconds = train(args.data, work / "runs" / name, **overrides)
        if seconds:
            cpu[name] = seconds
        print(f"{name}: done", flush=True)
        return folder

    runs: dict[str, dict[str, Path]] = {}
    for std in args.levels:
        noise = {"noise": {"std": std}}
        level = runs.setdefault(f"{std:g}", {})
        level["supervised"] = run(f"clean_std{std:g}", **noise)
        for target in CLEAN_FREE:
            level[target] = run(f"{target}_std{std:g}", target=target, **noise)
    dp_noise = {"noise": {"std": args.dp_level}, "norm": "group"}
    dp_runs = {"non-private": run(f"clean_group_std{args.dp_level:g}", **dp_noise)}
    for epsilon in args.epsilons:
        dp_runs[f"{epsilon:g}"] = run(
            f"dp_eps{epsilon:g}_std{args.dp_level:g}",
            dp_epsilon=epsilon,
            dp_delta=args.dp_delta,
            dp_unit="image",
            **dp_noise,
        )

    audit_started = time.process_time()
    audit = run_audit(
        args.data, noise=NoiseSpec(), levels=list(args.levels), split="test", max_queries=0, device="cpu"
    )
    audit_levels = {f"{level['noise_std']:g}": level for level in audit["levels"]}
    cpu["obfuscation_audit"] = time.process_time() - audit_started

    def membership(name: str, folder: Path) -> dict[str, Any]:
        started = time.process_time()
        result = run_membership_audit(
            folder,
            data_dir=args.data,
            out=work / "membership" / name,
            reference_models=args.reference_models,
            max_images=0,
            device="cpu",
        )
        cpu[f"membership_{name}"] = time.process_time() - started
        print(f"membership {name}: loss AUC {result['loss_threshold']['auc']:.3f}", flush=True)
        return result

    dp_key = f"{args.dp_level:g}"
    rows = []
    for std, level in runs.items():
        for mode, folder in level.items():
            label = "paper mode (released pairs, clean targets)" if mode == "supervised" else mode
            member = membership(folder.name, folder) if std == dp_key else None
            rows.append(
                modes.mode_row(
                    label,
                    "clean" if mode == "supervised" else mode,
                    folder,
                    supervised=level["supervised"],
                    groups=groups,
                    audit_level=audit_levels.get(std),
                    membership=member,
                )
            )
    reference = dp_runs["non-private"]
    for name, folder in dp_runs.items():
        label = "non-private (GroupNorm, DP reference)" if name == "non-private" else f"DP-SGD eps {name}"
        row = modes.mode_row(
            label,
            "dp-sgd" if name != "non-private" else "clean",
            folder,
            supervised=reference,
            groups=groups,
            audit_level=audit_levels.get(dp_key),
            membership=membership(folder.name, folder),
        )
        if name != "non-private":
            row["gap_reference"] = "non-private GroupNorm U-Net, equal epochs"
        rows.append(row)

    selection = {
        f"{target}_std{std}": selection_record(level[target])
        for std, level in runs.items()
        for target in CLEAN_FREE
    }
    r2r = {std: r2r_gain(level["r2r"], data, args.r2r_samples) for std, level in runs.items()}
    payload = {
        "benchmark": "privacy_modes",
        "settings": {
            **QUICK,
            "levels": args.levels,
            "dp_level": args.dp_level,
            "epsilons": args.epsilons,
            "dp_delta": args.dp_delta,
            "reference_models": args.reference_models,
            "data": str(args.data),
            "train_images": int(len(data.indices("train"))),
        },
        "rows": rows,
        "verdict": modes.verdict(rows),
        "selection": selection,
        "r2r_test_psnr_by_samples": r2r,
        "process_cpu_seconds": cpu,
    }
    device = torch.device("cpu")
    path = common.write_result("privacy_modes", payload, device, Path(args.out) if args.out else None)
    text = ["# Privacy modes on the quick data", "", modes.markdown_table(rows), "", "## Verdict", ""]
    text += [f"- {sentence}" for sentence in payload["verdict"]]
    text += [
        "",
        "## Checkpoint selection on released data",
        "",
        "| run | selected epoch | clean oracle epoch | val PSNR cost (dB) |",
        "|---|---|---|---|",
    ]
    text += [
        f"| {k} | {v['selected_epoch']} | {v['oracle_epoch']} | {v['val_psnr_cost_db']:.2f} |"
        for k, v in selection.items()
    ]
    text += ["", "## R2R test PSNR by re-corruption count (0: model applied to y)", ""]
    text += [
        f"- std {std}: " + ", ".join(f"K={k}: {v:.2f} dB" for k, v in values.items())
        for std, values in r2r.items()
    ]
    (path.parent / "privacy_modes.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    print("\n".join(text))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
