"""The clean-free section of the report on synthetic evaluation folders: every cell is the aggregate of the
per-image CSVs (gap = mean paired difference with its t-interval, Wilcoxon p Holm-corrected over the table),
the copies come from the evaluation records, and the section is absent without clean-free runs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from meddenoise.evaluation import files
from meddenoise.report.clean_free import TABLE_CAPTION, clean_free_section, table_clean_free
from meddenoise.report.collect import collect
from meddenoise.report.document import Paragraph, render_markdown

IMAGES = [f"img{i:02d}" for i in range(10)]


def _write(folder, method, noise_std, psnr, *, kind="network", seed=0, copies=None, patients=None, data=None):
    folder.mkdir(parents=True)
    ssim = np.clip(0.02 * psnr, 0, 1)
    rows = [
        {
            "image_id": image,
            "patient_id": patients[k] if patients else f"p{k}",
            "split": "test",
            "noise_kind": "gaussian",
            "noise_mean": 0.1,
            "noise_std": noise_std,
            "method": method,
            "model": method.partition("+")[0],
            "strategy": "single" if kind == "network" else "",
            "seed": seed,
            "head": "",
            "psnr": psnr[k],
            "ssim": ssim[k],
            "ssim_win3": ssim[k],
            "lpips": None,
        }
        for k, image in enumerate(IMAGES)
    ]
    files.write_rows(folder / files.PER_IMAGE_FILE, files.PER_IMAGE_COLUMNS, rows)
    info = {
        "kind": kind,
        "method": method,
        "strategy": "single" if kind == "network" else "",
        "seed": seed if kind == "network" else None,
        "split": "test",
        "noise": {"kind": "gaussian", "mean": 0.1, "std": noise_std, "clamp": True, "seed": 0},
        "data": data or {"folder": "prepared", "source": "synthetic"},
    }
    if copies is not None:
        info["target_copies"] = copies
        info["target_options"] = ["gamma=1"] if "neighbor" in method else []
    files.write_info(folder, info)
    return psnr, ssim


@pytest.fixture()
def grid(tmp_path):
    rng = np.random.default_rng(3)
    values = {}
    for level in (0.1, 0.2):
        values[("noisy", level)] = _write(
            tmp_path / f"noisy_{level}", "noisy", level, 15 + rng.normal(0, 0.3, 10), kind="baseline"
        )
    # Supervised at 0.1 with two seeds: the gap uses the per-image mean over the seeds.
    seed_psnr = [25 + rng.normal(0, 0.5, 10) for _ in range(2)]
    for seed, psnr in enumerate(seed_psnr):
        _write(tmp_path / f"unet_0.1_{seed}", "unet", 0.1, psnr, seed=seed, copies=1)
    values[("unet", 0.1)] = (
        np.mean(seed_psnr, axis=0),
        np.clip(0.02 * np.array(seed_psnr), 0, 1).mean(axis=0),
    )
    values[("unet", 0.2)] = _write(tmp_path / "unet_0.2", "unet", 0.2, 23 + rng.normal(0, 0.5, 10), copies=1)
    values[("unet+noise2noise", 0.1)] = _write(
        tmp_path / "n2n_0.1", "unet+noise2noise", 0.1, 24.5 + rng.normal(0, 0.5, 10), copies=2
    )
    values[("unet+neighbor2neighbor", 0.2)] = _write(
        tmp_path / "nb_0.2", "unet+neighbor2neighbor", 0.2, 21 + rng.normal(0, 0.5, 10), copies=1
    )
    # An older evaluation without the copies: shown as not recorded, not guessed.
    values[("unet+r2r", 0.2)] = _write(tmp_path / "r2r_0.2", "unet+r2r", 0.2, 22 + rng.normal(0, 0.5, 10))
    return tmp_path, values


def test_rows_and_values_are_the_per_image_aggregates(grid):
    root, values = grid
    result = table_clean_free(collect(root))
    table = result.table
    assert table.caption == TABLE_CAPTION
    assert [(row[0], row[1]) for row in table.rows] == [
        ("0.1", "clean (supervised, the paper)"),
        ("0.1", "noise2noise"),
        ("0.2", "clean (supervised, the paper)"),
        ("0.2", "neighbor2neighbor"),
        ("0.2", "r2r"),
    ]
    assert table.column("Copies per image") == ["1", "2", "1", "1", "not recorded"]
    modes = [("unet+noise2noise", 0.1), ("unet+neighbor2neighbor", 0.2), ("unet+r2r", 0.2)]
    raw_p = []
    for method, level in modes:
        for metric_index in (0, 1):
            difference = values[(method, level)][metric_index] - values[("unet", level)][metric_index]
            raw_p.append(scipy_stats.wilcoxon(difference).pvalue)
    order = np.argsort(raw_p)
    holm = np.empty(len(raw_p))
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(raw_p) - rank) * raw_p[index]))
        holm[index] = running
    by_method = {(row["method"], row["noise_std"]): row for row in result.rows}
    for number, (method, level) in enumerate(modes):
        row = by_method[(method, level)]
        difference = values[(method, level)][0] - values[("unet", level)][0]
        low, high = scipy_stats.t.interval(
            0.95, len(difference) - 1, loc=difference.mean(), scale=scipy_stats.sem(difference)
        )
        assert row["psnr_gap"] == pytest.approx(difference.mean())
        if level == 0.1:  # supervised has two seeds there: the interval resamples seeds and patients
            assert row["psnr_gap_low"] < row["psnr_gap"] < row["psnr_gap_high"]
            assert (row["psnr_gap_low"], row["psnr_gap_high"]) != pytest.approx((low, high))
        else:
            assert (row["psnr_gap_low"], row["psnr_gap_high"]) == pytest.approx((low, high))
        assert row["psnr_wilcoxon_p_holm"] == pytest.approx(holm[2 * number])
        assert row["ssim_wilcoxon_p_holm"] == pytest.approx(holm[2 * number + 1])
        gain = values[(method, level)][0] - values[("noisy", level)][0]
        assert row["psnr_gain_over_noisy"] == pytest.approx(gain.mean())
        shown = next(r for r in table.rows if r[0] == f"{level:g}" and r[1] == method.partition("+")[2])
        if level == 0.1:
            low, high = row["psnr_gap_low"], row["psnr_gap_high"]
        assert shown[table.columns.index("PSNR gap (dB) [95% CI]")] == (
            f"{difference.mean():+.2f} [{low:+.2f}, {high:+.2f}]"
        )
        assert shown[table.columns.index("PSNR (dB)")].startswith(
            f"{values[(method, level)][0].mean():.2f} (±"
        )
    assert by_method[("unet", 0.1)]["psnr_mean"] == pytest.approx(values[("unet", 0.1)][0].mean())


def test_section_says_clean_images_are_for_evaluation_only(grid):
    root, _ = grid
    collection = collect(root)
    blocks = clean_free_section(collection, table_clean_free(collection))
    text = render_markdown(blocks)
    assert text.startswith("## Training without clean images at the receiving site")
    assert "Clean images were used only for evaluation" in text
    assert any(isinstance(b, Paragraph) and "neighbor2neighbor: gamma=1" in b.text for b in blocks)


def test_no_clean_free_run_means_no_section(tmp_path):
    rng = np.random.default_rng(0)
    _write(tmp_path / "unet", "unet", 0.1, 25 + rng.normal(0, 0.5, 10), copies=1)
    collection = collect(tmp_path)
    assert table_clean_free(collection) is None
    assert clean_free_section(collection, None) == []


def test_the_section_states_the_checkpoint_rule_each_run_recorded(tmp_path):
    import os

    rng = np.random.default_rng(1)
    _write(tmp_path / "unet" / "evaluation", "unet", 0.1, 25 + rng.normal(0, 0.5, 10), copies=1)
    for method, rule in (("unet+noise2noise", "released"), ("unet+r2r", "clean")):
        run = tmp_path / method
        run.mkdir()
        files.write_rows(
            run / "summary.csv", ["selection", "global_steps"], [{"selection": rule, "global_steps": 9}]
        )
        folder = run / "evaluation"
        _write(folder, method, 0.1, 24 + rng.normal(0, 0.5, 10), copies=1)
        info = files.read_info(folder)
        files.write_info(folder, {**info, "run_dir_relative": os.path.relpath(run, folder)})
    collection = collect(tmp_path)
    text = render_markdown(clean_free_section(collection, table_clean_free(collection)))
    assert (
        "U-Net (noise2noise): the epoch with the lowest loss of the mode's own target on held-out released"
        in text
    )
    assert "U-Net (r2r): the epoch with the lowest validation loss against clean validation images" in text
    assert "best validation PSNR" not in text


def test_gap_interval_and_tests_share_one_estimand_when_patients_repeat(tmp_path):
    # p0 holds 6 of the 10 images and gains 1 dB; the 4 other patients lose about 0.5 dB. Image-weighted the
    # gap is positive; per patient it is negative, and the interval, the t-test and the caption say so.
    patients = ["p0"] * 6 + ["p1", "p2", "p3", "p4"]
    rng = np.random.default_rng(4)
    supervised = 25 + rng.normal(0, 0.5, 10)
    mode = supervised + np.concatenate([np.full(6, 1.0), -0.5 + rng.normal(0, 0.05, 4)])
    _write(tmp_path / "unet", "unet", 0.1, supervised, copies=1, patients=patients)
    _write(tmp_path / "n2n", "unet+noise2noise", 0.1, mode, copies=2, patients=patients)
    result = table_clean_free(collect(tmp_path))
    row = next(r for r in result.rows if r["method"] == "unet+noise2noise")
    per_patient = np.array(
        [(mode - supervised)[np.array(patients) == p].mean() for p in sorted(set(patients))]
    )
    assert np.mean(mode - supervised) > 0 > row["psnr_gap"]
    assert row["psnr_gap"] == pytest.approx(per_patient.mean())
    assert row["psnr_gap_low"] <= row["psnr_gap"] <= row["psnr_gap_high"]
    assert row["psnr_t_p"] == pytest.approx(scipy_stats.ttest_1samp(per_patient, 0.0).pvalue)
    assert (row["psnr_t_p"] < 0.05) == (row["psnr_gap_high"] < 0 or row["psnr_gap_low"] > 0)
    notes = " ".join(result.table.notes)
    assert "on patient means" in notes and "not training randomness" in notes


def test_unknown_patient_ids_are_said_to_make_intervals_too_narrow(tmp_path):
    rng = np.random.default_rng(6)
    data = {"folder": "prepared", "source": "folder", "split_unit": "image: patient ids unknown"}
    _write(tmp_path / "unet", "unet", 0.1, 25 + rng.normal(0, 0.5, 10), copies=1, data=data)
    _write(tmp_path / "n2n", "unet+noise2noise", 0.1, 24 + rng.normal(0, 0.5, 10), copies=2, data=data)
    notes = " ".join(table_clean_free(collect(tmp_path)).table.notes)
    assert "every patient has one image" not in notes and "one per patient" not in notes
    assert "patient ids are unknown" in notes and "too narrow" in notes
