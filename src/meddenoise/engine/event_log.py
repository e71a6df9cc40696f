"""`--log tensorboard`: the epoch records of metrics.jsonl also as TensorBoard scalars, in RUN/tensorboard/.

metrics.jsonl stays the source of truth (the report and resume read it); the event files are a view for people
who watch runs in TensorBoard. The `tensorboard` package is an optional extra (`meddenoise[tensorboard]`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meddenoise.errors import ConfigError

LOGS = ("tensorboard",)
# metrics.jsonl key -> TensorBoard tag (grouped so the dashboard shows loss, quality and speed apart)
SCALARS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "selection_loss": "loss/selection",
    "val_psnr": "quality/val_psnr",
    "val_ssim": "quality/val_ssim",
    "noisy_val_psnr": "quality/noisy_val_psnr",
    "lr": "optimizer/lr",
    "images_per_second": "speed/images_per_second",
    "train_seconds": "speed/train_seconds",
    "peak_memory_mb": "memory/peak_mb",
    "epsilon": "privacy/epsilon",
}


def summary_writer_class() -> Any:
    """torch's TensorBoard writer, or a ConfigError that says how to get it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "log tensorboard needs the tensorboard package: pip install 'meddenoise[tensorboard]' "
            "(metrics.jsonl is written either way; drop the tensorboard log to train without it)",
            "log",
        ) from None
    return SummaryWriter


class TensorBoardLog:
    """Writes each epoch record as scalars at step = epoch (counted from 1, as in metrics.jsonl)."""

    def __init__(self, folder: Path) -> None:
        self.writer = summary_writer_class()(log_dir=str(folder))

    def epoch(self, record: dict[str, Any]) -> None:
        for key, tag in SCALARS.items():
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag, float(value), global_step=int(record["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
