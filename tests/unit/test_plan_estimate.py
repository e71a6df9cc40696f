"""`reproduce --dry-run`: the plan with a time per job measured on this device; nothing is written."""

from __future__ import annotations

import re

from meddenoise.cli import main
from meddenoise.reproduce import PRESETS, plan_jobs


def test_dry_run_lists_every_job_with_a_measured_estimate_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["reproduce", "--preset", "smoke", "--out", str(out), "--device", "cpu", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert not out.exists()
    jobs, _ = plan_jobs(PRESETS["smoke"], out, 1, 0)
    for job in jobs:
        line = next(line for line in printed.splitlines() if f" {job.name} " in line)
        assert re.search(r"\d+(\.\d)? (s|min|h)\b", line), line
        assert "timed here" in line or "no denoising" in line
    assert "privacy audit" in printed and "not estimated" in printed  # never a made-up number
    assert "privacy modes: DP-SGD runs" in printed and "per-sample gradients (Opacus) timed here" in printed
    assert re.search(r"estimated: about \d", printed)
