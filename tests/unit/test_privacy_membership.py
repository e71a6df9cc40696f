"""Membership-inference statistics: AUC, TPR at a low false-positive rate, offline LiRA, patient bootstrap,
and wording that never turns a non-rejection into privacy."""

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


def test_lira_removes_per_image_difficulty():
    rng = np.random.default_rng(0)
    difficulty = rng.lognormal(0.0, 1.0, 400)  # some images are simply harder to denoise
    is_member = np.arange(400) < 200
    target = difficulty * np.where(is_member, 0.8, 1.0)  # members reconstructed 20% better
    reference = difficulty * rng.lognormal(0.0, 0.05, (4, 400))
    raw = membership.roc_auc(-target[is_member], -target[~is_member])
    scores = membership.lira_scores(target, reference)
    calibrated = membership.roc_auc(scores[is_member], scores[~is_member])
    assert raw < 0.7 and calibrated > 0.95


def test_the_patient_bootstrap_interval_covers_the_estimate_and_widens_with_fewer_patients():
    rng = np.random.default_rng(1)
    members, nonmembers = rng.normal(0.3, 1, 120), rng.normal(0, 1, 120)
    many = [f"p{i % 40}" for i in range(120)]
    few = [f"p{i % 4}" for i in range(120)]
    auc = membership.roc_auc(members, nonmembers)

    def interval(groups):  # attack_summary's percentile interval, from fewer resamples
        aucs = membership.bootstrap_aucs(members, groups, nonmembers, groups, resamples=300)
        return np.quantile(aucs, [0.025, 0.975])

    low, high = interval(many)
    assert low < auc < high
    low_few, high_few = interval(few)
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


def test_lira_is_the_one_sided_gaussian_likelihood_of_the_reference_models():
    from scipy.stats import norm

    reference = np.exp(-np.array([[1.0, 2.0], [1.2, 2.4], [0.8, 1.6]]))  # s = -log e per model and image
    target = np.exp(-np.array([1.5, 2.0]))
    mu = np.array([1.0, 2.0])
    pooled = np.sqrt(np.mean([np.var([1.0, 1.2, 0.8], ddof=1), np.var([2.0, 2.4, 1.6], ddof=1)]))
    expected = norm.cdf((np.array([1.5, 2.0]) - mu) / pooled)
    scores = membership.lira_scores(target, reference)
    assert np.allclose(1 / (1 + np.exp(-scores)), expected)  # log odds of Lambda
    per_image = membership.lira_scores(target, reference, per_example_min=3)
    assert np.allclose(1 / (1 + np.exp(-per_image)), norm.cdf((np.array([1.5, 2.0]) - mu) / [0.2, 0.4]))
    # a strongly memorised image keeps its rank (Lambda itself would round to 1)
    far = membership.lira_scores(np.exp(-np.array([40.0, 60.0])), reference[:, :1].repeat(2, 1))
    assert far[1] > far[0] > 0


def test_the_summary_carries_the_upper_bound_and_the_tpr_at_the_lowest_resolvable_fpr():
    rng = np.random.default_rng(3)
    members, nonmembers = rng.normal(0.2, 1, 60), rng.normal(0, 1, 50)
    groups_m, groups_n = [f"m{i % 20}" for i in range(60)], [f"n{i % 25}" for i in range(50)]
    summary = membership.attack_summary(members, groups_m, nonmembers, groups_n, seed=0)
    low, high = summary["auc_ci"]
    assert low < summary["auc_upper_95"] < high  # one-sided 95% lies inside the two-sided 95%
    assert (
        summary["lowest_fpr"] == pytest.approx(1 / 50)
        and "1/50 non-member images" in summary["lowest_fpr_unit"]
    )
    threshold = np.sort(nonmembers)[-2]  # one false positive allowed
    assert summary["tpr_at_lowest_fpr"] == pytest.approx(np.mean(members > threshold))


@pytest.mark.parametrize("interval", [(0.40, 0.70), (0.30, 0.45), (math.nan, math.nan)])
def test_a_non_rejection_is_never_worded_as_privacy(interval):
    entry = {
        "auc": 0.55,
        "auc_ci": list(interval),
        "auc_upper_95": 0.66 if not math.isnan(interval[0]) else math.nan,
    }
    sentence = membership.interpretation(entry)
    assert "not evidence of privacy" in sentence
    for claim in ("is private", "no membership leak", "chance not excluded", "at chance", "protected"):
        assert claim not in sentence
    if interval[0] == 0.40:
        assert "upper bound 0.66 at 95%" in sentence and "an attacker may do this well" in sentence


def test_detected_membership_says_so():
    entry = {"auc": 0.8, "auc_ci": [0.7, 0.9], "auc_upper_95": 0.88}
    assert "above chance: membership is detectable" in membership.interpretation(entry)
