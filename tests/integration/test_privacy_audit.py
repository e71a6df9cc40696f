"""`meddenoise privacy-audit` through the real CLI on tiny prepared folders, with and without denoisers."""

from __future__ import annotations

import json

import pytest

from meddenoise.cli import main


def audit(data, out, *extra):
    return main(
        [
            "privacy-audit",
            "--data",
            str(data),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--batch-size",
            "16",
            *extra,
        ]
    )


def test_audit_with_repeating_patients_writes_json_and_report(make_prepared, tmp_path, capsys):
    data = make_prepared(n=60, size=32, patients=12, seed=3)
    out = tmp_path / "audit"
    assert audit(data, out, "--levels", "0.1", "0.3", "--split", "test") == 0
    printed = capsys.readouterr().out
    assert "link@1" in printed and "reid@1" in printed
    # a line per stage, so a log shows how far the audit got
    assert "privacy audit: noise std 0.1: linkage" in printed and "privacy audit: noise std 0.3:" in printed

    result = json.loads((out / "privacy_audit.json").read_text())
    assert [level["noise_std"] for level in result["levels"]] == [0.1, 0.3]
    assert result["data"]["gallery"] == 60 and result["data"]["patients"] == 12
    queries = result["data"]["queries"]
    assert queries > 0
    for level in result["levels"]:
        link = level["linkage"]
        assert link["queries"] == queries and link["chance_top1"] == pytest.approx(1 / 60)
        assert 0.0 <= link["top1"] <= link["top5"] <= 1.0
        reid = level["reidentification"]
        assert "skipped" not in reid
        # 5 images per patient, own image removed: 4 of 59 candidates are the same patient
        assert reid["chance_top1"] == pytest.approx(4 / 59)
        distortion = level["distortion"]
        # the released image is worse than with its known mean removed, and two copies beat one
        assert distortion["obfuscated"]["psnr"]["mean"] < distortion["mean_removed"]["psnr"]["mean"]
        assert distortion["mean_removed"]["psnr"]["mean"] < distortion["two_copy_average"]["psnr"]["mean"]
        assert "skipped" in level["reversal"]["receiver"] and "skipped" in level["reversal"]["outsider"]
    low, high = result["levels"]
    assert low["linkage"]["top1"] >= high["linkage"]["top1"]
    assert low["linkage"]["top1"] > 10 * low["linkage"]["chance_top1"]  # smooth 32 px images stay linkable

    report = (out / "privacy_audit.md").read_text()
    assert report.startswith("## Privacy audit") and "### Verdict" in report
    assert f"{100 * low['linkage']['top1']:.1f}%" in report  # the verdict quotes the measured figure
    assert (out / "config.json").is_file()


def test_audit_states_why_reidentification_is_skipped(make_prepared, tmp_path, capsys):
    data = make_prepared(n=30, size=32, patients=30, seed=4)  # every patient has one image
    out = tmp_path / "audit"
    assert audit(data, out, "--noise-std", "0.2") == 0
    assert "re-identification skipped: no query's patient has another image" in capsys.readouterr().out
    result = json.loads((out / "privacy_audit.json").read_text())
    assert "do not repeat" in result["levels"][0]["reidentification"]["skipped"]
    assert "not measured" in (out / "privacy_audit.md").read_text()


def test_audit_errors_are_messages_not_tracebacks(tmp_path, capsys, make_prepared):
    assert audit(tmp_path / "missing", tmp_path / "out") == 2
    assert "error:" in capsys.readouterr().err
    data = make_prepared(n=24, size=32)
    assert audit(data, tmp_path / "out", "--run", str(tmp_path / "no_run")) == 2
    assert "--run" in capsys.readouterr().err
    assert audit(data, tmp_path / "out", "--noise-std", "0") == 2
    assert "--noise-std" in capsys.readouterr().err
    assert audit(data, tmp_path / "out", "--gallery-size", "2") == 2
    assert "--gallery-size" in capsys.readouterr().err


@pytest.mark.slow
def test_audit_measures_reversal_by_receiver_and_outsider(make_prepared, tiny_fit, tmp_path):
    data = make_prepared(n=48, size=32, patients=12, seed=5)
    other = make_prepared(n=48, size=32, patients=12, seed=6)  # the outsider's own, unrelated images
    receiver = tiny_fit(data, tmp_path / "receiver")
    outsider = tiny_fit(other, tmp_path / "outsider")
    out = tmp_path / "audit"
    assert (
        audit(data, out, "--noise-std", "0.2", "--run", str(receiver), "--outsider-run", str(outsider)) == 0
    )
    result = json.loads((out / "privacy_audit.json").read_text())
    level = result["levels"][0]
    released = level["distortion"]["obfuscated"]["psnr"]["mean"]
    for role in ("receiver", "outsider"):
        assert level["reversal"][role]["psnr"]["mean"] > released + 3.0
    assert result["outsider_overlap"]["queries_seen_in_training"] == 0
    report = (out / "privacy_audit.md").read_text()
    assert "Reversal by the receiver's denoiser" in report and "Outsider check" in report
    classical = level["reversal"]["classical"]  # the same queries through a filter tuned on other images
    assert classical["psnr"]["count"] == level["reversal"]["receiver"]["psnr"]["count"]
    assert classical["tuned_on"].endswith(("val images", "train images")) and classical["params"]["sigma"] > 0
    assert "a Gaussian filter gives" in report
    # the check catches a so-called outsider that trained on the audited images (by pixel hash)
    assert (
        audit(
            data,
            tmp_path / "leaky",
            "--noise-std",
            "0.2",
            "--split",
            "train",
            "--outsider-run",
            str(receiver),
        )
        == 0
    )
    leaky = json.loads((tmp_path / "leaky" / "privacy_audit.json").read_text())["outsider_overlap"]
    assert leaky["compared_by"] == "content_hash"
    assert leaky["queries_seen_in_training"] == leaky["trained_images"] > 0


def write_nih_layout(root, image_files, patients=10, studies=4, size=64, seed=0):
    """The Kaggle NIH layout (images_001/images/PPPPPPPP_SSS.png + Data_Entry_2017.csv), where each
    patient's follow-up studies are one anatomy shifted by a pixel or two, with other exposure and noise."""
    import csv

    import numpy as np

    rng = np.random.default_rng(seed)
    anatomy = image_files.smooth(patients, size, seed)
    rows = []
    for patient in range(patients):
        for study in range(studies):
            shifted = np.roll(anatomy[patient], tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
            exposure = rng.uniform(0.85, 1.0) * shifted + rng.uniform(0.0, 0.1)
            pixels = np.clip(exposure + rng.normal(0, 0.02, shifted.shape), 0, 1)
            name = f"{patient + 1:08d}_{study:03d}.png"
            image_files.png(root / "images_001" / "images" / name, np.round(pixels * 255).astype(np.uint8))
            rows.append([name, "No Finding", study, patient + 1, "PA"])
    with open(root / "Data_Entry_2017.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "View Position"])
        writer.writerows(rows)
    return root


def test_audit_on_an_nih_layout_reidentifies_follow_up_studies(tmp_path, image_files, capsys):
    root = write_nih_layout(tmp_path / "nih", image_files)
    prepared = tmp_path / "prepared"
    assert (
        main(["prepare", "--source", "nih", "--root", str(root), "--out", str(prepared), "--size", "64"]) == 0
    )
    out = tmp_path / "audit"
    assert audit(prepared, out, "--levels", "0.1", "0.3", "--split", "all") == 0
    result = json.loads((out / "privacy_audit.json").read_text())
    assert result["data"]["sources"] == ["nih"] and result["data"]["patients"] == 10
    for level in result["levels"]:
        reid = level["reidentification"]
        # 4 studies per patient: 3 of the 39 other images are the same patient
        assert reid["chance_top1"] == pytest.approx(3 / 39) and reid["queries"] == 40
        # follow-ups of one anatomy are found through the noise; lower bounds are far above chance
        assert reid["top1_interval"][0] > 5 * reid["chance_top1"]
        assert level["linkage"]["top1_interval"][0] > 10 * level["linkage"]["chance_top1"]
    assert result["reference"]["reidentification_clean_queries"]["top1"] == 1.0


@pytest.mark.slow
def test_audit_on_the_embedded_default_links_images_and_explains_the_missing_reidentification(
    tmp_path, capsys
):
    prepared = tmp_path / "default"
    render = ["--render-option", "voxel_mm=4", "pose_groups=6"]  # coarse CT: a few seconds on one core
    prepare = ["prepare", "--source", "default", "--count", "24", "--size", "32", "--device", "cpu"]
    assert main([*prepare, *render, "--out", str(prepared), "--quiet"]) == 0
    out = tmp_path / "audit"
    assert audit(prepared, out, "--levels", "0.1", "0.3", "--split", "all") == 0
    printed = capsys.readouterr().out
    assert "re-identification skipped: every gallery image belongs to one patient" in printed
    result = json.loads((out / "privacy_audit.json").read_text())
    assert result["data"]["sources"] == ["default"] and result["data"]["patients"] == 1
    low, high = result["levels"]
    for level in (low, high):
        assert "one patient" in level["reidentification"]["skipped"]
        assert level["linkage"]["queries"] == 24 and level["linkage"]["chance_top1"] == pytest.approx(1 / 24)
    # the rendered poses stay linkable through the noise, far above chance
    assert low["linkage"]["top1"] >= high["linkage"]["top1"] > 10 / 24
