"""The run folder's small files: train.log, metrics.jsonl, summary.csv, split.csv, test_metrics.csv.

Only rank 0 writes (every writer here is a no-op elsewhere). Tables are rewritten atomically as a whole, so a
killed run never leaves a truncated metrics file; the log is appended.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from meddenoise.errors import DataError
from meddenoise.fileio import atomic_write_text

SPLIT_COLUMNS = ("index", "image_id", "image_key", "patient_id", "group", "split", "content_hash")


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


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
