"""`meddenoise reproduce --preset smoke` end to end through the CLI on a tiny prepared folder: the report's
Table III and clean-free rows and values match the per-image CSVs, the privacy audit uses the receiver's
U-Net of each level, skipped strategies are explained, reruns resume."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from meddenoise.cli import main
from meddenoise.evaluation import files

pytestmark = pytest.mark.slow


def _markdown_table(markdown: str, caption_prefix: str) -> tuple[list[str], list[list[str]]]:
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"**{caption_prefix}"))
    header = [cell.strip() for cell in lines[start + 2].strip("|").split("|")]
    rows = []
    for line in lines[start + 4 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return header, rows


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from conftest import write_tiny_prepared

    root = tmp_path_factory.mktemp("smoke")
    data = root / "data"
    # 24 patients of 2 images: the test split holds 4 patients, the fewest a bootstrap interval accepts
    write_tiny_prepared(data, n=48, size=32, patients=24)
    out = root / "out"
    argv = ["reproduce", "--preset", "smoke", "--out", str(out), "--data", str(data), "--device", "cpu"]
    assert main(argv) == 0
    return out, argv


def test_report_table_three_matches_per_image_csvs(smoke):
    out, _ = smoke
    markdown = (out / "report.md").read_text()
    assert (out / "report.html").is_file()
    header, rows = _markdown_table(markdown, "Table III")
    assert [(row[0], row[1]) for row in rows] == [
        ("0.1", "U-Net"),
        ("0.1", "U-Net++"),
        ("0.2", "U-Net"),
        ("0.2", "U-Net++"),
    ]
    for row in rows:
        model = {"U-Net": "unet", "U-Net++": "unetpp"}[row[1]]
        folder = out / "runs" / f"{model}_std{row[0]}_single_seed0" / "evaluation" / "test"
        per_image = files.read_rows(folder / files.PER_IMAGE_FILE)
        assert row[header.index("Images")] == str(len(per_image))
        for metric, column, digits in (("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 4)):
            mean = files.metric_values(per_image, metric).mean()
            # test patients hold 2 images each: a bootstrap interval over patients
            assert re.match(rf"{mean:.{digits}f} \[", row[header.index(column)]), (row, metric)


def test_baselines_skips_and_figures(smoke):
    out, _ = smoke
    markdown = (out / "report.md").read_text()
    _, rows = _markdown_table(markdown, "Table VI")
    assert [row[0] for row in rows] == [
        "Noisy input",
        "Gaussian filter",
        "BM3D",
        "DnCNN",
        "U-Net",
        "U-Net (noise2noise)",
        "U-Net (r2r)",
        "U-Net++",
    ]
    noisy = files.read_rows(out / "baselines" / "noisy_std0.2" / files.PER_IMAGE_FILE)
    assert rows[0][2].startswith(f"{files.metric_values(noisy, 'psnr').mean():.2f}")
    bm3d = files.read_rows(out / "baselines" / "bm3d_std0.1" / files.PER_IMAGE_FILE)
    assert len(bm3d) == 4  # the smoke preset limits BM3D to 4 images
    assert "DataParallel needs at least 2 GPUs" in markdown
    assert "DDP+AMP needs at least 2 GPUs" in markdown
    for name in ("qualitative_std0p1.png", "training_curves.png", "metric_distributions.png"):
        assert (out / "figures" / name).is_file()
    assert np.isfinite(files.metric_values(noisy, "psnr")).all()


def _per_image(out, name: str) -> dict[str, dict[str, str]]:
    rows = files.read_rows(out / "runs" / name / "evaluation" / "test" / files.PER_IMAGE_FILE)
    return {row["image_id"]: row for row in rows}


def test_clean_free_rows_match_per_image_csvs(smoke):
    out, _ = smoke
    markdown = (out / "report.md").read_text()
    assert "## Training without clean images at the receiving site" in markdown
    assert "Clean images were used only for evaluation" in markdown
    header, rows = _markdown_table(markdown, "Clean-free training targets")
    assert [(row[0], row[1]) for row in rows] == [
        ("0.1", "clean (supervised, the paper)"),
        ("0.2", "clean (supervised, the paper)"),
        ("0.2", "noise2noise"),
        ("0.2", "r2r"),
    ]
    supervised = _per_image(out, "unet_std0.2_single_seed0")
    for row, copies in zip(rows[2:], ("2", "1")):
        mode = _per_image(out, f"unet-{row[1]}_std0.2_single_seed0")
        assert sorted(mode) == sorted(supervised)
        assert row[header.index("Copies per image")] == copies
        assert row[header.index("Images")] == str(len(mode))
        for metric, column, digits in (
            ("psnr", "PSNR gap (dB) [95% CI]", 2),
            ("ssim", "SSIM gap [95% CI]", 4),
        ):
            gap = np.mean([float(mode[i][metric]) - float(supervised[i][metric]) for i in mode])
            assert row[header.index(column)].startswith(f"{gap:+.{digits}f} ["), (row, metric)
        psnr = np.mean([float(r["psnr"]) for r in mode.values()])
        assert row[header.index("PSNR (dB)")].startswith(f"{psnr:.2f} [")
    assert rows[0][header.index("PSNR gap (dB) [95% CI]")] == "reference"
    html = (out / "report.html").read_text()
    assert "Training without clean images at the receiving site" in html
    assert "Clean-free training targets against supervised U-Net" in html


def test_privacy_audit_uses_the_receiver_of_each_level(smoke):
    out, _ = smoke
    audit = json.loads((out / "privacy" / "privacy_audit.json").read_text())
    levels = audit["levels"]
    assert [level["noise_std"] for level in levels] == [0.1, 0.2]
    for level in levels:
        receiver = level["reversal"]["receiver"]
        assert receiver["noise"]["std"] == level["noise_std"]
        assert receiver["run"].endswith(f"unet_std{level['noise_std']:g}_single_seed0")
        assert "skipped" in level["reversal"]["outsider"]
    assert "trained at std 0.1" in (out / "report.md").read_text()


def test_rerun_needs_resume_and_skips_finished_work(smoke, capsys):
    out, argv = smoke
    checkpoint = out / "runs" / "unet_std0.1_single_seed0" / "checkpoints" / "best.safetensors"
    before = checkpoint.stat().st_mtime_ns
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    assert "done earlier, skipped" in capsys.readouterr().out
    assert checkpoint.stat().st_mtime_ns == before


def test_privacy_modes_table_lists_every_mode_with_its_epsilon_and_membership(smoke):
    import csv

    out, _ = smoke
    result = json.loads((out / "privacy_modes" / "privacy_modes.json").read_text())
    modes = [row["mode"] for row in result["rows"]]
    assert modes[0].startswith("paper mode") and "noise2noise" in modes and "r2r" in modes
    assert "DP-SGD epsilon 8" in modes
    dp = result["rows"][modes.index("DP-SGD epsilon 8")]
    with open(out / "privacy_modes" / "runs" / "dp_eps8_std0.2" / "summary.csv", newline="") as handle:
        summary = next(csv.DictReader(handle))
    assert dp["epsilon"] == float(summary["dp_epsilon"]) and abs(dp["epsilon"] - 8.0) < 0.2
    assert dp["clean_images"] is False and "linkage_at_1" not in dp
    public = result["rows"][modes.index("public pretraining only (rendered default; no private data)")]
    assert "membership_auc" not in public and public["epsilon"] is None
    assert public["test_images"] == dp["test_images"]  # scored on the private test split
    assert "gap_psnr" in public and public["gap_psnr"]["images"] == dp["test_images"]
    tuned = result["rows"][modes.index("DP-SGD epsilon 8, public pretraining")]
    assert abs(tuned["epsilon"] - 8.0) < 0.2 and "gap_psnr_to_nonprivate" in tuned
    tuned_run = out / "privacy_modes" / "runs" / "dp_eps8_public_std0.2"
    config = json.loads((tuned_run / "config.json").read_text())
    assert config["config"]["init_from"].endswith("public_std0.2")
    assert all(0.0 <= row["membership_auc"] <= 1.0 for row in result["rows"] if row is not public)
    assert result["rows"][0]["linkage_at_1"] is not None and "gap_psnr" in dp
    assert len(result["verdict"]) == len(result["rows"])
    markdown = (out / "report.md").read_text()
    assert "Privacy modes side by side" in markdown and "DP-SGD epsilon 8" in markdown


def test_robustness_tests_the_unet_away_from_its_level_and_keeps_it_out_of_the_tables(smoke):
    out, _ = smoke
    markdown = (out / "report.md").read_text()
    header, rows = _markdown_table(markdown, "Robustness")
    assert [(row[0], row[1], row[2]) for row in rows] == [("U-Net", "0.2", "0.1")]
    folder = out / "runs" / "unet_std0.2_single_seed0" / "evaluation" / "test-std0.1"
    info = files.read_info(folder)
    assert info["noise"]["std"] == 0.1 and info["trained_noise_std"] == 0.2
    per_image = files.read_rows(folder / files.PER_IMAGE_FILE)
    assert row_mean(rows[0][header.index("PSNR (dB)")]) == round(
        files.metric_values(per_image, "psnr").mean(), 2
    )
    # the same model trained at 0.1 is the comparison, on the same images
    assert rows[0][header.index("Trained at the tested level (dB)")] != "n/a"
    assert (
        "## Robustness to other noise levels" in markdown and "Robustness: U-Net trained at 0.2" in markdown
    )


def row_mean(cell: str) -> float:
    return float(cell.split()[0])
