"""`ReproDir`: the layout of a reproduction folder (`meddenoise reproduce --out OUT`) and its readers, in one
place (no torch import), as `RunDir` is for a run folder. The reproduction writes through it; the report and
the CLI read through it.

    OUT/reproduce.json             plan, environment, data, what ran / was skipped and why, wall time
    OUT/config.json                the effective options, saved before anything runs
    OUT/data/                      the prepared folder (unless --data gives one)
    OUT/runs/<configuration>/      an engine run folder + evaluation/test/ + DONE when finished
    OUT/timing/<configuration>/    extra timing repeats of Table V (trained only)
    OUT/baselines/<method>_std<s>/ an evaluation folder + DONE
    OUT/privacy/                   privacy_audit.json / .md
    OUT/privacy_modes/             DP-SGD runs (runs/), public data and its per-image scores, membership
                                   audits (membership/), privacy_modes.json / .md
    OUT/report.md, report.html, figures/, tables/

A privacy-audit folder (`OUT/privacy/`, or what `meddenoise privacy-audit --out` writes) holds
`privacy_audit.json` and `privacy_audit.md`; `write_privacy_audit` is their one writer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meddenoise.errors import MeddenoiseError
from meddenoise.fileio import atomic_write_json, atomic_write_text, read_json

PLAN_FILE = "reproduce.json"
AUDIT_FILE = "privacy_audit.json"
AUDIT_MARKDOWN = "privacy_audit.md"
MODES_FOLDER = "privacy_modes"
MODES_FILE = "privacy_modes.json"
MODES_MARKDOWN = "privacy_modes.md"


class ReproDir:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def plan_file(self) -> Path:
        return self.root / PLAN_FILE

    @property
    def config_file(self) -> Path:
        return self.root / "config.json"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / name

    def timing_dir(self, name: str) -> Path:
        return self.root / "timing" / name

    def baseline_dir(self, name: str) -> Path:
        return self.root / "baselines" / name

    @property
    def privacy_dir(self) -> Path:
        return self.root / "privacy"

    @property
    def privacy_audit_file(self) -> Path:
        return self.privacy_dir / AUDIT_FILE

    @property
    def modes_dir(self) -> Path:
        return self.root / MODES_FOLDER

    def modes_run_dir(self, name: str) -> Path:
        """A run of the privacy-modes step: outside runs/, so the paper's tables never mix DP runs in."""
        return self.modes_dir / "runs" / name

    @property
    def modes_public_data(self) -> Path:
        return self.modes_dir / "public_data"

    @property
    def modes_public_scores(self) -> Path:
        """The publicly pretrained U-Net's per-image table on the private test split."""
        return self.modes_dir / "public_on_private_test.csv"

    def membership_dir(self, name: str) -> Path:
        return self.modes_dir / "membership" / name

    @property
    def modes_file(self) -> Path:
        return self.modes_dir / MODES_FILE

    @property
    def modes_markdown(self) -> Path:
        return self.modes_dir / MODES_MARKDOWN

    # -- readers -------------------------------------------------------------------------------------------
    def read_plan(self) -> dict[str, Any]:
        """The plan, or {} when the folder holds none (a folder of evaluations the report also reads)."""
        if not self.plan_file.is_file():
            return {}
        return read_json(self.plan_file, what="reproduction plan") or {}

    def read_privacy_audit(self) -> dict[str, Any] | None:
        if not self.privacy_audit_file.is_file():
            return None
        return read_json(self.privacy_audit_file, what="privacy audit")

    def read_privacy_modes(self) -> dict[str, Any] | None:
        """The privacy-modes table, or None when missing or unreadable (the report then leaves it out)."""
        if not self.modes_file.is_file():
            return None
        try:
            return read_json(self.modes_file, what="privacy modes table")
        except MeddenoiseError:
            return None


def write_privacy_audit(folder: Path, result: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write an audit's result and its report section into `folder`; returns both paths."""
    folder = Path(folder)
    json_path, markdown_path = folder / AUDIT_FILE, folder / AUDIT_MARKDOWN
    atomic_write_json(json_path, result)
    atomic_write_text(markdown_path, markdown)
    return json_path, markdown_path
