"""What goes into the run folder's small files (where they are: `meddenoise.rundir.RunDir`): the log,
the split table, the summary row, the per-image test rows, and the log line of an epoch.

Only rank 0 writes: the trainer calls these writers on rank 0 alone, and `RunLog` is silent on other ranks.
Tables are rewritten atomically as a whole, so a killed run never leaves a truncated metrics file; the log is
appended.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meddenoise.errors import DataError
from meddenoise.fileio import atomic_write_text
from meddenoise.rundir import SPLIT_COLUMNS

if TYPE_CHECKING:
    from meddenoise.engine.config import TrainConfig
    from meddenoise.engine.runtime import Runtime


class RunLog:
    """Messages to stdout (through tqdm when a bar is showing) and to train.log, on rank 0 only."""

    def __init__(self, path: Path | None, enabled: bool) -> None:
        self.path = path if enabled else None
        self.enabled = enabled

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(message + "\n")

    def warning(self, message: str) -> None:
        """On stderr (shown under --quiet too) and in train.log."""
        if not self.enabled:
            return
        print(message, file=sys.stderr, flush=True)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(message + "\n")


def csv_text(rows: list[dict[str, Any]], columns: list[str] | tuple[str, ...] | None = None) -> str:
    columns = list(columns or (rows[0].keys() if rows else []))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def split_table(records: list[dict[str, str]]) -> str:
    return csv_text([{c: r.get(c, "") for c in SPLIT_COLUMNS} for r in records], SPLIT_COLUMNS)


def write_or_check_split(path: Path, records: list[dict[str, str]], data_folder: str, resume: bool) -> None:
    """Save the split the run uses; on resume insist it is still the same one."""
    text = split_table(records)
    if resume and path.is_file():
        if path.read_text(encoding="utf-8") != text:
            raise DataError(
                f"the prepared folder {data_folder} no longer matches {path} (images or splits changed since "
                "the run started); resume with the original prepared folder or start a new run"
            )
        return
    atomic_write_text(path, text)


def epoch_line(epoch: int, epochs: int, record: dict[str, Any]) -> str:
    """The log line of one epoch (`epoch` counted from 1)."""
    partial = " (partial)" if record["partial_epoch"] else ""
    return (
        f"epoch {epoch}/{epochs}{partial}: train loss {record['train_loss']:.5f}, "
        f"val loss {record['val_loss']:.5f}, val PSNR {record['val_psnr']:.2f} dB "
        f"(noisy {record['noisy_val_psnr']:.2f}), SSIM {record['val_ssim']:.4f}, "
        f"{record['train_seconds']:.1f}+{record['val_seconds']:.1f} s, "
        f"{record['images_per_second']:.0f} img/s"
        + (f", DP epsilon {record['dp_epsilon']:.2f}" if "dp_epsilon" in record else "")
    )


def summary_row(
    config: TrainConfig,
    runtime: Runtime,
    history: list[dict[str, Any]],
    *,
    best_epoch: int,
    global_steps: int,
    stop_reason: str,
    noisy: dict[str, float],
) -> dict[str, Any]:
    """The one row of summary.csv: the run's settings, why it stopped, its best epoch and its speed."""
    best = next((r for r in history if r["epoch"] == best_epoch), {})
    train_seconds = sum(r["train_seconds"] for r in history)
    return {
        "model": config.model,
        "strategy": runtime.strategy,
        "world_size": runtime.world_size,
        "devices": runtime.data_parallel_width,
        "device": str(runtime.device),
        "amp": runtime.amp,
        "target": config.target,
        "noise_std": config.noise.std,
        "noise_mean": config.noise.mean,
        "epochs_run": len(history),
        "global_steps": global_steps,
        "stop_reason": stop_reason,
        "best_epoch": best_epoch,
        "best_val_loss": best.get("val_loss"),
        "best_val_psnr": best.get("val_psnr"),
        "best_val_ssim": best.get("val_ssim"),
        "noisy_val_psnr": noisy["psnr"],
        "noisy_val_ssim": noisy["ssim"],
        "train_seconds": train_seconds,
        "val_seconds": sum(r["val_seconds"] for r in history),
        "images_per_second": sum(r["train_images"] for r in history) / train_seconds
        if train_seconds
        else None,
        "peak_memory_mb": max((r["peak_memory_mb"] for r in history), default=None),
    }


def test_metric_rows(
    result: dict[str, Any], records: list[dict[str, str]], config: TrainConfig, strategy: str, split: str
) -> list[dict[str, Any]]:
    """Rows of test_metrics.csv (the per-image schema of `meddenoise.rundir`) from `evaluate_split`'s
    per-image arrays."""
    method = config.model if config.target == "clean" else f"{config.model}+{config.target}"
    rows = []
    for i, row_index in enumerate(result["row"].tolist()):
        record = records[row_index]
        rows.append(
            {
                "image_id": record["image_id"],
                "patient_id": record["patient_id"],
                "group": record.get("group") or record["patient_id"],
                "split": split,
                "noise_kind": config.noise.kind,
                "noise_mean": config.noise.mean,
                "noise_std": config.noise.std,
                "method": method,
                "model": config.model,
                "strategy": strategy,
                "seed": config.seed,
                "head": "",
                "psnr": float(result["psnr"][i]),
                "ssim": float(result["ssim"][i]),
                "noisy_psnr": float(result["noisy_psnr"][i]),
                "noisy_ssim": float(result["noisy_ssim"][i]),
            }
        )
    return rows


# A denoiser that does not beat its own noisy input by this much has not learned to denoise.
LEARNED_MARGIN_DB = 0.5


def learning_warning(best_val_psnr: float | None, noisy_val_psnr: float | None, config: TrainConfig) -> str:
    """A warning when the best validation PSNR is not above the noisy input's; '' when the run learned."""
    if best_val_psnr is None or noisy_val_psnr is None:
        return ""
    if best_val_psnr > noisy_val_psnr + LEARNED_MARGIN_DB:
        return ""
    return (
        f"the best validation PSNR ({best_val_psnr:.2f} dB) is not above the noisy input's "
        f"({noisy_val_psnr:.2f} dB): this network did not learn to denoise. Likely causes: too few steps "
        f"for the learning rate ({config.epochs} epoch(s) at lr {config.lr:g}, "
        f"schedule {config.lr_schedule}); "
        "narrow networks on a few hundred images need a larger rate with a schedule: --recipe small (lr "
        "5e-3, one-cycle, batch 8; docs/training.md, 'Small networks'); or too few epochs"
    )
