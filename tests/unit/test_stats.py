"""Statistics against scipy and against the textbook definitions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from meddenoise.metrics import stats


def _sample(n: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(30.0, 2.0, size=n)


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_mean_ci_matches_scipy_t_interval(confidence):
    values = _sample()
    result = stats.mean_ci(values, confidence)
    low, high = scipy_stats.t.interval(
        confidence, df=values.size - 1, loc=values.mean(), scale=scipy_stats.sem(values)
    )
    assert result.method == "t" and result.n == values.size
    assert result.mean == pytest.approx(values.mean(), abs=1e-12)
    assert result.low == pytest.approx(low, abs=1e-10) and result.high == pytest.approx(high, abs=1e-10)
    assert result.half_width == pytest.approx((high - low) / 2, abs=1e-10)


def test_mean_ci_single_value_and_bad_input():
    single = stats.mean_ci([3.0])
    assert single.mean == 3.0 and math.isnan(single.low) and math.isnan(single.high)
    with pytest.raises(ValueError, match="not finite"):
        stats.mean_ci([1.0, math.inf])
    with pytest.raises(ValueError, match="at least one"):
        stats.mean_ci([])
    with pytest.raises(ValueError, match="confidence"):
        stats.mean_ci([1.0, 2.0], confidence=95)


def test_cluster_bootstrap_is_seeded_and_resamples_whole_patients():
    rng = np.random.default_rng(3)
    patient_effects = rng.normal(0, 3.0, size=12)
    patients = np.repeat(np.arange(12), 5)
    values = 30 + patient_effects[patients] + rng.normal(0, 0.2, size=patients.size)
    first = stats.cluster_bootstrap_ci(values, patients, n_resamples=4000, seed=7)
    again = stats.cluster_bootstrap_ci(values, patients, n_resamples=4000, seed=7)
    other_seed = stats.cluster_bootstrap_ci(values, patients, n_resamples=4000, seed=8)
    assert first == again and first != other_seed
    assert first.method == "cluster-bootstrap" and first.n_clusters == 12 and first.n == 60
    assert first.low < values.mean() < first.high
    # Images of one patient are nearly copies: the honest interval is about as wide as one made from the 12
    # patient means, and wider than the naive t-interval over 60 "independent" images by about the design
    # effect sqrt(1 + (5 - 1) * intra-class correlation) ~ 2.2.
    naive = stats.mean_ci(values)
    per_patient = stats.mean_ci([values[patients == p].mean() for p in range(12)])
    assert first.high - first.low > 1.7 * (naive.high - naive.low)
    assert 0.6 < (first.high - first.low) / (per_patient.high - per_patient.low) < 1.3


def test_cluster_bootstrap_with_singleton_clusters_agrees_with_a_plain_bootstrap():
    values = _sample(n=30, seed=5)
    ours = stats.cluster_bootstrap_ci(values, [f"p{i}" for i in range(30)], n_resamples=20_000, seed=1)
    plain = scipy_stats.bootstrap(
        (values,), np.mean, n_resamples=20_000, method="percentile", random_state=np.random.default_rng(2)
    ).confidence_interval
    assert ours.low == pytest.approx(plain.low, abs=0.05) and ours.high == pytest.approx(plain.high, abs=0.05)


def test_summarize_picks_bootstrap_only_when_patients_repeat():
    values = _sample(n=6)
    assert stats.summarize(values).method == "t"
    assert stats.summarize(values, patient_ids=list("abcdef")).method == "t"
    assert stats.summarize(values, patient_ids=list("aabbcc"), n_resamples=500).method == "cluster-bootstrap"
    with pytest.raises(ValueError, match="cluster labels"):
        stats.cluster_bootstrap_ci(values, list("abc"))


def test_paired_comparison_matches_scipy():
    rng = np.random.default_rng(11)
    a = rng.normal(32.0, 1.5, size=25)
    b = a - 0.4 + rng.normal(0, 0.5, size=25)
    result = stats.paired_comparison(a, b)
    t_reference = scipy_stats.ttest_rel(a, b)
    w_reference = scipy_stats.wilcoxon(a, b)
    assert result.t_statistic == pytest.approx(t_reference.statistic, rel=1e-12)
    assert result.t_pvalue == pytest.approx(t_reference.pvalue, rel=1e-10)
    assert result.wilcoxon_statistic == pytest.approx(w_reference.statistic)
    assert result.wilcoxon_pvalue == pytest.approx(w_reference.pvalue, rel=1e-10)
    differences = a - b
    assert result.mean_difference == pytest.approx(differences.mean())
    assert result.cohens_dz == pytest.approx(differences.mean() / differences.std(ddof=1))
    low, high = scipy_stats.t.interval(0.95, 24, loc=differences.mean(), scale=scipy_stats.sem(differences))
    assert (result.difference_low, result.difference_high) == pytest.approx((low, high))


def test_rank_biserial_by_hand():
    # |d| ranks: 0.5 -> 1, 1 -> 2, -2 -> 3, 3 -> 4; zero dropped. R+ = 1 + 2 + 4 = 7, R- = 3.
    assert stats.rank_biserial(np.array([1.0, -2.0, 3.0, 0.5, 0.0])) == pytest.approx((7 - 3) / 10)
    assert stats.rank_biserial(np.array([1.0, 2.0])) == 1.0
    assert stats.rank_biserial(np.zeros(3)) == 0.0


def test_paired_comparison_of_identical_and_constant_shift():
    a = _sample(n=10)
    same = stats.paired_comparison(a, a.copy())
    assert same.t_pvalue == 1.0 and same.wilcoxon_pvalue == 1.0 and same.cohens_dz == 0.0
    shifted = stats.paired_comparison(a + 1.0, a)
    assert shifted.mean_difference == pytest.approx(1.0) and shifted.rank_biserial == 1.0
    assert shifted.wilcoxon_pvalue < 0.01
    with pytest.raises(ValueError, match="same images"):
        stats.paired_comparison(a, a[:-1])


def _holm_by_definition(pvalues: np.ndarray, alpha: float) -> np.ndarray:
    """Reject the k smallest p-values where k is the first 1-based rank with p_(k) > alpha / (m - k + 1),
    minus 1."""
    m = pvalues.size
    order = np.argsort(pvalues, kind="stable")
    reject = np.zeros(m, dtype=bool)
    for rank, index in enumerate(order):
        if pvalues[index] > alpha / (m - rank):
            break
        reject[index] = True
    return reject


def test_holm_matches_the_definition_over_many_families_and_levels():
    rng = np.random.default_rng(0)
    for size, alpha in itertools.product([1, 2, 5, 12], [0.01, 0.05, 0.2]):
        for _ in range(20):
            pvalues = np.concatenate([rng.uniform(0, 0.05, size // 2), rng.uniform(0, 1, size - size // 2)])
            rng.shuffle(pvalues)
            np.testing.assert_array_equal(
                stats.holm_reject(pvalues, alpha), _holm_by_definition(pvalues, alpha)
            )


def test_holm_adjusted_values_by_hand():
    # sorted 0.01, 0.02, 0.03, 0.5 (m = 4): 0.04, 0.06, max(0.06, 0.06), min(1, max(0.06, 0.5))
    adjusted = stats.holm_adjust([0.5, 0.01, 0.03, 0.02])
    np.testing.assert_allclose(adjusted, [0.5, 0.04, 0.06, 0.06])
    with_nan = stats.holm_adjust([0.01, math.nan, 0.04])
    np.testing.assert_allclose(with_nan, [0.02, math.nan, 0.04])
    assert not stats.holm_reject([math.nan])[0]
    with pytest.raises(ValueError):
        stats.holm_adjust([1.5])


# -- seeds and patients: the hierarchical bootstrap ----------------------------------------------------------


def _seeded_gaps(seeds=5, patients=20, per_patient=3, seed_sd=0.15, seed=0):
    rng = np.random.default_rng(seed)
    patient_effect = np.repeat(rng.normal(0, 0.1, patients), per_patient)
    seed_effect = rng.normal(0, seed_sd, seeds)[:, None]
    noise = rng.normal(0, 0.05, (seeds, patients * per_patient))
    groups = np.repeat([f"p{i}" for i in range(patients)], per_patient)
    return -0.2 + seed_effect + patient_effect + noise, groups


def test_hierarchical_bootstrap_is_seeded_and_its_estimate_weighs_patients_equally():
    gaps, groups = _seeded_gaps()
    first = stats.hierarchical_bootstrap_ci(gaps, groups, n_resamples=3000, seed=1)
    again = stats.hierarchical_bootstrap_ci(gaps, groups, n_resamples=3000, seed=1)
    assert first == again and first.method == "seed-patient-bootstrap"
    assert first.n_seeds == 5 and first.n_clusters == 20 and first.n == 60
    per_patient = np.array([[row[groups == g].mean() for g in np.unique(groups)] for row in gaps])
    assert first.mean == pytest.approx(per_patient.mean(), abs=1e-12)
    assert first.low < first.mean < first.high


def test_hierarchical_bootstrap_covers_training_randomness_the_patient_bootstrap_misses():
    gaps, groups = _seeded_gaps(seed_sd=0.3)
    both = stats.hierarchical_bootstrap_ci(gaps, groups, n_resamples=4000)
    # one seed alone: only patients vary, so the interval is far narrower than the spread between seeds
    one_seed = stats.hierarchical_bootstrap_ci(gaps[:1], groups, n_resamples=4000)
    assert one_seed.n_seeds == 1
    assert (both.high - both.low) > 3 * (one_seed.high - one_seed.low)
    # no seed effect: the two-level interval is close to the patient-level one
    calm, groups = _seeded_gaps(seed_sd=0.0)
    two_level = stats.hierarchical_bootstrap_ci(calm, groups, n_resamples=4000)
    patients = stats.cluster_bootstrap_ci(calm.mean(axis=0), groups, n_resamples=4000)
    assert 0.6 < (two_level.high - two_level.low) / (patients.high - patients.low) < 1.5


def test_hierarchical_bootstrap_refuses_bad_input():
    with pytest.raises(ValueError, match="cluster labels"):
        stats.hierarchical_bootstrap_ci(np.zeros((2, 4)), ["a", "b"])
    with pytest.raises(ValueError, match="not finite"):
        stats.hierarchical_bootstrap_ci([[0.0, math.nan]])
    single_row = stats.hierarchical_bootstrap_ci([0.1, 0.3, 0.2, 0.5], n_resamples=500)
    assert single_row.n_seeds == 1 and single_row.n_clusters == 4


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 40), st.floats(-5, 5, allow_nan=False), st.integers(0, 2**32 - 1))
def test_paired_comparison_interval_test_and_d_z_agree_on_one_estimand(n, shift, seed):
    rng = np.random.default_rng(seed)  # continuous values: no ties, so scipy's Wilcoxon stays fast
    b = rng.normal(25, 3, n)
    a = b + shift + rng.normal(0, rng.uniform(0.01, 5), n)
    result = stats.paired_comparison(a, b)
    if not math.isnan(result.difference_low):
        assert result.difference_low <= result.mean_difference <= result.difference_high
        if abs(result.t_pvalue - 0.05) > 1e-9 and result.difference_low < result.difference_high:
            excludes_zero = result.difference_low > 0 or result.difference_high < 0
            assert excludes_zero == (result.t_pvalue < 0.05)
    if result.cohens_dz != 0 and result.mean_difference != 0:
        assert math.copysign(1, result.cohens_dz) == math.copysign(1, result.mean_difference)
