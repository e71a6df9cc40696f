"""`evaluate_run` / `evaluate_baseline` on a tiny prepared folder with an untrained checkpoint: one row
per test
image, numbers equal to an independent computation, summaries equal to the CSV, U-Net++ heads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meddenoise.engine.checkpoint import save_weights
from meddenoise.evaluation import files
from meddenoise.evaluation.runs import evaluate_baseline, evaluate_run
from meddenoise.models import build_model
from meddenoise.noise import NoiseSpec

NOISE = {"kind": "gaussian", "mean": 0.1, "std": 0.2, "clamp": True, "seed": 0}


def _fake_run(folder, data_dir, model_name="unet", **options):
    """A run folder holding only a best checkpoint with the metadata the engine writes."""
    torch.manual_seed(0)
    model = build_model(model_name, **options).eval()
    metadata = {
        "model": model_name,
        "model_options": options,
        "noise": NOISE,
        "target": "clean",
        "strategy": "single",
        "epoch": 0,
        "config": {"data": str(data_dir), "seed": 3},
    }
    save_weights(folder / "checkpoints" / "best.safetensors", model, metadata)
    return model


@pytest.fixture
def prepared(make_prepared):
    return make_prepared(n=24, size=32, patients=8)


def test_per_image_rows_match_an_independent_computation(prepared, tmp_path):
    from meddenoise.data.cache import load_prepared
    from meddenoise.metrics import psnr, ssim
    from meddenoise.noise import build_noise

    run = tmp_path / "run"
    model = _fake_run(run, prepared, base_channels=4, depth=3)
    folder = evaluate_run(run, device="cpu", keep_samples=2, batch_size=5)
    assert folder == run / "evaluation" / "test"
    rows = files.read_rows(folder / files.PER_IMAGE_FILE)
    data = load_prepared(prepared)
    test_rows = data.indices("test")
    assert [row["image_id"] for row in rows] == [data.records[i]["image_id"] for i in test_rows]
    assert {row["method"] for row in rows} == {"unet"} and {row["strategy"] for row in rows} == {"single"}
    assert {row["seed"] for row in rows} == {"3"} and {row["noise_std"] for row in rows} == {"0.2"}

    clean = torch.from_numpy(data.images[test_rows].astype(np.float32) / 255.0).unsqueeze(1)
    keys = torch.from_numpy(data.image_keys[test_rows])
    noisy = build_noise("gaussian", mean=0.1, std=0.2)(clean, keys, seed=0, mode="fixed")
    with torch.no_grad():
        output = model(noisy).clamp(0, 1)
    np.testing.assert_allclose(files.metric_values(rows, "psnr"), psnr(output, clean).numpy(), rtol=1e-5)
    np.testing.assert_allclose(files.metric_values(rows, "ssim"), ssim(output, clean).numpy(), atol=1e-5)

    summary = {row["metric"]: row for row in files.read_rows(folder / files.SUMMARY_FILE)}
    assert math.isclose(
        float(summary["psnr"]["mean"]), files.metric_values(rows, "psnr").mean(), rel_tol=1e-12
    )
    # patients repeat in the test split: the interval resamples patients, or is n/a with the reason
    patients = {row["patient_id"] for row in rows}
    assert summary["psnr"]["groups"] == str(len(patients))
    if len(patients) >= 2:
        assert summary["psnr"]["ci_method"] == "group-bootstrap"
        assert (
            float(summary["psnr"]["ci_low"])
            < float(summary["psnr"]["mean"])
            < float(summary["psnr"]["ci_high"])
        )
    else:
        assert summary["psnr"]["ci_method"] == "none" and summary["psnr"]["ci_low"] == ""
        assert "one patient" in summary["psnr"]["ci_note"]
    assert float(summary["psnr"]["t_low"]) < float(summary["psnr"]["mean"])  # the plain t, for reference
    info = files.read_info(folder)
    if info["lpips"]["available"]:
        assert np.isfinite(files.metric_values(rows, "lpips")).all()
    else:  # never a number without its weights, always a reason
        assert all(row["lpips"] == "" for row in rows) and info["lpips"]["reason"]
    samples = files.read_samples(folder / files.SAMPLES_FILE)
    assert samples["denoised"].shape == (2, 32, 32) and list(samples["image_ids"]) == info["samples"]


def test_unetpp_heads_and_other_data(prepared, tmp_path, make_prepared):
    run = tmp_path / "run"
    _fake_run(run, prepared, "unetpp", base_channels=4, depth=3)
    other = make_prepared(n=12, size=24, patients=4, seed=5)
    folder = evaluate_run(run, data_dir=other, device="cpu", keep_samples=0)
    assert folder.name == f"test-{other.name}"
    info = files.read_info(folder)
    assert [head["head"] for head in info["heads"]] == [1, 2]
    assert info["heads"][0]["parameters"] < info["heads"][1]["parameters"]
    head_rows = files.read_rows(folder / files.PER_HEAD_FILE)
    last_head = [row for row in head_rows if row["head"] == "2"]
    main_rows = files.read_rows(folder / files.PER_IMAGE_FILE)
    np.testing.assert_allclose(files.metric_values(last_head, "psnr"), files.metric_values(main_rows, "psnr"))


def test_noisy_baseline_scores_the_noisy_input(prepared, tmp_path):
    folder = evaluate_baseline(
        "noisy", prepared, tmp_path / "noisy", noise=NoiseSpec.from_dict(NOISE), keep_samples=1
    )
    info = files.read_info(folder)
    assert info["kind"] == "baseline" and info["method"] == "noisy"
    samples = files.read_samples(folder / files.SAMPLES_FILE)
    np.testing.assert_allclose(samples["denoised"], samples["noisy"], atol=1e-3)


def test_missing_data_folder_is_a_clean_error(prepared, tmp_path):
    from meddenoise.errors import MeddenoiseError

    run = tmp_path / "run"
    _fake_run(run, tmp_path / "gone", base_channels=4, depth=3)
    with pytest.raises(MeddenoiseError, match="is gone; give the prepared folder to use") as refused:
        evaluate_run(run, device="cpu")
    assert refused.value.parameter == "data"


def test_evaluate_command_prints_the_summary(prepared, tmp_path, capsys):
    from meddenoise.cli import main

    run = tmp_path / "run"
    _fake_run(run, prepared, base_channels=4, depth=3)
    assert main(["evaluate", str(run), "--device", "cpu", "--samples", "0", "--limit", "2"]) == 0
    printed = capsys.readouterr().out
    assert "psnr" in printed and "95% CI" in printed
    rows = files.read_rows(run / "evaluation" / "test" / files.PER_IMAGE_FILE)
    assert len(rows) == 2
    assert (run / "evaluation" / "test" / "config.json").is_file()


def test_the_console_interval_never_asserts_one_image_per_patient():
    from meddenoise.commands.evaluate import format_summary

    text = format_summary({"n": 87, "mean": 30.0, "low": 29.5, "high": 30.5, "method": "t", "groups": 87})
    assert "one per patient" not in text and "patient ids unknown" in text and "too narrow" in text
