"""The benchmark scripts run end to end on the CPU at a tiny size and write complete result files.

These check the machinery (runs finish, tables print, JSON holds the machine, settings and figures), not the
figures themselves, which depend on the machine and its load.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from time_limits import RUN

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
ENVIRONMENT_KEYS = {"device", "device_kind", "torch", "cuda", "cpu_count", "date", "git_commit",
                    "load_average_start", "load_average_end"}  # fmt: skip

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def benchmarks_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def read_result(folder: Path, name: str) -> dict:
    payload = json.loads((folder / f"{name}_cpu.json").read_text())
    assert set(payload["environment"]) >= ENVIRONMENT_KEYS, set(payload["environment"])
    assert payload["environment"]["device"].startswith("CPU")
    return payload


def test_gpu_check_script_runs_on_the_cpu_with_tiny(tmp_path):
    environment = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    environment.pop("OUT", None)
    completed = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh"), "--tiny", "--out", str(tmp_path)],
        env=environment, capture_output=True, text=True, timeout=RUN, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "all parts finished" in completed.stdout and "what imports" in completed.stdout
    # The GPU run must fit in 8 minutes; the tiny CPU run, doing the same steps smaller, well within that.
    total_seconds = int(re.search(r"\(cpu, (\d+) s in all\)", completed.stdout).group(1))
    assert total_seconds < 480, total_seconds
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "data_placement_throughput_cpu.json", "epoch_time_cpu.json", "eval_speed_cpu.json", "gpu_check.log",
        "train_throughput_cpu.json",
    ]  # fmt: skip
    throughput = read_result(tmp_path, "train_throughput")
    assert throughput["complete"]
    assert {(r["model"], r["config"]) for r in throughput["results"]} == {
        (model, config) for model in ("unet", "unetpp")
        for config in ("reference_fp32", "reference_amp", "ours_bf16_cl")
    }  # fmt: skip
    for row in throughput["results"]:
        assert row["images_per_second"] > 0 and row["gflops_per_image"] > 0 and 0 < row["mfu"] < 1
    epochs = read_result(tmp_path, "epoch_time")
    assert [r["config"] for r in epochs["results"]] == ["ours", "reference_fp32", "reference_amp"]
    assert all(r["epoch_wall_seconds"] > 0 and r["epochs"] == 2 for r in epochs["results"])
    # Same data, seed and fixed noise: the pipelines train the same model (fp16 AMP only within precision).
    ours, reference = epochs["results"][0], epochs["results"][1]
    assert reference["val_loss"] == pytest.approx(ours["val_loss"], abs=1e-5)
    assert "epoch wall time" in (tmp_path / "gpu_check.log").read_text()
    placement = read_result(tmp_path, "data_placement_throughput")["throughput"]
    assert set(placement["medians"]) == {"device", "stream"} and placement["ratio"] > 0


def test_gpu_check_script_rejects_unknown_options(tmp_path):
    completed = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh"), "--bogus"], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 2 and "unknown option --bogus" in completed.stderr


def test_cpu_overhead_and_time_to_quality_on_a_tiny_folder(tmp_path):
    import cpu_overhead
    import summarize
    import time_to_quality
    from conftest import write_tiny_prepared

    data = write_tiny_prepared(tmp_path / "data", n=40, size=32)
    tiny = ["--data", str(data), "--base-channels", "4", "--batch-size", "4", "--epochs", "2",
            "--out-dir", str(tmp_path)]  # fmt: skip
    overhead = cpu_overhead.main([*tiny, "--train-images", "16"])
    assert [row["pipeline"] for row in overhead["results"]] == ["fast", "reference"]
    assert all(row["ratio"] > 0 for row in overhead["results"])
    assert len(overhead["bare_epoch_seconds"]) == 3  # before, between and after the two fit runs
    quality = time_to_quality.main([*tiny, "--device", "cpu"])
    reference, ours = quality["reference"], quality["ours"]
    target = quality["target"]["val_psnr"]
    assert target == reference["val_psnr"][reference["selected_epoch"] - 1]
    # Equal pipelines in fp32 on the CPU: the same PSNR every epoch, so ours reaches the target when
    # the reference first did.
    assert ours["val_psnr"] == pytest.approx(reference["val_psnr"], abs=1e-3)
    first = next(epoch for epoch, value in enumerate(reference["val_psnr"], 1) if value >= target)
    assert ours["epoch_reaching_target"] == first
    read_result(tmp_path, "cpu_overhead")
    read_result(tmp_path, "time_to_quality")
    assert summarize.main([str(tmp_path), "--kind", "cpu"]) == 0


def test_scaling_plans_controlled_comparisons_and_runs_one_process_against_two(tmp_path):
    import scaling

    args = scaling.parse_args(["--device", "cpu", "--global-batch", "16"])
    runs, skipped = scaling.plan(args, torch.device("cpu"))
    assert skipped == []
    assert {(r["strategy"], r["amp"], r["setting"], r["batch"], r["devices"]) for r in runs} == {
        (strategy, amp, setting, 16, 1) for amp in ("off", "bf16")
        for strategy, setting in (("single", "baseline"), ("dp", "one CPU device (DP wrapper only)"))
    } | {
        ("ddp", amp, setting, batch, 2) for amp in ("off", "bf16")
        for setting, batch in (("equal global batch", 8), ("equal per-device batch", 16))
    }  # fmt: skip
    assert all(r["threads"] == 1 for r in runs if r["strategy"] == "ddp")

    result = scaling.main(["--device", "cpu", "--train-images", "16", "--size", "32", "--base-channels", "4",
                           "--global-batch", "4", "--epochs", "1", "--amp-settings", "off",
                           "--strategies", "ddp", "--batch-settings", "global",
                           "--out-dir", str(tmp_path)])  # fmt: skip
    rows = {(r["strategy"], r["setting"]): r for r in result["results"]}
    assert set(rows) == {("single", "baseline"), ("ddp", "equal global batch")}
    assert (
        rows[("ddp", "equal global batch")]["global_batch"]
        == rows[("single", "baseline")]["global_batch"]
        == 4
    )
    assert all(r["images_per_second"] > 0 for r in rows.values())
    assert result["backend"] == "gloo"
    read_result(tmp_path, "scaling")
