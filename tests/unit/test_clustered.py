"""Cluster-aware intervals and paired tests: the method follows the patients, and none is made up."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from meddenoise.metrics import clustered, stats
from meddenoise.privacy.matcher import hit_rate, wilson_interval
from meddenoise.privacy.verdict import level_sentences
from meddenoise.report.tables import format_interval, interval


def _repeated(seed=0, patients=6, per_patient=8):
    rng = np.random.default_rng(seed)
    effects = rng.normal(0, 2.0, patients)  # patients differ far more than images of one patient
    values = np.repeat(effects, per_patient) + rng.normal(0, 0.2, patients * per_patient) + 25.0
    groups = np.repeat([f"p{i}" for i in range(patients)], per_patient).tolist()
    return values, groups


def test_repeated_patients_give_the_patient_bootstrap_which_is_wider_than_t():
    values, groups = _repeated()
    found = clustered.group_interval(values, groups)
    boot = stats.cluster_bootstrap_ci(values, groups)
    t = stats.mean_ci(values)
    assert found.method == "group-bootstrap" and found.groups == 6 and found.n == 48
    assert (found.low, found.high) == (boot.low, boot.high)
    assert found.high - found.low > 2 * (t.high - t.low)  # the t-interval is far too narrow here


def test_one_image_per_patient_gives_the_t_interval():
    values = np.linspace(20, 30, 11)
    found = clustered.group_interval(values, [f"p{i}" for i in range(11)])
    t = stats.mean_ci(values)
    assert found.method == "t" and (found.low, found.high) == (t.low, t.high)


def test_a_single_patient_gives_no_interval_with_the_reason_never_a_zero_width_one():
    values = np.linspace(20, 30, 12)
    found = clustered.group_interval(values, ["only"] * 12)
    assert found.method == "none" and math.isnan(found.low) and math.isnan(found.high)
    assert "one patient" in found.note
    summary = interval(values, ["only"] * 12)
    assert format_interval(summary, "psnr") == f"{values.mean():.2f} (CI n/a)"
    test = clustered.paired_test(values, values - 1.0, ["only"] * 12)
    assert test.method == "none" and math.isnan(test.t_pvalue) and "one patient" in test.note


def test_paired_test_with_repeated_patients_runs_on_patient_means():
    a, groups = _repeated(1)
    rng = np.random.default_rng(2)
    b = a - 0.3 + rng.normal(0, 0.5, a.size)
    result = clustered.paired_test(a, b, groups)
    per_patient = np.array([np.mean((a - b)[np.array(groups) == g]) for g in sorted(set(groups))])
    assert result.method == "group-means" and result.groups == 6
    assert math.isclose(result.t_pvalue, scipy_stats.ttest_1samp(per_patient, 0.0).pvalue, rel_tol=1e-9)
    assert math.isclose(result.wilcoxon_pvalue, scipy_stats.wilcoxon(per_patient).pvalue, rel_tol=1e-9)
    # one estimand: the difference, its interval and d_z are those of the per-patient differences
    t = stats.mean_ci(per_patient)
    assert (result.low, result.high) == pytest.approx((t.low, t.high), abs=1e-12)
    assert math.isclose(result.mean_difference, float(per_patient.mean()))
    assert math.isclose(result.effect_size, float(per_patient.mean() / per_patient.std(ddof=1)))
    assert math.isclose(result.mean_a - result.mean_b, result.mean_difference)
    assert math.isclose(result.image_mean_difference, float(np.mean(a - b)))


def test_a_patient_with_many_images_does_not_outweigh_the_others():
    # patient "big" has 20 images and a large positive difference; the 8 others have one image each and a
    # negative one. Image-weighted the difference is positive; per patient it is negative, and the interval,
    # tests and d_z agree with that sign (the "+0.0112 beside d_z = -0.03").
    rng = np.random.default_rng(5)
    groups = ["big"] * 20 + [f"p{i}" for i in range(8)]
    differences = np.concatenate([np.full(20, 0.5), -0.3 + rng.normal(0, 0.05, 8)])
    b = rng.normal(30, 1, differences.size)
    result = clustered.paired_test(b + differences, b, groups)
    assert result.image_mean_difference > 0 > result.mean_difference
    assert result.effect_size < 0 and result.low <= result.mean_difference <= result.high


def test_disagreement_between_the_mean_test_and_wilcoxon_is_detected():
    assert clustered.tests_disagree(0.01, 0.2) and clustered.tests_disagree(0.3, 0.04)
    assert not clustered.tests_disagree(0.01, 0.02) and not clustered.tests_disagree(math.nan, 0.01)


def test_audit_hit_rate_resamples_patients_and_shows_the_per_patient_average():
    # 40 queries from 4 patients; one patient holds 31 of them and is always found
    groups = ["big"] * 31 + ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    hits = np.array([True] * 31 + [False] * 9)
    rate = hit_rate(hits, hits, 100, (0.01, 0.05), groups)
    assert rate.interval_method == "group-bootstrap" and rate.groups == 4
    assert math.isclose(rate.top1, 31 / 40) and math.isclose(rate.per_group_top1, 0.25)
    wilson = hit_rate(hits, hits, 100, (0.01, 0.05), None)
    assert wilson.interval_method == "wilson"
    assert rate.top1_interval[1] - rate.top1_interval[0] > wilson.top1_interval[1] - wilson.top1_interval[0]
    level = {
        "noise_std": 0.2,
        "noise_mean": 0.1,
        "distortion": {
            name: {"psnr": {"mean": 14.0}, "ssim": {"mean": 0.3}}
            for name in ("obfuscated", "mean_removed", "two_copy_average")
        },
        "linkage": rate.to_dict(),
        "reidentification": {"skipped": "none"},
        "reversal": {},
    }
    text = " ".join(level_sentences(level, {}))
    assert "bootstrap over 4 patients" in text and "25.0% averaged per patient (4 patients)" in text
    single = hit_rate(hits, hits, 100, (0.01, 0.05), ["one"] * 40)
    assert math.isnan(single.top1_interval[0]) and "no 95% CI" in " ".join(
        level_sentences({**level, "linkage": single.to_dict()}, {})
    )


def test_two_or_three_repeated_patients_give_no_interval_instead_of_the_range_of_their_means():
    # with 2-3 groups the percentile bootstrap's tails are single-group resamples: its "interval" would be
    # the range of the groups' means, narrower than even the t-interval over images
    values, groups = _repeated(3, patients=3, per_patient=6)
    found = clustered.group_interval(values, groups)
    assert found.method == "none" and math.isnan(found.low) and "only 3 patients" in found.note
    test = clustered.paired_test(values, values - 1.0 + np.linspace(0, 0.1, values.size), groups)
    # the comparison runs on the 3 patient means: a t-interval with 2 degrees of freedom (wide, but a real
    # 95% interval) that agrees with the t-test on the same 3 differences
    assert test.method == "group-means" and test.groups == 3 and test.low < test.mean_difference < test.high
    assert math.isfinite(test.t_pvalue) and (test.t_pvalue < 0.05) == (test.low > 0 or test.high < 0)
    assert clustered.group_interval(*_repeated(3, patients=4, per_patient=6)).method == "group-bootstrap"


def test_equal_values_never_give_a_zero_width_interval():
    for groups in (None, ["a", "a", "b", "b", "c", "c", "d", "d"]):
        found = clustered.group_interval(np.ones(8), groups)
        assert found.method == "none" and math.isnan(found.low) and "equal" in found.note


def test_audit_hit_rate_with_every_query_linked_is_a_wilson_interval_over_patients_not_zero_width():
    groups = ["p0"] * 6 + ["p1"] * 6  # 12 queries of 2 patients, all linked (as in a real audit)
    hits = np.ones(12, dtype=bool)
    rate = hit_rate(hits, hits, 60, (1 / 60, 5 / 60), groups)
    low, high = rate.top1_interval
    assert rate.interval_method == "group-wilson" and (low, high) == pytest.approx(wilson_interval(2, 2))
    assert high - low > 0.5  # two patients are two trials, not twelve
    level = {
        "noise_std": 0.2,
        "noise_mean": 0.1,
        "distortion": {
            name: {"psnr": {"mean": 14.0}, "ssim": {"mean": 0.3}}
            for name in ("obfuscated", "mean_removed", "two_copy_average")
        },
        "linkage": rate.to_dict(),
        "reidentification": {"skipped": "none"},
        "reversal": {},
    }
    text = " ".join(level_sentences(level, {}))
    assert "100.0%-100.0%" not in text and "Wilson over 2 patients" in text


# -- one estimand per comparison: properties -----------------------------------------------------------------


@st.composite
def _paired_data(draw):
    """Random patients (1-5 images each) and a shift from patient to patient; values drawn from a seeded
    generator so they have no ties (scipy's Wilcoxon turns ties into a slow permutation test)."""
    patients = draw(st.integers(2, 12))
    sizes = draw(st.lists(st.integers(1, 5), min_size=patients, max_size=patients))
    shift = draw(st.floats(-3, 3, allow_nan=False))
    spread = draw(st.floats(0.01, 3, allow_nan=False))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    groups = [f"p{g}" for g, size in enumerate(sizes) for _ in range(size)]
    patient_shift = np.repeat(rng.normal(shift, spread, patients), sizes)
    b = rng.normal(30, 5, len(groups))
    return b + patient_shift + rng.normal(0, spread, len(groups)), b, groups


@settings(max_examples=100, deadline=None)
@given(_paired_data())
def test_interval_contains_the_difference_and_d_z_has_its_sign(data):
    a, b, groups = data
    result = clustered.paired_test(a, b, groups)
    assert result.method in ("t", "group-means")
    assert math.isclose(result.mean_a - result.mean_b, result.mean_difference, abs_tol=1e-9)
    if not math.isnan(result.low):
        assert result.low <= result.mean_difference <= result.high
    if result.mean_difference != 0 and not math.isnan(result.effect_size) and result.effect_size != 0:
        assert math.copysign(1, result.effect_size) == math.copysign(1, result.mean_difference)


@settings(max_examples=100, deadline=None)
@given(_paired_data())
def test_interval_excludes_zero_exactly_when_the_unadjusted_t_test_rejects(data):
    a, b, groups = data
    result = clustered.paired_test(a, b, groups)
    if math.isnan(result.low) or abs(result.t_pvalue - 0.05) < 1e-9:
        return  # no spread, or p on the boundary itself (floating-point rounding decides)
    excludes_zero = result.low > 0 or result.high < 0
    assert excludes_zero == (result.t_pvalue < 0.05)


def test_captions_say_why_images_are_treated_as_independent():
    known = clustered.describe_intervals(["t"], "patient")
    unknown = clustered.describe_intervals(["t"], "patient", ids_unknown=True)
    assert "every patient has one image" in known and "every patient has one image" not in unknown
    assert "patient ids are unknown" in unknown and "too narrow" in unknown
    assert "--group-similar" in unknown  # the way to cluster by suspected same-patient groups
    tests = clustered.describe_tests(["t"], ids_unknown=True)
    assert "one per patient" not in tests and "too narrow" in tests
    assert "patient means" in clustered.describe_tests(["group-means"])
    assert "not training randomness" in clustered.describe_seeds([1, 1])
    assert "3 seeds" in clustered.describe_seeds([3, 3]) and clustered.describe_seeds([]) == ""
    assert "resample seeds and test patients" in clustered.describe_seeds([3, 3])
