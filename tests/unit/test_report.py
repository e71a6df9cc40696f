"""The report builder on synthetic run folders: the tables hold the right rows and their numbers are
exactly the
aggregates of the per-image CSVs and the engine's summary files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from meddenoise.evaluation import files
from meddenoise.report.build import build_report
from meddenoise.report.collect import collect
from meddenoise.report.document import Heading, find_table, render_markdown
from meddenoise.report.tables import pool_runs, table_baselines

IMAGES = [f"img{i:03d}" for i in range(12)]
PATIENTS = [f"p{i // 2}" for i in range(12)]  # patients repeat: the bootstrap interval is computed too
TRAIN_SECONDS = {"single": 100.0, "dp": 64.0, "ddp+amp": 40.0}


def _write_run(folder, model, strategy, noise_std, seed):
    folder.mkdir(parents=True)
    epochs = [
        {
            "epoch": e,
            "train_loss": 0.1 / (e + 1),
            "val_loss": 0.12 / (e + 1),
            "val_psnr": 25.0 + e,
            "train_seconds": TRAIN_SECONDS[strategy] / 2,
        }
        for e in range(2)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    files.write_rows(
        folder / "summary.csv",
        ["model", "strategy", "world_size", "train_seconds", "noise_std"],
        [
            {
                "model": model,
                "strategy": strategy.split("+")[0],
                "world_size": 1 if strategy == "single" else 2,
                "train_seconds": TRAIN_SECONDS[strategy],
                "noise_std": noise_std,
            }
        ],
    )


def _write_evaluation(
    folder,
    method,
    noise_std,
    psnr_offset,
    *,
    kind="network",
    strategy="single",
    seed=0,
    run_dir=None,
    rng,
    data_folder="prepared",
):
    folder.mkdir(parents=True, exist_ok=True)
    psnr = 20.0 + psnr_offset - 10 * noise_std + rng.normal(0, 0.5, len(IMAGES))
    ssim = np.clip(0.5 + psnr_offset / 40 + rng.normal(0, 0.01, len(IMAGES)), 0, 1)
    rows = [
        {
            "image_id": i,
            "patient_id": p,
            "split": "test",
            "noise_kind": "gaussian",
            "noise_mean": 0.1,
            "noise_std": noise_std,
            "method": method,
            "model": method,
            "strategy": strategy,
            "seed": seed,
            "head": "",
            "psnr": psnr[k],
            "ssim": ssim[k],
            "ssim_win3": ssim[k] * 0.9,
            "lpips": None,
        }
        for k, (i, p) in enumerate(zip(IMAGES, PATIENTS))
    ]
    files.write_rows(folder / files.PER_IMAGE_FILE, files.PER_IMAGE_COLUMNS, rows)
    size = 16
    clean = rng.uniform(0, 1, (2, size, size))
    files.write_samples(folder / files.SAMPLES_FILE, IMAGES[:2], clean, clean + 0.1, clean + 0.01)
    info = {
        "kind": kind,
        "method": method,
        "model": method,
        "strategy": strategy,
        "seed": seed,
        "split": "test",
        "noise": {"kind": "gaussian", "mean": 0.1, "std": noise_std, "clamp": True, "seed": 0},
        "lpips": {"available": False, "reason": "no AlexNet weights in the torch hub cache"},
        "data": {"folder": data_folder, "source": "synthetic", "split_by": "patient", "counts": {"test": 12}},
    }
    if run_dir is not None:
        import os

        info["run_dir_relative"] = os.path.relpath(run_dir, folder)
    files.write_info(folder, info)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """Two noise levels; U-Net/U-Net++ on one device (two seeds for U-Net at 0.1), DP and DDP+AMP at 0.1;
    DnCNN; classical baselines."""
    tmp_path = tmp_path_factory.mktemp("grid")
    rng = np.random.default_rng(0)
    offsets = {"unet": 8.0, "unetpp": 8.5, "dncnn": 7.0}
    for noise_std in (0.1, 0.2):
        for model, offset in offsets.items():
            seeds = (0, 1) if (model == "unet" and noise_std == 0.1) else (0,)
            strategies = (
                ("single", "dp", "ddp+amp") if (noise_std == 0.1 and model != "dncnn") else ("single",)
            )
            for strategy in strategies:
                for seed in seeds if strategy == "single" else (0,):
                    run = tmp_path / "runs" / f"{model}_{noise_std}_{strategy}_{seed}"
                    _write_run(run, model, strategy, noise_std, seed)
                    _write_evaluation(
                        run / "evaluation" / "test",
                        model,
                        noise_std,
                        offset,
                        strategy=strategy,
                        seed=seed,
                        run_dir=run,
                        rng=rng,
                    )
        for method, offset in (("noisy", 0.0), ("gaussian", 4.0), ("bm3d", 6.0)):
            _write_evaluation(
                tmp_path / "baselines" / f"{method}_{noise_std}",
                method,
                noise_std,
                offset,
                kind="baseline",
                strategy="",
                seed=None,
                rng=rng,
            )
    # `evaluate --data OTHER` of one run: must stay out of the tables (other images)
    other = tmp_path / "runs" / "unet_0.1_single_0"
    _write_evaluation(other / "evaluation" / "test-other", "unet", 0.1, 30.0, run_dir=other, rng=rng,
                      data_folder="other")  # fmt: skip
    (tmp_path / "reproduce.json").write_text(
        json.dumps(
            {
                "preset": "test",
                "description": "synthetic.",
                "seeds": 1,
                "skipped": [{"what": "strategy dp at 0.2", "reason": "not planned"}],
            }
        )
    )
    return tmp_path


@pytest.fixture(scope="module")
def report(grid):
    return build_report(grid)


def _per_image(folder, metric):
    return files.metric_values(files.read_rows(folder / files.PER_IMAGE_FILE), metric)


def test_table_three_matches_the_per_image_csvs(grid, report):
    table = find_table(report.blocks, "Table III")
    assert [(row[0], row[1]) for row in table.rows] == [
        ("0.1", "U-Net"),
        ("0.1", "U-Net++"),
        ("0.2", "U-Net"),
        ("0.2", "U-Net++"),
    ]
    # one seed: the table's mean is the mean of the CSV column
    values = _per_image(grid / "runs" / "unetpp_0.2_single_0" / "evaluation" / "test", "psnr")
    cell = table.rows[3][table.columns.index("PSNR (dB)")]
    # patients repeat: the interval is the patient bootstrap, shown as [low, high], and the caption says so
    from meddenoise.metrics.stats import cluster_bootstrap_ci

    boot = cluster_bootstrap_ci(values, PATIENTS)
    assert cell == f"{values.mean():.2f} [{boot.low:.2f}, {boot.high:.2f}]"
    assert any("bootstrap resampling the 6 patients" in note for note in table.notes)
    # two seeds: the mean over images of the per-image seed average
    seed_values = [
        _per_image(grid / "runs" / f"unet_0.1_single_{s}" / "evaluation" / "test", "ssim") for s in (0, 1)
    ]
    expected = np.mean((seed_values[0] + seed_values[1]) / 2)
    assert table.rows[0][table.columns.index("SSIM")].startswith(f"{expected:.4f} [")
    assert table.rows[0][table.columns.index("Runs")] == "2"
    assert table.rows[0][table.columns.index("LPIPS")] == "n/a"
    csv_rows = files.read_rows(grid / "tables" / "table3_quality.csv")
    assert math.isclose(float(csv_rows[3]["psnr_mean"]), values.mean(), rel_tol=1e-12)


def test_tables_four_five_six_rows_and_values(grid, report):
    table4 = find_table(report.blocks, "Table IV")
    assert len(table4.rows) == 3 + 2 * 2 + 3  # 0.1: 3 models on one device + 2 models x 2 multi; 0.2: 3
    assert tuple(table4.rows[3][:4]) == ("0.1", "U-Net", "DDP+AMP", "2")
    assert table4.rows[3][-1] == "40.0"
    table5 = find_table(report.blocks, "Table V")
    unet_rows = [row for row in table5.rows if row[0] == "U-Net" and row[1] == "0.1"]
    assert [row[2] for row in unet_rows] == ["1 device", "DP", "DDP+AMP"]
    assert [row[table5.columns.index("TS (%)")] for row in unet_rows] == ["n/a", "36.00%", "60.00%"]
    # 2.5x from 2 devices is impossible for data parallelism: flagged, and left out of the summary; each
    # configuration was timed once, so no figure may enter a speed-up sentence either
    assert [row[table5.columns.index("Flags")] for row in unet_rows] == [
        "",
        "fewer than 2 timed repeats",
        "timing disturbed; fewer than 2 timed repeats",
    ]
    assert any("not planned" in note for note in table5.notes)
    table6 = find_table(report.blocks, "Table VI")
    assert table6.column("Method") == ["Noisy input", "Gaussian filter", "BM3D", "DnCNN", "U-Net", "U-Net++"]
    noisy = _per_image(grid / "baselines" / "noisy_0.2", "psnr").mean()
    assert table6.rows[0][2].startswith(f"{noisy:.2f}")
    assert "†" in table6.rows[0][2]  # 2.5+ dB worse on every image: significant after Holm
    assert table6.rows[5][1].startswith("**")  # U-Net++ is the best at 0.1


def test_report_files_are_written_with_the_same_content(grid, report):
    markdown = report.markdown.read_text()
    html = report.html.read_text()
    assert markdown == render_markdown(report.blocks)
    for caption in ("Table III", "Table IV", "Table V", "Table VI"):
        assert caption in markdown and caption in html
    assert "LPIPS (AlexNet, v0.1): not available" in markdown
    assert "split by **patient**" in markdown
    assert "Left out (evaluated on another prepared folder)" in markdown and "test-other" in markdown
    names = {path.name for path in report.figures}
    assert {
        "qualitative_std0p1.png",
        "error_maps_std0p2.png",
        "training_curves.png",
        "training_time.png",
        "metric_distributions.png",
    } <= names
    for path in report.figures:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert html.count("data:image/png;base64,") == len(report.figures)


def test_pooling_refuses_runs_on_different_images(grid):
    collection = collect(grid)
    runs = [
        e
        for e in collection.evaluations
        if e.method == "unet" and e.noise_std == 0.1 and e.strategy == "single"
    ]
    runs[1].rows = runs[1].rows[:-1]
    with pytest.raises(ValueError, match="other images"):
        pool_runs(runs)


def test_an_empty_folder_is_a_clean_error(tmp_path):
    from meddenoise.errors import MeddenoiseError

    with pytest.raises(MeddenoiseError, match="no evaluations"):
        build_report(tmp_path)


def _evaluation_rows(folder, method, psnr, *, kind, patients, images=None):
    """An evaluation folder with the given per-image PSNR (images default to IMAGES[: len(psnr)])."""
    folder.mkdir(parents=True)
    images = images or IMAGES[: len(psnr)]
    rows = [
        {"image_id": i, "patient_id": p, "split": "test", "noise_std": 0.2, "noise_mean": 0.1,
         "method": method, "model": method, "strategy": "single" if kind == "network" else "", "psnr": v,
         "ssim": 0.5 + v / 100}
        for i, p, v in zip(images, patients, psnr)
    ]  # fmt: skip
    files.write_rows(folder / files.PER_IMAGE_FILE, files.PER_IMAGE_COLUMNS, rows)
    info = {
        "kind": kind, "method": method, "model": method, "strategy": "single" if kind == "network" else "",
        "seed": 0, "split": "test", "noise": {"kind": "gaussian", "mean": 0.1, "std": 0.2, "clamp": True},
        "lpips": {"available": False, "reason": "none"},
        "data": {"folder": "prepared", "source": "folder", "split_by": "patient"},
    }  # fmt: skip
    files.write_info(folder, info)


def test_table_six_picks_the_best_on_the_images_every_method_shares(tmp_path):
    # the first 4 images are easy; BM3D saw only those, so its own mean (30.1) beats U-Net's over all 12
    # (about 27.7), yet on those same 4 images U-Net is better (31.0)
    easy = [31.0, 31.0, 31.0, 31.0]
    unet = easy + [26.5] * 8
    patients = [f"p{i}" for i in range(12)]
    _evaluation_rows(tmp_path / "u", "unet", unet, kind="network", patients=patients)
    _evaluation_rows(tmp_path / "b", "bm3d", [30.0, 30.1, 30.2, 30.1], kind="baseline", patients=patients)
    result, tests = table_baselines(collect(tmp_path))
    cells = dict(zip(result.table.column("Method"), [row[1] for row in result.table.rows]))
    assert cells["U-Net"].startswith("**") and not cells["BM3D"].startswith("**")
    assert any("4 at std 0.2 of 12" in note for note in result.table.notes)
    assert tests.rows[0]["images"] == 4 and tests.rows[0]["reference"] == "unet"


def test_single_patient_data_gives_n_a_intervals_and_no_marks(tmp_path):
    rng = np.random.default_rng(3)
    for method, offset in (("unet", 0.0), ("unetpp", 0.5)):
        values = 25 + offset + rng.normal(0, 0.3, 12)
        _evaluation_rows(tmp_path / method, method, values.tolist(), kind="network", patients=["one"] * 12)
    report = build_report(tmp_path)
    table = find_table(report.blocks, "Table III")
    assert all(cell.endswith("(CI n/a)") for cell in table.column("PSNR (dB)"))
    assert not any("*" in cell for cell in table.column("PSNR (dB)"))
    assert any("all 12 images come from one patient" in note for note in table.notes)
    assert "±0.00" not in report.markdown.read_text()


def test_training_curves_have_one_panel_per_model_and_one_line_per_noise_level(grid, report):
    from meddenoise.report.figures import curve_panels

    panels = curve_panels(collect(grid))
    assert list(panels) == ["dncnn", "unet", "unetpp"]
    for runs in panels.values():
        assert sorted(run.noise_std for run in runs) == [0.1, 0.2]  # first seed only, one line per level
        assert {run.seed for run in runs} == {0}


def test_the_report_says_plainly_when_a_classical_method_beats_the_networks(tmp_path):
    import os

    patients = [f"p{i}" for i in range(12)]
    run = tmp_path / "runs" / "unet"
    run.mkdir(parents=True)
    files.write_rows(run / "summary.csv", ["global_steps", "epochs_run", "train_seconds"], [
        {"global_steps": 360, "epochs_run": 12, "train_seconds": 10.0}
    ])  # fmt: skip
    spread = np.random.default_rng(0).normal(0, 0.2, 12)
    unet = (26.5 + spread).tolist()
    _evaluation_rows(run / "evaluation" / "test", "unet", unet, kind="network", patients=patients)
    info = files.read_info(run / "evaluation" / "test")
    info["run_dir_relative"] = os.path.relpath(run, run / "evaluation" / "test")
    files.write_info(run / "evaluation" / "test", info)
    bm3d = (27.6 + spread + np.linspace(-0.1, 0.1, 12)).tolist()
    _evaluation_rows(tmp_path / "b", "bm3d", bm3d, kind="baseline", patients=patients)
    gaussian = (26.9 + spread).tolist()
    _evaluation_rows(tmp_path / "g", "gaussian", gaussian, kind="baseline", patients=patients)
    markdown = build_report(tmp_path).markdown.read_text()
    assert (
        "**Classical methods win here.** At noise std 0.2 a classical method wins: BM3D beats U-Net"
        in markdown
    )
    assert "by +1.10 dB PSNR [" in markdown and "paired t-test, Holm p = " in markdown
    assert "ranking on 12 test images: BM3D 27.60 > Gaussian filter 26.90 > U-Net 26.50" in markdown
    assert "360 optimizer steps, 12 epochs" in markdown and "likely reason" in markdown
    summary = markdown.split("## Summary of findings", 1)[1].split("\n## ", 1)[0]
    assert "at std 0.2 BM3D beats U-Net by +1.10 dB" in summary
    assert "(#baselines-on-the-same-test-images-table-vi)" in summary


def test_a_classical_lead_in_means_alone_is_no_verdict(tmp_path):
    """BM3D ahead by 0.2 dB on 12 patients with a spread of 1 dB: the test does not reject, so neither the
    section nor the summary names a winner; both say that no difference is shown, with the p-value."""
    patients = [f"p{i}" for i in range(12)]
    rng = np.random.default_rng(1)
    unet = (26.5 + rng.normal(0, 1.0, 12)).tolist()
    bm3d = (np.array(unet) + 0.2 + rng.normal(0, 1.0, 12)).tolist()
    _evaluation_rows(tmp_path / "u", "unet", unet, kind="network", patients=patients)
    _evaluation_rows(tmp_path / "b", "bm3d", bm3d, kind="baseline", patients=patients)
    report = build_report(tmp_path)
    markdown = report.markdown.read_text()
    assert "Classical methods win here" not in markdown and "wins:" not in markdown
    assert (
        "At noise std 0.2 no difference is shown between the best network and the best classical" in markdown
    )
    summary = markdown.split("## Summary of findings", 1)[1].split("\n## ", 1)[0]
    assert "no difference between BM3D and U-Net is shown (Holm p " in summary
    # the summary is the report's first section, right after the title and the build line
    headings = [b.text for b in report.blocks if isinstance(b, Heading)]
    assert headings[1] == "Summary of findings"
    assert "One training seed per configuration" in summary
    assert '<h2 id="summary-of-findings">' in report.html.read_text()


def test_no_classical_verdict_when_a_network_wins(grid, report):
    assert "Classical methods win here" not in report.markdown.read_text()


def test_when_the_mean_test_and_wilcoxon_disagree_the_table_says_so(tmp_path):
    patients = [f"p{i}" for i in range(4)]
    _evaluation_rows(tmp_path / "u", "unet", [26.0, 27.0, 28.0, 29.0], kind="network", patients=patients)
    _evaluation_rows(tmp_path / "b", "bm3d", [25.0, 25.95, 27.05, 28.0], kind="baseline", patients=patients)
    result, tests = table_baselines(collect(tmp_path))
    psnr = next(row for row in tests.rows if row["metric"] == "psnr")
    assert psnr["t_p_holm"] < 0.05 <= psnr["wilcoxon_p_holm"]
    # 4 patients: the smallest exact Wilcoxon p is 2/16 before Holm, so it cannot decide: n/a, not a dispute
    assert psnr["wilcoxon_cannot_decide"] and not psnr["tests_disagree"]
    assert tests.table.rows[0][tests.table.columns.index("Tests agree")] == "n/a†"  # one note explains all
    assert any(note.startswith("n/a†: in 2 of 2 rows the Wilcoxon test cannot") for note in tests.table.notes)
    notes = " ".join(result.table.notes)
    assert "Tests disagree" not in notes
    assert "Wilcoxon n/a in 2 of 2 comparisons: with 4 paired units" in notes


def test_a_wilcoxon_test_that_could_decide_is_not_marked_powerless():
    from meddenoise.report.tables import add_holm

    def test(groups):
        return {"t_p": 0.001, "wilcoxon_p": 0.2, "groups": groups}

    few, many = test(7), test(12)
    add_holm([few, many])  # 2 x 2/2^7 = 0.031 < 0.05: both can decide, and both disagree with the t-test
    assert not few["wilcoxon_cannot_decide"] and few["tests_disagree"] and many["tests_disagree"]
    family = [test(7) for _ in range(54)]  # 54 x 2/2^7 = 0.84: no Wilcoxon in the family can decide
    add_holm(family)
    assert all(t["wilcoxon_cannot_decide"] and not t["tests_disagree"] for t in family)


def test_a_dp_sgd_run_is_its_own_setup_never_pooled_as_a_seed_of_the_non_private_run(tmp_path):
    from meddenoise.evaluation.runs import strategy_name

    assert strategy_name("single", "off", {"dp_epsilon": 4.0}) == "single+dp-sgd"
    assert strategy_name("single", "off", {"dp_noise_multiplier": 1.1}) == "single+dp-sgd"
    assert strategy_name("single", "off", {"dp_epsilon": 0.0}) == "single"
    rng = np.random.default_rng(4)
    for name, strategy, offset in (("plain", "single", 8.0), ("private", "single+dp-sgd", -6.0)):
        run = tmp_path / "runs" / name
        _write_run(run, "unet", "single", 0.2, 0)  # same model, noise level and seed: only DP differs
        _write_evaluation(
            run / "evaluation" / "test", "unet", 0.2, offset, strategy=strategy, run_dir=run, rng=rng
        )
    report = build_report(tmp_path)
    table_three = find_table(report.blocks, "Table III")
    assert "Runs" not in table_three.columns  # the DP-SGD run is not a second seed
    plain = _per_image(tmp_path / "runs" / "plain" / "evaluation" / "test", "psnr").mean()
    assert table_three.column("PSNR (dB)")[0].startswith(f"{plain:.2f}")
    setups = find_table(report.blocks, "Table IV").column("Setup")
    assert "1 device, DP-SGD" in setups and "1 device" in setups
    assert all("DP-SGD" not in cell for cell in find_table(report.blocks, "Table V").column("Setup"))


def test_paired_tests_that_could_not_run_are_not_said_to_agree(tmp_path):
    rng = np.random.default_rng(5)
    for method, kind, offset in (("unet", "network", 0.0), ("gaussian", "baseline", 2.0)):
        values = (25 + offset + rng.normal(0, 0.3, 12)).tolist()
        _evaluation_rows(tmp_path / method, method, values, kind=kind, patients=["one"] * 12)
    _, tests = table_baselines(collect(tmp_path))
    assert tests.table.rows and all(row[-1] == "n/a (no test)" for row in tests.table.rows)
    assert all(row[6] == "n/a" for row in tests.table.rows)  # effect size: not "nan"


def test_every_paired_test_has_one_estimand(grid, report):
    """Difference, interval, t-test and d_z of Table VI's tests come from the same per-patient differences."""
    rows = files.read_rows(grid / "tables" / "table6_paired_tests.csv")
    assert rows and all(row["test_method"] == "group-means" for row in rows)  # the grid's patients repeat
    seeded = 0
    for row in rows:
        difference, low, high = (
            float(row[k]) for k in ("mean_difference", "difference_low", "difference_high")
        )
        dz, p = float(row["effect_size"]), float(row["t_p"])
        assert low <= difference <= high and math.copysign(1, dz) == math.copysign(1, difference)
        if row.get("interval_method") == "seed-and-patient bootstrap":
            seeded += 1  # also covers training randomness: at least as wide, a claim needs both
            continue
        assert (p < 0.05) == (low > 0 or high < 0)
    assert seeded  # the two-seed U-Net at 0.1 is compared with the best method there
    notes = " ".join(find_table(report.blocks, "Paired tests behind Table VI").notes)
    assert "patient means" in notes and "resample seeds and test patients" in notes


def test_runs_recorded_with_an_absolute_data_folder_match_a_plan_written_relative(tmp_path, monkeypatch):
    import types
    from pathlib import Path

    from meddenoise.report.collect import _one_data_folder

    (tmp_path / "runs" / "quick" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)

    def evaluation(folder: str, name: str):
        return types.SimpleNamespace(info={"data": {"folder": folder}}, folder=Path(name))

    relative = evaluation("runs/quick/data", "baseline")
    absolute = evaluation(str(tmp_path / "runs" / "quick" / "data"), "network")
    other = evaluation(str(tmp_path / "elsewhere"), "other")
    kept, ignored = _one_data_folder([relative, absolute, other], "runs/quick/data")
    assert kept == [relative, absolute] and ignored == [Path("other")]


def _seeded_runs(root, method, per_seed_values, patients):
    for seed, values in enumerate(per_seed_values):
        folder = root / f"{method}_seed{seed}"
        _evaluation_rows(folder, method, list(values), kind="network", patients=patients)
        info = files.read_info(folder)
        info["seed"] = seed
        files.write_info(folder, info)


def test_with_several_seeds_a_gap_needs_an_interval_over_seeds_too(tmp_path):
    """Three seeds per network whose run means scatter by about 1 dB while each seed-averaged difference
    is steady across patients: the paired test on patient means rejects, but the seed-and-patient interval
    covers 0, so no winner is named; with steady seeds the same gap is named."""
    patients = [f"p{i}" for i in range(16)]
    rng = np.random.default_rng(7)
    base = 26 + rng.normal(0, 0.5, 16)
    shifts = {"unet": (-1.2, 0.0, 1.6), "unetpp": (0.0, 0.0, 0.0)}
    noisy_seeds = tmp_path / "noisy_seeds"
    for method, offsets in shifts.items():
        extra = 0.3 if method == "unet" else 0.0
        values = [base + extra + shift + rng.normal(0, 0.05, 16) for shift in offsets]
        _seeded_runs(noisy_seeds, method, values, patients)
    tests = {(t["better"], t["metric"]): t for t in _table_three_tests(noisy_seeds)}
    psnr = tests[("unet", "psnr")]
    assert psnr["t_p_holm"] < 0.05 and psnr["interval_method"] == "seed-and-patient bootstrap"
    assert psnr["difference_low"] < 0 < psnr["difference_high"] and psnr["seeds"] == 3
    quality = find_table(build_report(noisy_seeds).blocks, "Table III")
    assert not any(cell.endswith("*") for cell in quality.column("PSNR (dB)"))

    steady = tmp_path / "steady"
    for method, extra in (("unet", 0.3), ("unetpp", 0.0)):
        _seeded_runs(steady, method, [base + extra + rng.normal(0, 0.05, 16) for _ in range(3)], patients)
    psnr = {(t["better"], t["metric"]): t for t in _table_three_tests(steady)}[("unet", "psnr")]
    assert psnr["difference_low"] > 0
    quality = find_table(build_report(steady).blocks, "Table III")
    marked = dict(zip(quality.column("Model"), quality.column("PSNR (dB)")))
    assert marked["U-Net"].endswith("*") and not marked["U-Net++"].endswith("*")


def _table_three_tests(root):
    from meddenoise.report.tables import _paired_between_models, paper_model_configurations

    collection = collect(root)
    pooled = {key: pool_runs(runs) for key, runs in paper_model_configurations(collection).items()}
    return _paired_between_models(pooled, collection.cluster_unit())


def test_an_evaluation_at_another_noise_level_stays_out_of_the_trained_tables(tmp_path):
    """`evaluate --noise-std 0.1` of a U-Net trained at 0.2 must not enter Table III/VI as a U-Net of 0.1;
    the robustness table shows it beside the network trained at 0.1, on the same images."""
    patients = [f"p{i}" for i in range(12)]
    rng = np.random.default_rng(3)
    own = 26 + rng.normal(0, 0.4, 12)
    _evaluation_rows(tmp_path / "u02", "unet", own.tolist(), kind="network", patients=patients)
    trained_there = tmp_path / "u01"
    _evaluation_rows(trained_there, "unet", (own + 1.0 + rng.normal(0, 0.05, 12)).tolist(), kind="network",
                     patients=patients)  # fmt: skip
    away = tmp_path / "u02_at01"
    _evaluation_rows(away, "unet", (own + 0.5 + rng.normal(0, 0.05, 12)).tolist(), kind="network",
                     patients=patients)  # fmt: skip
    for folder, std, trained in ((trained_there, 0.1, None), (away, 0.1, 0.2)):
        info = files.read_info(folder)
        info["noise"]["std"] = std
        if trained is not None:
            info["trained_noise_std"] = trained
        files.write_info(folder, info)
        rows = files.read_rows(folder / files.PER_IMAGE_FILE)
        for row in rows:
            row["noise_std"] = std
        files.write_rows(folder / files.PER_IMAGE_FILE, files.PER_IMAGE_COLUMNS, rows)
    collection = collect(tmp_path)
    assert len(collection.evaluations) == 2 and [e.folder for e in collection.robustness] == [away]
    report = build_report(tmp_path)
    table = find_table(report.blocks, "Robustness")
    assert table.rows[0][:3] == ["U-Net", "0.2", "0.1"]
    difference = table.rows[0][table.columns.index("Difference (dB) [95% CI]")]
    assert float(difference.split()[0]) == pytest.approx(-0.5, abs=0.05) and "[" in difference
    quality = find_table(report.blocks, "Table III")
    assert quality.column("Images") == ["12", "12"]  # one U-Net per level, the trained ones


def test_box_plot_labels_stay_clear_of_the_row_below_and_axes_have_units(grid):
    from meddenoise.report.figures import distribution_figure

    figure = distribution_figure(collect(grid))
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    axes = figure.axes
    columns = len(axes) // 2
    for column in range(columns):
        top, bottom = axes[column], axes[columns + column]
        lowest_label = min(label.get_window_extent(renderer).y0 for label in top.get_xticklabels())
        below_top = bottom.title.get_window_extent(renderer).y1
        assert lowest_label > below_top, "x labels of the PSNR row run into the SSIM row's title"
        assert top.get_ylabel() == "PSNR (dB)" and bottom.get_ylabel() == "SSIM"


def test_html_tables_scroll_inside_their_box(report):
    html = report.html.read_text()
    assert '<div class="wide">\n<table>' in html and ".wide { overflow-x: auto" in html


def test_the_report_command_says_each_stage_and_figure_as_it_goes(grid, tmp_path, capsys):
    from meddenoise.cli import main

    assert main(["report", str(grid), "--out", str(tmp_path / "built")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("report: reading the evaluations under")
    assert any(line.startswith("report: tables and paired tests (") for line in lines)
    assert "report: figure metric_distributions.png" in lines
    assert main(["report", str(grid), "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    assert "report: figure" not in capsys.readouterr().out


def test_loss_curves_show_a_single_epoch_as_points(grid, monkeypatch):
    from meddenoise.report import figures

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda figure, path: drawn.append(figure))
    assert figures.training_curves(collect(grid), grid / "unused.png")
    loss_axes = drawn[0].axes[0::2]  # each row: loss panel, PSNR panel
    for axis in loss_axes:
        assert axis.get_lines() and all(
            line.get_marker() not in (None, "", "None") for line in axis.get_lines()
        )


def test_a_truncated_samples_file_skips_its_figure_with_the_reason_and_the_report_is_built(grid, tmp_path):
    import shutil

    copy = tmp_path / "grid"
    shutil.copytree(grid, copy)
    samples = sorted(copy.rglob("samples.npz"))
    assert samples
    for path in samples:  # every sample file cut short: the qualitative grids cannot be drawn
        path.write_bytes(path.read_bytes()[:100])
    report = build_report(copy)
    markdown = report.markdown.read_text()
    assert "Figure `qualitative_std0p1.png` skipped: BadZipFile" in markdown
    assert "metric_distributions.png" in markdown and "## Summary of findings" in markdown
