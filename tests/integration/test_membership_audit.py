"""Membership inference sanity: a model overfit on a few images gives them away (offline LiRA and the loss
attack clearly above 0.5, on both the best and the last checkpoint); a model that never saw the "members"
scores chance (0.5 inside the patient-bootstrap interval) and is not called private for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from time_limits import RUN

pytestmark = pytest.mark.slow

TINY = ["--model", "unet", "--base-channels", "16", "--depth", "2", "--norm", "group", "--quiet"]
TINY += ["--device", "cpu", "--no-evaluate-test", "--patience", "0", "--noise-std", "0.2", "--lr", "3e-3"]


def meddenoise(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "meddenoise", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN,
    )
    assert completed.returncode == 0, (completed.stdout[-2000:], completed.stderr[-3000:])
    return completed


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from conftest import write_tiny_prepared

    return write_tiny_prepared(tmp_path_factory.mktemp("mia") / "prepared", n=240, size=32, patients=80)


def test_a_model_overfit_on_few_images_gives_its_members_away(data, tmp_path):
    run = tmp_path / "overfit"
    meddenoise(
        "train",
        "--data",
        data,
        "--out",
        run,
        *TINY,
        "--epochs",
        "150",
        "--batch-size",
        "8",
        "--limit-train",
        "8",
    )
    audit = tmp_path / "audit"
    meddenoise(
        "privacy-audit",
        "--data",
        data,
        "--out",
        audit,
        "--run",
        run,
        "--membership",
        "--noise-std",
        "0.2",
        "--reference-models",
        "2",
        "--reference-epochs",
        "40",
        "--max-queries",
        "8",
    )
    result = json.loads((audit / "privacy_audit.json").read_text())["membership"]
    assert result["members"]["images"] == 8  # only the images the run trained on (--limit-train)
    assert set(result["checkpoints"]) == {"best", "last"} and result["audited_checkpoint"] == "best"
    for name, checkpoint in result["checkpoints"].items():
        for attack in ("loss_threshold", "lira"):
            entry = checkpoint[attack]
            assert entry["auc"] > 0.8, (name, attack)
            assert entry["auc_ci"][0] > 0.5, (name, attack)
            assert entry["auc_ci"][0] <= entry["auc_upper_95"] <= entry["auc_ci"][1]
            nonmembers = result["nonmembers"]["images"]
            assert entry["lowest_fpr"] == 1 / nonmembers and 0 <= entry["tpr_at_lowest_fpr"] <= 1
        assert checkpoint["lira"]["reference_patients_disjoint"] is True
    assert result["lira"] == result["checkpoints"]["best"]["lira"]
    assert (audit / "membership" / "reference1" / "checkpoints" / "last.safetensors").is_file()
    text = (audit / "privacy_audit.md").read_text()
    assert "Membership inference" in text and "LiRA, offline (2 reference models" in text
    assert "- last checkpoint" in text and "lowest resolvable FPR" in text and "at 95% (one-sided)" in text


def test_a_model_that_never_saw_the_members_scores_chance(data, tmp_path):
    from meddenoise.privacy.membership import markdown_lines, run_membership_audit

    run = tmp_path / "outsider"
    meddenoise(
        "train",
        "--data",
        data,
        "--out",
        run,
        *TINY,
        "--epochs",
        "30",
        "--batch-size",
        "8",
        "--train-split",
        "val",
        "--val-split",
        "val",
    )
    result = run_membership_audit(
        run, out=tmp_path / "m", member_split="train", reference_models=0, device="cpu"
    )
    low, high = result["loss_threshold"]["auc_ci"]
    assert result["members"]["split"] == "train" and result["members"]["images"] > 40
    assert low <= 0.5 <= high, result["loss_threshold"]
    assert "skipped" in result["lira"]
    text = "\n".join(markdown_lines(result))
    assert "not evidence of privacy" in text and "upper bound" in text
    assert "chance not excluded" not in text and "private" not in text.replace("not evidence of privacy", "")


def test_without_patient_ids_the_audit_does_not_speak_of_patients(tmp_path, tiny_fit):
    import numpy as np

    from conftest import smooth_images
    from meddenoise.data.cache import write_prepared
    from meddenoise.data.records import ImageRecord
    from meddenoise.data.splits import assign_splits
    from meddenoise.privacy.membership import markdown_lines, run_membership_audit

    images = (smooth_images(24, 32, 5) * 255).round().astype(np.uint8)
    records = [ImageRecord(f"scan{i}.png", f"scan{i}.png", "folder", f"x/scan{i}.png") for i in range(24)]
    params = {"source": "folder", "split_by": "patient", "patient_id_origin": {"none": 24}}
    data = write_prepared(tmp_path / "data", images, records, assign_splits(records, seed=0), params)
    run = tiny_fit(data, tmp_path / "run", epochs=1)
    result = run_membership_audit(run, out=tmp_path / "m", reference_models=0, device="cpu")
    assert result["patient_ids_unknown"] is True
    text = "\n".join(markdown_lines(result))
    assert "patients," not in text and "patient-bootstrap" not in text
    assert "patient ids unknown" in text and "membership of images, not of patients" in text
