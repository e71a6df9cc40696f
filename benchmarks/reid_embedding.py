"""The learned patient matcher on the embedded NIH sample: fit the shipped weights, and measure them blind.

    python benchmarks/reid_embedding.py fit --out src/meddenoise/privacy/weights/reid_nih64.safetensors
    python benchmarks/reid_embedding.py measure   # -> benchmarks/results/reid_embedding.json

Fitting uses the patients whose NIH id is EVEN only (the rule and the ids are stored in the weights).
Measuring uses the ODD patients only: id % 4 == 1 calibrates thresholds, id % 4 == 3 is scored blind
(its ids hidden, split by image like a folder without ids), and the two roles are then swapped.
"""

from __future__ import annotations

import argparse
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


def measure(args: argparse.Namespace) -> None:
    raise NotImplementedError


if __name__ == "__main__":
    raise SystemExit(main())
