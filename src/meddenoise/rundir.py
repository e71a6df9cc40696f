"""`RunDir`: the layout of a run folder and its readers, in one place (no torch import).

    RUN/config.json                  the effective TrainConfig (save_config format)
    RUN/split.csv                    the split the run trained on (SPLIT_COLUMNS)
    RUN/metrics.jsonl                one record per epoch; epochs numbered from 1, as in the console
    RUN/summary.csv                  one row: settings, stop reason, best epoch (from 1), speed
    RUN/train.log                    the console lines
    RUN/test_metrics.csv             the best checkpoint on the test split, per image (PER_IMAGE_COLUMNS)
    RUN/checkpoints/last.safetensors, last.state.pt, best.safetensors
    RUN/evaluation/<name>/           evaluation folders (`meddenoise.evaluation.files`)
    RUN/tensorboard/                 with `--log tensorboard`: the epoch records as TensorBoard scalars

The engine writes through it, and evaluate, the report, the privacy audit, reproduce and denoise read
through it. Per-image tables, of training's test pass and of `meddenoise evaluate`, share one schema.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from meddenoise.errors import MeddenoiseError
from meddenoise.fileio import atomic_write_text, read_json

SPLIT_COLUMNS = ("index", "image_id", "image_key", "patient_id", "group", "split", "content_hash")
METRICS = ("psnr", "ssim", "ssim_win3", "lpips")
# One row per image and method; a metric left empty was not computed (LPIPS without weights, or the
# training run's quick test pass, which computes PSNR and SSIM of the output and of the noisy input).
PER_IMAGE_COLUMNS = (
    "image_id",
    "patient_id",
    "group",
    "split",
    "noise_kind",
    "noise_mean",
    "noise_std",
    "method",
    "model",
    "strategy",
    "seed",
    "head",
    *METRICS,
    "noisy_psnr",
    "noisy_ssim",
)


def format_value(value: Any) -> str:
    """CSV text of one cell: floats with full precision (repr), None/NaN as empty."""
    if value is None:
        return ""
    if isinstance(value, float) or type(value).__module__ == "numpy":
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, float):
            return "" if math.isnan(value) else repr(value)
    return str(value)


def write_rows(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_value(row.get(column)) for column in columns])
    atomic_write_text(path, buffer.getvalue())


def read_rows(path: str | os.PathLike, what: str = "table") -> list[dict[str, str]]:
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    except FileNotFoundError:
        raise MeddenoiseError(f"{what} {path} not found") from None


def write_per_image(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    write_rows(path, PER_IMAGE_COLUMNS, rows)


class RunDir:
    """A run folder written by `meddenoise train` (or being written)."""

    CONFIG = "config.json"
    SPLIT = "split.csv"
    METRICS = "metrics.jsonl"
    SUMMARY = "summary.csv"
    LOG = "train.log"
    TEST_TABLE = "test_metrics.csv"
    # The config a launcher hands its torchrun workers (they read it, then save config.json as any run does).
    LAUNCH_CONFIG = "launch_config.json"
    CHECKPOINTS = "checkpoints"
    EVALUATION = "evaluation"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- where things are ----------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def launch_config_file(self) -> Path:
        return self.path / self.LAUNCH_CONFIG

    @property
    def split_file(self) -> Path:
        return self.path / self.SPLIT

    @property
    def metrics_file(self) -> Path:
        return self.path / self.METRICS

    @property
    def summary_file(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def log_file(self) -> Path:
        return self.path / self.LOG

    @property
    def test_table_file(self) -> Path:
        return self.path / self.TEST_TABLE

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def last_weights(self) -> Path:
        return self.checkpoints / "last.safetensors"

    @property
    def last_state(self) -> Path:
        return self.checkpoints / "last.state.pt"

    @property
    def best_weights(self) -> Path:
        return self.checkpoints / "best.safetensors"

    def evaluation_dir(self, name: str) -> Path:
        return self.path / self.EVALUATION / name

    def has_training_state(self) -> bool:
        return self.last_state.is_file()

    def resume_or_start_clean(self) -> bool:
        """True when training can continue from the last checkpoint; otherwise the folder (a run killed
        before its first checkpoint, so nothing worth keeping) is removed so training starts clean, and
        False is returned. The one rule for every caller that reruns an unfinished run."""
        if self.has_training_state():
            return True
        if self.path.exists():
            shutil.rmtree(self.path)
        return False

    def weights_for_inference(self) -> Path:
        """The best checkpoint (the last one if no best was written yet)."""
        for candidate in (self.best_weights, self.last_weights):
            if candidate.is_file():
                return candidate
        raise MeddenoiseError(
            f"run folder {self.path} has no checkpoint ({self.CHECKPOINTS}/best.safetensors)"
        )

    # -- readers -------------------------------------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        """The saved training config as plain values ({} when the file is missing)."""
        if not self.config_file.is_file():
            return {}
        saved = read_json(self.config_file, what="run config")
        return dict(saved.get("config") or {}) if isinstance(saved, dict) else {}

    def read_metrics(self) -> list[dict[str, Any]]:
        """The epoch records, epochs numbered from 1 (older runs counted from 0 and are renumbered)."""
        if not self.metrics_file.is_file():
            return []
        text = self.metrics_file.read_text(encoding="utf-8")
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
        if any(record.get("epoch") == 0 for record in records):
            records = [{**r, "epoch": r["epoch"] + 1} if r.get("epoch") is not None else r for r in records]
        return records

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        atomic_write_text(self.metrics_file, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))

    def read_summary(self) -> dict[str, str]:
        """The one row of summary.csv ({} when missing)."""
        if not self.summary_file.is_file():
            return {}
        rows = read_rows(self.summary_file, "run summary")
        return rows[0] if rows else {}

    def read_split(self) -> list[dict[str, str]]:
        return read_rows(self.split_file, "run split")

    def train_split_name(self) -> str:
        return str(self.read_config().get("train_split", "train"))


def recorded_folder(recorded: str, run_dir: str | os.PathLike, recorded_out: str = "") -> Path:
    """A folder path that a run recorded (its prepared data), found from wherever the caller runs.

    Runs record absolute paths; older runs recorded the path as typed, relative to the directory `train` ran
    in. That directory is recovered from the run folder: when the run was trained with `--out runs/x` and
    now sits at /home/me/runs/x, a recorded `prepared/p` is /home/me/prepared/p. The path as recorded
    (relative to the current directory) is the fallback.
    """
    path = Path(recorded).expanduser()
    if path.is_absolute():
        return path
    run = Path(run_dir).resolve()
    if run.is_file():  # a checkpoint file: checkpoints/best.safetensors inside the run folder
        run = run.parent.parent
    out_parts = Path(recorded_out).parts if recorded_out and not Path(recorded_out).is_absolute() else ()
    if out_parts and run.parts[-len(out_parts) :] == out_parts:
        candidate = Path(*run.parts[: -len(out_parts)]) / path
        if candidate.exists():
            return candidate
    return path
