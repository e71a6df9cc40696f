"""A job of `reproduce` that fails is recorded with its error, listed at the top of the report, the other
jobs still run, and the command exits non-zero after writing the report."""

from __future__ import annotations

import json

import pytest

from meddenoise import reproduce
from meddenoise.cli import main

pytestmark = pytest.mark.slow


def test_a_failing_job_is_reported_and_makes_the_command_fail(tmp_path, make_prepared, monkeypatch, capsys):
    data = make_prepared(n=24, size=32, patients=12)
    real_baseline = reproduce.run_baseline_job

    def broken_network(job, data_dir, settings):  # every network fails fast: keeps this test short
        raise RuntimeError(f"simulated crash in {job.name}")

    def baseline(job, data_dir, settings):
        if job.method == "gaussian":
            raise ValueError("simulated bad parameter")
        real_baseline(job, data_dir, settings)

    monkeypatch.setattr(reproduce, "run_network_job", broken_network)
    monkeypatch.setattr(reproduce, "run_baseline_job", baseline)
    out = tmp_path / "out"
    argv = ["reproduce", "--preset", "smoke", "--out", str(out), "--data", str(data), "--device", "cpu"]
    assert main(argv) == 1
    printed = capsys.readouterr().out
    assert "failed: gaussian_std0.1: ValueError: simulated bad parameter" in printed
    plan = json.loads((out / "reproduce.json").read_text())
    failed = {item["what"]: item["reason"] for item in plan["failed"]}
    assert failed["unet_std0.1_single_seed0"] == "RuntimeError: simulated crash in unet_std0.1_single_seed0"
    assert "gaussian_std0.2" in failed and "noisy_std0.1" not in failed
    assert (out / "baselines" / "noisy_std0.1" / "DONE").is_file()  # the others still ran
    markdown = (out / "report.md").read_text()
    assert "## Failed jobs" in markdown and f"**{len(failed)} job(s) failed**" in markdown
    assert "`gaussian_std0.2`: ValueError: simulated bad parameter" in markdown
    assert markdown.index("## Failed jobs") < markdown.index("## Set-up")
