"""The learned patient matcher on the embedded NIH sample: fit the shipped weights, and measure them blind.

    python benchmarks/reid_embedding.py fit --out src/meddenoise/privacy/weights/reid_nih64.safetensors
    python benchmarks/reid_embedding.py measure   # -> benchmarks/results/reid_embedding.json

Fitting uses the patients whose NIH id is EVEN only (the rule and the ids are stored in the weights).
Measuring uses the ODD patients only: id % 4 == 1 calibrates thresholds, id % 4 == 3 is scored blind
(its ids hidden, split by image like a folder without ids), and the two roles are then swapped.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
FIT_RULE = "NIH patient id even (int(patient_id) % 2 == 0)"


def prepared_sample(folder: Path) -> Path:
    from meddenoise.cli import main

    if not (folder / "manifest.csv").is_file():
        main(["prepare", "--source", "nih-sample", "--size", "64", "--out", str(folder), "--quiet"])
    return folder


def fit(args: argparse.Namespace) -> None:
    from meddenoise.data.cache import load_prepared
    from meddenoise.privacy.reid_embedding import FitSettings, fit_matcher, save_matcher

    folder = prepared_sample(Path(args.data or tempfile.mkdtemp()) / "nih64")
    data = load_prepared(folder)
    patients = [row["patient_id"] for row in data.records]
    rows = np.array([i for i, p in enumerate(patients) if int(p) % 2 == 0])
    images = np.asarray(data.images[rows], dtype=np.float32) / data.max_value
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    matcher = fit_matcher(
        images,
        [patients[i] for i in rows],
        settings=FitSettings(steps=args.steps, seed=args.seed),
        fitting={"source": "nih-sample", "rule": FIT_RULE, "prepared": "--source nih-sample --size 64"},
        log=print,
        device=device,
    )
    save_matcher(matcher, args.out)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="stage", required=True)
    f = sub.add_parser("fit")
    f.add_argument("--out", required=True)
    f.add_argument("--steps", type=int, default=3000)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--device", default="auto")
    f.add_argument("--data", default="")
    f.set_defaults(func=fit)
    m = sub.add_parser("measure")
    m.add_argument("--weights", default="")
    m.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "reid_embedding.json"))
    m.add_argument("--data", default="")
    m.set_defaults(func=lambda a: measure(a))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    args.func(args)
    print(f"{args.stage}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


def _subset(data, rows, folder: Path, hide_ids: bool):
    """A prepared folder of `rows`; hidden ids: each image its own patient, split by image (seed 0)."""
    from meddenoise.data.cache import load_prepared, write_prepared
    from meddenoise.data.records import ImageRecord
    from meddenoise.data.splits import assign_splits

    records = []
    for r in rows:
        row = data.records[int(r)]
        patient = row["image_id"] if hide_ids else row["patient_id"]
        records.append(ImageRecord(row["image_id"], patient, "folder", row["source_path"], patient))
    splits = assign_splits(records, seed=0, split_by="patient")
    write_prepared(folder, np.asarray(data.images[rows]), records, splits, {"source": "folder"})
    return load_prepared(folder)


def _truth(patients, splits):
    pairs = {(i, j) for i in range(len(patients)) for j in range(i + 1, len(patients))
             if patients[i] == patients[j] and splits[i] != splits[j]}  # fmt: skip
    tests = {i for i, j in pairs if splits[i] == "test"} | {j for i, j in pairs if splits[j] == "test"}
    return pairs, tests


def _blind_leaks(data, matcher, calibrate_rows, score_rows, work: Path) -> dict:
    from meddenoise.privacy.leaks import find_leaks

    calibration = _subset(data, calibrate_rows, work / "calibration", hide_ids=False)
    blind = _subset(data, score_rows, work / "blind", hide_ids=True)
    patients = [data.records[int(r)]["patient_id"] for r in score_rows]
    pairs, tests = _truth(patients, np.asarray(blind.splits))
    result = find_leaks(blind, calibration_data=calibration, precision=0.9, matcher=matcher)
    found = {(p["row_a"], p["row_b"]) for p in result["pairs"]}
    true_found = found & pairs
    test_found = {i for i, j in true_found if blind.splits[i] == "test"} | {
        j for i, j in true_found if blind.splits[j] == "test"
    }
    before = _patients_in_two_splits(patients, np.asarray(blind.splits))
    return {
        "images": len(score_rows),
        "threshold": result["threshold"],
        "calibration": result["calibration"],
        "suspect_pairs": result["suspects"],
        "pair_precision": len(true_found) / max(1, len(found)),
        "cross_split_same_patient_pairs": len(pairs),
        "pair_recall": len(true_found) / max(1, len(pairs)),
        "test_images_with_same_patient_in_train_or_val": len(tests),
        "test_images_found": len(test_found),
        "test_image_recall": len(test_found) / max(1, len(tests)),
        "printed_suspect_test_images": result["suspect_images_in_test"],
        "estimated_pairs": result["estimated_pairs"],
        "estimated_test_images": result["estimated_test_images"],
        "patients_in_two_splits_before": before,
        "group_similar": _group_similar(blind, matcher, result["threshold"], patients, work),
    }


def _patients_in_two_splits(patients, splits) -> int:
    seen: dict[str, set] = {}
    for p, s in zip(patients, splits):
        seen.setdefault(p, set()).add(s)
    return sum(1 for v in seen.values() if len(v) > 1)


def _group_similar(blind, matcher, threshold, patients, work: Path) -> dict:
    import shutil

    from meddenoise.data.cache import load_prepared
    from meddenoise.errors import DataError
    from meddenoise.privacy.leaks import regroup_prepared

    out = {}
    for name, value in (("calibrated", threshold), ("low_0.5", 0.5)):
        folder = work / f"grouped_{name}"
        shutil.copytree(blind.folder, folder)
        try:
            summary = regroup_prepared(folder, value, fractions=(0.5, 0.33, 0.17), seed=0, matcher=matcher)
        except DataError as error:
            out[name] = {"threshold": value, "refused": str(error)}
            continue
        after = load_prepared(folder)
        out[name] = {
            "threshold": value,
            "patients_in_two_splits_after": _patients_in_two_splits(patients, np.asarray(after.splits)),
            **{
                k: summary[k]
                for k in ("joined_components", "images_moved_to_another_split", "fractions_after")
            },
        }
    return out


def _reid_under_noise(data, matcher, rows) -> dict:
    from meddenoise.privacy.matcher import top_matches

    patients = [data.records[int(r)]["patient_id"] for r in rows]
    clean = torch.from_numpy(np.asarray(data.images[rows], dtype=np.float32) / data.max_value).unsqueeze(1)
    counts: dict[str, int] = {}
    for p in patients:
        counts[p] = counts.get(p, 0) + 1
    eligible = [i for i, p in enumerate(patients) if counts[p] > 1]
    gallery = matcher.features(clean)
    out = {"queries": len(eligible), "patients": len({patients[i] for i in eligible})}
    generator = torch.Generator().manual_seed(1)
    for std in (0.0, 0.1, 0.2, 0.3):
        noisy = clean if std == 0 else (clean + 0.1 + std * torch.randn(clean.shape, generator=generator))
        nearest = top_matches(
            matcher.features(noisy.clamp(0, 1)), gallery, 1, exclude=torch.arange(len(rows))
        )
        hits = [patients[int(nearest[i, 0])] == patients[i] for i in eligible]
        out[f"std_{std:g}"] = float(np.mean(hits))
    return out


def measure(args: argparse.Namespace) -> None:
    import platform

    from meddenoise.data.cache import load_prepared
    from meddenoise.privacy.matcher import Matcher
    from meddenoise.privacy.reid_embedding import SHIPPED_WEIGHTS, load_matcher

    torch.manual_seed(0)
    work = Path(args.data or tempfile.mkdtemp())
    data = load_prepared(prepared_sample(work / "nih64"))
    ids = np.array([int(row["patient_id"]) for row in data.records])
    learned = load_matcher(args.weights or SHIPPED_WEIGHTS)
    held_out = np.flatnonzero(ids % 2 == 1)
    results = {
        "data": "embedded NIH ChestX-ray14 sample, 64 x 64 (prepare --source nih-sample --size 64)",
        "weights": str(Path(args.weights or SHIPPED_WEIGHTS).name),
        "fitting_rule": learned.metadata["fitting"]["rule"],
        "scored_on": "patients with an ODD id only (never seen in fitting)",
        "machine": platform.processor() or platform.machine(),
        "reid_at_1_noisy_query_vs_clean_gallery": {
            name: _reid_under_noise(data, m, held_out)
            for name, m in (("pixel", Matcher()), ("learned", learned))
        },
        "blind_leaks": {},
    }
    for name, m in (("pixel", Matcher()), ("learned", learned)):
        for label, cal, score in (("cal_id%4==1_score_id%4==3", 1, 3), ("cal_id%4==3_score_id%4==1", 3, 1)):
            folder = work / f"{name}_{cal}"
            folder.mkdir(parents=True, exist_ok=True)
            results["blind_leaks"][f"{name}:{label}"] = _blind_leaks(
                data, m, np.flatnonzero(ids % 4 == cal), np.flatnonzero(ids % 4 == score), folder
            )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["reid_at_1_noisy_query_vs_clean_gallery"], indent=1))
    for key, value in results["blind_leaks"].items():
        print(key, {k: value[k] for k in ("pair_precision", "pair_recall", "test_image_recall")},
              value["group_similar"])  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
