"""The on-disk format of one evaluation, its writer and its reader.

An evaluation folder (`RUN/evaluation/<split>/` for a trained run, `OUT/baselines/<method>_std<level>/` for a
classical baseline) holds:

    per_image.csv      one row per test image (PER_IMAGE_COLUMNS); lpips empty when not computable
    per_head.csv       U-Net++ only: the same rows for each intermediate head (the pruned networks)
    summary.csv        one row per metric: mean, its 95% interval (ci_low/ci_high; ci_method "t" when every
                       group (patient) has one image, "group-bootstrap" when one has several, "none" with the
                       reason in ci_note below 2 groups), the plain t-interval over images for reference, n
    evaluation.json    what was evaluated (method, model, strategy, seed, noise, data, split), LPIPS status
                       and reason, timing, tuned baseline parameters, the head table; written last
    samples.npz        a few images for the report's figures: clean, noisy, denoised, float16 (k, H, W)

The report reads these files only; it never re-runs a model.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meddenoise import rundir
from meddenoise.errors import MeddenoiseError
from meddenoise.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from meddenoise.rundir import METRICS, PER_IMAGE_COLUMNS, format_value, write_rows

FORMAT_VERSION = 1
PER_IMAGE_FILE = "per_image.csv"
PER_HEAD_FILE = "per_head.csv"
SUMMARY_FILE = "summary.csv"
INFO_FILE = "evaluation.json"
SAMPLES_FILE = "samples.npz"
DONE_FILE = "DONE"

SUMMARY_COLUMNS = (
    "metric",
    "n",
    "mean",
    "ci_low",
    "ci_high",
    "ci_method",
    "ci_note",
    "t_low",
    "t_high",
    "groups",
    "patients",
)


__all__ = ["METRICS", "PER_IMAGE_COLUMNS", "format_value", "write_rows"]  # the per-image schema: rundir


def read_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    if not Path(path).is_file():
        raise MeddenoiseError(f"{path} not found; run `meddenoise evaluate` on that run first")
    return rundir.read_rows(path)


def metric_values(rows: Sequence[dict[str, str]], metric: str) -> np.ndarray:
    """Float64 values of one metric column; empty cells become NaN."""
    return np.array([float(row[metric]) if row.get(metric, "") != "" else math.nan for row in rows])


def write_samples(
    path: str | os.PathLike,
    image_ids: Sequence[str],
    clean: np.ndarray,
    noisy: np.ndarray,
    denoised: np.ndarray,
) -> None:
    """Store (k, H, W) float images in [0, 1] as float16 (plenty for figures, small on disk)."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        image_ids=np.array(list(image_ids), dtype=str),
        clean=np.asarray(clean, dtype=np.float16),
        noisy=np.asarray(noisy, dtype=np.float16),
        denoised=np.asarray(denoised, dtype=np.float16),
    )
    atomic_write_bytes(path, buffer.getvalue())


def read_samples(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """The stored sample images (float32), or None when the evaluation kept none."""
    if not Path(path).is_file():
        return None
    with np.load(path, allow_pickle=False) as archive:
        return {
            "image_ids": archive["image_ids"].astype(str),
            **{name: archive[name].astype(np.float32) for name in ("clean", "noisy", "denoised")},
        }


def write_info(folder: str | os.PathLike, info: dict[str, Any]) -> None:
    atomic_write_json(Path(folder) / INFO_FILE, {"format_version": FORMAT_VERSION, **info})


def read_info(folder: str | os.PathLike) -> dict[str, Any]:
    info = read_json(Path(folder) / INFO_FILE, what="evaluation record")
    if not isinstance(info, dict) or info.get("format_version") != FORMAT_VERSION:
        raise MeddenoiseError(f"{Path(folder) / INFO_FILE} has an unknown format; evaluate the run again")
    return info


def find_evaluations(root: str | os.PathLike) -> list[Path]:
    """Every evaluation folder below `root` (those with an evaluation.json), sorted for stable output."""
    root = Path(root)
    found = [
        path.parent
        for path in root.rglob(INFO_FILE)
        if not any(part.startswith(".") for part in path.relative_to(root).parts)
    ]
    return sorted(found)


def mark_done(folder: str | os.PathLike, note: str = "") -> None:
    atomic_write_text(Path(folder) / DONE_FILE, note + "\n")


def is_done(folder: str | os.PathLike) -> bool:
    return (Path(folder) / DONE_FILE).is_file()
