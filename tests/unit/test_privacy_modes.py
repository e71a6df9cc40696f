"""The privacy-modes table: rows from run files, paired gaps, cells and verdict sentences from the numbers."""

from __future__ import annotations

import csv

import numpy as np

from meddenoise.privacy import modes


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def fake_run(folder, psnr, summary, evaluated=False):
    rows = [{"image_id": f"i{k}", "psnr": p, "ssim": p / 40} for k, p in enumerate(psnr)]
    write_csv(folder / ("evaluation/test/per_image.csv" if evaluated else "test_metrics.csv"), rows)
    write_csv(folder / "summary.csv", [{"noise_std": 0.2, **summary}])
    return folder


def test_rows_gaps_cells_and_verdict_follow_the_numbers(tmp_path):
    rng = np.random.default_rng(0)
    base = 25 + rng.normal(0, 1, 12)
    groups = {f"i{k}": f"g{k % 4}" for k in range(12)}
    supervised = fake_run(tmp_path / "sup", base, {})
    dp = fake_run(
        tmp_path / "dp",
        base - 3 + rng.normal(0, 0.1, 12),
        {"dp_epsilon": 7.99, "dp_delta": 1e-5, "dp_unit": "image"},
    )
    federated = fake_run(tmp_path / "fed", base + rng.normal(0, 0.1, 12), {}, evaluated=True)
    audit = {"linkage": {"top1": 0.96}, "reidentification": {"skipped": "one patient"}}
    chance = {"loss_threshold": {"auc": 0.49, "auc_ci": [0.43, 0.55]}, "calibrated": {"skipped": "none"}}
    rows = [
        modes.mode_row(
            "paper",
            "clean",
            supervised,
            supervised=supervised,
            groups=groups,
            audit_level=audit,
            membership={"loss_threshold": {"auc": 0.7, "auc_ci": [0.6, 0.8]}},
        ),
        modes.mode_row(
            "DP 8",
            "dp-sgd",
            dp,
            supervised=supervised,
            groups=groups,
            audit_level=audit,
            membership=chance,
            nonprivate=supervised,
        ),
        modes.mode_row(
            "fed",
            "federated",
            federated,
            supervised=supervised,
            groups=groups,
            audit_level=audit,
            membership=None,
        ),
    ]
    paper, private, fed = rows
    assert "gap_psnr" not in paper and paper["linkage_at_1"] == 0.96 and paper["epsilon"] is None
    assert private["gap_psnr"]["high"] < 0 and abs(private["gap_psnr"]["mean"] + 3) < 0.2
    assert (
        private["gap_psnr"]["patients"] == 4 and "linkage_at_1" not in private and private["epsilon"] == 7.99
    )
    assert fed["test_images"] == 12 and fed["gap_psnr"]["low"] < 0 < fed["gap_psnr"]["high"]
    cells = modes.table_cells(private)
    assert len(cells) == len(modes.COLUMNS) and cells[-1].startswith("7.99") and cells[6] == "no"
    assert modes.table_cells(paper)[9] == "not measurable"
    sentences = modes.verdict(rows)
    assert "above chance" in sentences[0] and "no formal guarantee" in sentences[0]
    assert (
        "below supervised (interval excludes 0)" in sentences[1] and "not evidence of privacy" in sentences[1]
    )
    assert "membership (loss-threshold, best checkpoint) AUC 0.49, upper bound" not in sentences[1]  # none
    assert (
        "membership (loss-threshold, best checkpoint) AUC 0.49 [0.43, 0.55]: an attacker may" in sentences[1]
    )
    assert "chance not excluded" not in " ".join(sentences)
    assert "interval spans 0" in sentences[2]
    assert modes.markdown_table(rows).count("\n") == 2 + len(rows)


def test_a_gap_over_one_patient_has_no_interval_and_no_claim_never_a_zero_width_one(tmp_path):
    rng = np.random.default_rng(1)
    base = 25 + rng.normal(0, 1, 12)
    groups = {f"i{k}": "only" for k in range(12)}  # every test image from one patient
    supervised = fake_run(tmp_path / "sup", base, {})
    worse = fake_run(tmp_path / "worse", base - 2 + rng.normal(0, 0.1, 12), {})
    row = modes.mode_row(
        "n2n", "noise2noise", worse, supervised=supervised, groups=groups, audit_level=None, membership=None
    )
    gap = row["gap_psnr"]
    assert np.isnan(gap["low"]) and np.isnan(gap["high"]) and "one patient" in gap["note"]
    assert "[n/a]" in modes.markdown_table([row])
    sentence = modes.verdict([row])[0]
    assert "no difference is claimed" in sentence and "below supervised" not in sentence


def test_the_per_image_dp_unit_is_explained_by_the_data_actually_used():
    from meddenoise.reproduce import PRESETS
    from meddenoise.reproduce.modes_job import notes

    preset = PRESETS["smoke"]
    assert preset.dp_unit == "image"
    assert "rendered default holds one patient" in notes(preset, "default")[0]
    own = notes(preset, "folder")[0]  # e.g. DICOM with patient ids, given with --data
    assert "rendered default" not in own and "protected less than epsilon says" in own


def test_notes_name_the_dp_runs_actually_trained_and_their_own_settings():
    import dataclasses

    from meddenoise.reproduce import PRESETS
    from meddenoise.reproduce.modes_job import notes, scratch_epsilons

    quick = PRESETS["quick"]
    assert scratch_epsilons(quick) == (8.0,) and quick.dp_epsilons == (1.0, 4.0, 8.0)
    text = notes(quick, "nih-sample")[0]
    assert "epsilon 8 from scratch" in text and "epsilon 1, 4, 8 fine-tuned from the public start" in text
    assert "batch size 64" in text and "dp max grad norm 0.1" in text and "grid's recipe" in text
    # a preset without the new fields trains DP-SGD from scratch at every epsilon, with the grid's recipe
    plain = dataclasses.replace(quick, dp_scratch_epsilons=None, dp_finetune_train={})
    assert scratch_epsilons(plain) == (1.0, 4.0, 8.0)
    assert "batch size" not in notes(plain, "nih-sample")[0]


def test_membership_columns_show_lira_with_its_bound_and_both_checkpoints():
    def attack(auc, low, high, upper):
        return {"auc": auc, "auc_ci": [low, high], "auc_upper_95": upper, "tpr_at_1pct_fpr": 0.0,
                "tpr_at_lowest_fpr": 0.04, "lowest_fpr": 1 / 121, "reference_models": 2}  # fmt: skip

    best = {"loss_threshold": attack(0.52, 0.4, 0.64, 0.62), "lira": attack(0.55, 0.43, 0.68, 0.66)}
    last = {"loss_threshold": attack(0.6, 0.51, 0.7, 0.68), "lira": attack(0.7, 0.6, 0.8, 0.78), "epoch": 12}
    audit = {**best, "audited_checkpoint": "best", "checkpoints": {"best": best, "last": last}}
    row = {"mode": "m", "noise_std": 0.2, "test_psnr": 20.0, "linkable": False, "epsilon": None}
    row.update(modes.membership_columns(audit))
    assert row["membership_lira_auc_upper"] == 0.66 and row["membership_last_lira_auc"] == 0.7
    sentence = modes.verdict([row])[0]
    assert (
        "membership (LiRA, best checkpoint) AUC 0.55, upper bound 0.66 at 95%: an attacker may do this well"
        in sentence
    )
    assert "not evidence of privacy" in sentence
    assert "membership (LiRA, last checkpoint) AUC 0.70 [0.60, 0.80], above chance" in sentence
