"""Membership-inference statistics: AUC, TPR at a low false-positive rate, calibration, patient bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from meddenoise.privacy import membership


def test_auc_counts_ordered_pairs_and_half_the_ties():
    assert membership.roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert membership.roc_auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert membership.roc_auc(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == 0.5
    assert membership.roc_auc(np.array([2.0]), np.array([2.0])) == 0.5


def test_tpr_at_low_fpr_uses_the_strictest_threshold_that_keeps_the_rate():
    nonmembers = np.arange(200, dtype=float)  # 1% of 200 = 2 false positives allowed: threshold 197
    members = np.array([196.0, 197.5, 198.5, 250.0])
    tpr, achieved = membership.tpr_at_fpr(members, nonmembers)
    assert achieved == pytest.approx(0.01) and tpr == 0.75
    # fewer than 100 non-members: no false positive is allowed, the threshold is the top non-member
    tpr, achieved = membership.tpr_at_fpr(np.array([5.0, 9.5, 11.0]), np.arange(10, dtype=float))
    assert achieved == 0.0 and tpr == pytest.approx(2 / 3)


def test_calibration_removes_per_image_difficulty():
    rng = np.random.default_rng(0)
    difficulty = rng.lognormal(0.0, 1.0, 400)  # some images are simply harder to denoise
    is_member = np.arange(400) < 200
    target = difficulty * np.where(is_member, 0.8, 1.0)  # members reconstructed 20% better
    reference = difficulty * rng.lognormal(0.0, 0.05, (4, 400))
    raw = membership.roc_auc(-target[is_member], -target[~is_member])
    scores = membership.calibrated_scores(target, reference)
    calibrated = membership.roc_auc(scores[is_member], scores[~is_member])
    assert raw < 0.7 and calibrated > 0.95


def test_the_patient_bootstrap_interval_covers_the_estimate_and_widens_with_fewer_patients():
    rng = np.random.default_rng(1)
    members, nonmembers = rng.normal(0.3, 1, 120), rng.normal(0, 1, 120)
    many = [f"p{i % 40}" for i in range(120)]
    few = [f"p{i % 4}" for i in range(120)]
    auc = membership.roc_auc(members, nonmembers)
    low, high = membership.patient_bootstrap_auc(members, many, nonmembers, many, resamples=300)
    assert low < auc < high
    low_few, high_few = membership.patient_bootstrap_auc(members, few, nonmembers, few, resamples=300)
    assert high_few - low_few > high - low


def test_an_auc_over_one_held_out_patient_has_no_interval_and_claims_no_side_of_chance():
    from meddenoise.privacy import modes
    from meddenoise.privacy.membership import attack_summary, markdown_lines

    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(0, 1, 18), rng.normal(-1, 1, 6)
    summary = attack_summary(members, [f"m{i % 3}" for i in range(18)], nonmembers, ["only"] * 6, seed=0)
    assert all(math.isnan(v) for v in summary["auc_ci"]) and "only 1 patient(s)" in summary["auc_note"]
    result = {
        "run": "r",
        "score": "mse",
        "members": {"images": 18, "patients": 3, "split": "train"},
        "nonmembers": {"images": 6, "patients": 1, "split": "test"},
        "loss_threshold": summary,
        "calibrated": {"skipped": "none asked"},
    }
    assert "no 95% interval: only 1 patient(s)" in "\n".join(markdown_lines(result))
    row = {"mode": "m", "noise_std": 0.2, "test_psnr": 20.0, "linkable": False, "epsilon": None}
    row.update(membership_auc=summary["auc"], membership_auc_ci=summary["auc_ci"])
    sentence = modes.verdict([row])[0]
    assert "below chance" not in sentence and "above chance" not in sentence and "no interval" in sentence


def test_too_few_nonmembers_report_the_low_fpr_rate_as_unavailable():
    rng = np.random.default_rng(1)
    few = membership.attack_summary(rng.normal(size=12), ["a", "b", "c", "d"] * 3, rng.normal(size=40),
                                    [f"p{i % 8}" for i in range(40)], seed=0)  # fmt: skip
    assert "40 non-member images cannot resolve a 1% false-positive rate" in few["fpr_note"]
    enough = membership.attack_summary(rng.normal(size=12), ["a", "b", "c", "d"] * 3, rng.normal(size=200),
                                       [f"p{i % 8}" for i in range(200)], seed=0)  # fmt: skip
    assert enough["fpr_note"] == ""
    result = {
        "run": "RUN", "score": "error", "members": {"images": 12, "patients": 4, "split": "train"},
        "nonmembers": {"images": 40, "patients": 8, "split": "test"},
        "loss_threshold": few, "calibrated": {"skipped": "no reference models"},
    }  # fmt: skip
    text = "\n".join(membership.markdown_lines(result))
    assert "TPR at 1% FPR n/a (40 non-member images cannot resolve" in text
