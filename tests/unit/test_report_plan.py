"""The reproduction grid's plan: which configurations run on which hardware, and what is skipped and why."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from meddenoise.reproduce import PRESETS, plan_jobs


def _names(jobs):
    return [job.name for job in jobs]


def test_quick_on_cpu_runs_ddp_on_gloo_and_skips_dp_with_a_reason():
    jobs, skipped = plan_jobs(PRESETS["quick"], Path("out"), seeds=1, gpus=0)
    names = _names(jobs)
    for std in ("0.1", "0.2", "0.3"):
        for model in ("unet", "unetpp", "dncnn"):
            assert f"{model}_std{std}_single_seed0" in names
        for baseline in ("noisy", "gaussian", "nlm", "bm3d"):
            assert f"{baseline}_std{std}" in names
    ddp = [job for job in jobs if job.strategy == "ddp" and job.kind == "network"]
    # the controlled protocol: the same global batch (4 per process x 2) and steps as one device's 8
    # Table V times the U-Net only in the quick preset (its time budget), and says so
    assert sorted(job.name for job in ddp) == ["unet_std0.1_ddp-controlled_seed0"]
    assert all(job.nproc == 2 and job.train_overrides["amp"] == "off" for job in ddp)
    assert all(job.train_overrides["batch_size"] == 4 and job.protocol == "controlled" for job in ddp)
    # interleaved: each DDP run right after its one-device run; the quick preset times each pair once
    assert names[names.index("unet_std0.1_single_seed0") + 1] == "unet_std0.1_ddp-controlled_seed0"
    assert not [job for job in jobs if job.kind == "timing"]
    repeated, _ = plan_jobs(dataclasses.replace(PRESETS["quick"], timing_repeats=2), Path("out"), 1, 0)
    timing = [job for job in repeated if job.kind == "timing"]
    assert [job.name for job in timing] == [
        "unet_std0.1_single_seed0_repeat1",
        "unet_std0.1_ddp-controlled_seed0_repeat1",
    ]
    assert all(
        job.train_overrides["evaluate_test"] is False and "timing" in job.folder.parts for job in timing
    )
    assert not any(job.strategy == "dp" for job in jobs)
    reasons = {item["what"]: item["reason"] for item in skipped}
    assert "DataParallel needs at least 2 GPUs" in reasons["strategy dp"]
    assert "with unet only" in reasons["strategy ddp for unetpp"]
    assert "unet-noise2noise_std0.2_single_seed0" in names


def test_paper_on_two_gpus_runs_every_strategy_at_every_level_with_fp16_ddp():
    jobs, skipped = plan_jobs(PRESETS["paper"], Path("out"), seeds=2, gpus=2)
    networks = [job for job in jobs if job.kind == "network" and job.method in ("unet", "unetpp")]
    assert {(job.strategy, job.noise_std) for job in networks} == {
        (strategy, std) for strategy in ("single", "dp", "ddp+amp") for std in (0.1, 0.2, 0.3)
    }
    assert {job.seed for job in networks} == {0, 1}
    ddp = [job for job in networks if job.strategy == "ddp+amp"]
    assert all(job.train_overrides["amp"] == "fp16" and job.nproc == 2 for job in ddp)
    assert all(
        job.train_overrides["epochs"] == 50 and job.train_overrides["base_channels"] == 64 for job in ddp
    )
    assert not [item for item in skipped if item["what"].startswith("strategy")]
    # both Table V protocols: batch 16 per device (the paper) and 8 per device (global 16, as one device)
    assert {(job.protocol, job.train_overrides["batch_size"]) for job in ddp} == {
        ("paper", 16),
        ("controlled", 8),
    }


def test_one_gpu_skips_both_multi_device_strategies():
    _, skipped = plan_jobs(PRESETS["paper"], Path("out"), seeds=1, gpus=1)
    reasons = {item["what"]: item["reason"] for item in skipped}
    assert "(1 here)" in reasons["strategy dp"] and "(1 here)" in reasons["strategy ddp+amp"]


def test_the_description_names_the_data_really_used():
    from meddenoise.reproduce import describe_plan

    own = describe_plan(PRESETS["quick"], {}, given=False)
    assert "NIH ChestX-ray14 sample" in own and "real patients" in own
    given = {"source": "folder", "height": 128, "width": 128, "counts": {"train": 100, "val": 60, "test": 40}}
    text = describe_plan(PRESETS["quick"], given, given=True)
    assert "given with --data" in text and "`folder`" in text and "200 images of 128x128" in text
    assert "not the preset's own (480 of the 725 images of the embedded NIH ChestX-ray14 sample" in text
    assert "on the embedded NIH" not in text


def test_quick_runs_one_three_site_federation_beside_its_centralized_unet(monkeypatch):
    import importlib.util

    from meddenoise.federated.jobs import federated_config

    jobs, _ = plan_jobs(PRESETS["quick"], Path("out"), seeds=1, gpus=0)
    (federated,) = [job for job in jobs if job.kind == "federated"]
    assert federated.name == "unet-fedavg-iid3_std0.2_seed0" and federated.strategy == "federated-fedavg"
    assert "unet_std0.2_single_seed0" in _names(jobs)
    config = federated_config(federated.train_overrides, federated.federation, data="d", out="o")
    quick = PRESETS["quick"].train
    # two local epochs per round (one left FedAvg below the noisy input in 6 rounds)
    assert (config.rounds, config.local_epochs, config.sites) == (quick["epochs"], 2, 3)
    assert (config.lr, config.lr_schedule, config.batch_size) == (quick["lr"], quick["lr_schedule"], 8)

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "flwr" else real_find_spec(n, *a)
    )
    jobs, skipped = plan_jobs(PRESETS["quick"], Path("out"), seeds=1, gpus=0)
    assert not [job for job in jobs if job.kind == "federated"]
    assert "meddenoise[federated]" in {i["what"]: i["reason"] for i in skipped}["federated runs"]


def test_merged_audits_keep_the_learned_matcher_of_every_level():
    from meddenoise.reproduce import merge_audits

    def one(std):
        level = {"noise_std": std, "reversal": {}}
        learned = {"matcher": {}, "queries": 4, "levels": [{"noise_std": std}]}
        return {"levels": [level], "settings": {"noise_stds": [std]}, "learned_matcher": learned}

    merged = merge_audits([one(0.1), one(0.2), one(0.3)], "no outsider")
    assert [lv["noise_std"] for lv in merged["learned_matcher"]["levels"]] == [0.1, 0.2, 0.3]
    assert [lv["noise_std"] for lv in merged["levels"]] == [0.1, 0.2, 0.3]


def test_a_failed_job_is_one_line_with_its_full_text_kept(tmp_path):
    """Issue 23: when Ray killed a site for memory, "Failed jobs" held a several-kilobyte traceback."""
    from meddenoise.errors import MeddenoiseError
    from meddenoise.reproduce import failure_line

    blob = "ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.\n" + (
        "  File ...\n" * 200
    )
    line = failure_line(RuntimeError(blob), tmp_path / "job")
    assert "\n" not in line and "lack of memory" in line and "--sim-cpus 1" in line
    assert (tmp_path / "job" / "failure.txt").read_text().count("File ...") == 200
    other = failure_line(ValueError("first line\n" + "x" * 5000), tmp_path / "other")
    assert other.startswith("ValueError: first line (full text: ") and len(other) < 400
    assert failure_line(MeddenoiseError("our own message"), tmp_path / "own") == "our own message"
