"""Statistics for per-image metric tables: confidence intervals, paired comparisons, Holm correction.

All functions take plain sequences / numpy arrays of per-image values and return small dataclasses (use
`dataclasses.asdict` for JSON/CSV). They refuse non-finite values (e.g. a PSNR of +inf for a perfect
reconstruction) instead of silently dropping or propagating them: the caller decides how to report those
images.

- `mean_ci`: mean with a Student-t interval (images independent).
- `cluster_bootstrap_ci`: percentile bootstrap that resamples whole patients (clusters) with replacement,
  seeded; use it when a patient contributes several images, which are not independent.
- `hierarchical_bootstrap_ci`: a paired gap measured with several training seeds: percentile bootstrap that
  resamples seeds and patients, so the interval covers training randomness as well as the test patients.
- `summarize`: picks one of the two: the bootstrap when any patient id repeats, else the t-interval.
- `paired_comparison`: two methods on the same images: paired t-test, Wilcoxon signed-rank, Cohen's d_z,
  matched-pairs rank-biserial correlation, and a t-interval of the mean difference.
- `holm_adjust`: Holm's step-down adjusted p-values for a family of tests (e.g. a whole results table).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats


@dataclass(frozen=True)
class MeanCI:
    mean: float
    low: float
    high: float
    n: int  # images
    std: float  # sample standard deviation (ddof 1) of the values; nan for n = 1
    confidence: float
    method: str  # "t", "cluster-bootstrap" or "seed-patient-bootstrap"
    n_clusters: int | None = None  # patients, for the bootstrap
    n_resamples: int | None = None
    seed: int | None = None
    n_seeds: int | None = None  # training seeds, for the seed x patient bootstrap

    @property
    def half_width(self) -> float:
        """Half the interval's width: the "+-" of a table (symmetric for "t", averaged for the bootstrap)."""
        return 0.5 * (self.high - self.low)


@dataclass(frozen=True)
class PairedComparison:
    n: int
    mean_a: float
    mean_b: float
    mean_difference: float  # mean of a - b
    difference_low: float  # t-interval of the mean difference
    difference_high: float
    t_statistic: float
    t_pvalue: float
    wilcoxon_statistic: float
    wilcoxon_pvalue: float
    cohens_dz: float  # mean(a - b) / std(a - b, ddof 1)
    rank_biserial: float  # (R+ - R-) / (R+ + R-) over non-zero differences, in [-1, 1]
    confidence: float


def _as_values(values: Sequence[float] | np.ndarray, what: str = "values") -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{what}: need at least one value")
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise ValueError(
            f"{what}: {bad} of {array.size} values are not finite (a PSNR of identical images is +inf); "
            "report those images separately before computing statistics"
        )
    return array


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> MeanCI:
    """Mean with the Student-t interval mean +- t_{(1+c)/2, n-1} s / sqrt(n); bounds are nan when n = 1."""
    _check_confidence(confidence)
    array = _as_values(values)
    n = array.size
    mean = float(array.mean())
    if n == 1:
        return MeanCI(mean, math.nan, math.nan, 1, math.nan, confidence, "t")
    std = float(array.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * std / math.sqrt(n)
    return MeanCI(mean, mean - half, mean + half, n, std, confidence, "t")


def cluster_bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    clusters: Sequence[object],
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> MeanCI:
    """Percentile bootstrap CI of the image-level mean, resampling clusters (patients) with replacement.

    Each resample draws as many clusters as there are, with replacement, and takes the mean over all their
    images (so large clusters weigh by their size, as in the point estimate). Deterministic for a given seed.
    """
    _check_confidence(confidence)
    array = _as_values(values)
    labels = list(clusters)
    if len(labels) != array.size:
        raise ValueError(f"got {array.size} values but {len(labels)} cluster labels")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    _, cluster_index = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    n_clusters = int(cluster_index.max()) + 1
    cluster_sums = np.bincount(cluster_index, weights=array, minlength=n_clusters)
    cluster_sizes = np.bincount(cluster_index, minlength=n_clusters).astype(np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    # Chunks bound the (resamples x clusters) index matrix to a few MB.
    per_chunk = max(1, 2_000_000 // n_clusters)
    for start in range(0, n_resamples, per_chunk):
        stop = min(n_resamples, start + per_chunk)
        drawn = rng.integers(0, n_clusters, size=(stop - start, n_clusters))
        means[start:stop] = cluster_sums[drawn].sum(axis=1) / cluster_sizes[drawn].sum(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    std = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return MeanCI(
        float(array.mean()),
        float(low),
        float(high),
        int(array.size),
        std,
        confidence,
        "cluster-bootstrap",
        n_clusters=n_clusters,
        n_resamples=n_resamples,
        seed=seed,
    )


def hierarchical_bootstrap_ci(
    differences: Sequence[Sequence[float]] | np.ndarray,
    clusters: Sequence[object] | None = None,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> MeanCI:
    """Interval of a gap over training seeds and test patients: two-level percentile bootstrap.

    `differences` is (seeds, images): row s holds the per-image differences (method minus reference) of the
    s-th training seed on the same test images (pair the runs by seed, or subtract the reference's per-image
    mean over its seeds). `clusters` gives each image's patient (None: every image its own patient).

    The estimand is the mean over seeds of the mean over patients of each patient's mean difference (every
    patient weighs the same, as in `meddenoise.metrics.clustered.paired_test`). Each resample draws as many
    seeds as there are and as many patients as there are, both with replacement and independently, and takes
    the same statistic on the drawn seed x patient cells. With one seed this is the patient bootstrap alone
    (the interval then says nothing about training randomness). With 2 seeds the seed level has only 3
    distinct resamples, so the interval is rough; 3 or more seeds are better. Deterministic for a seed.
    """
    _check_confidence(confidence)
    matrix = np.asarray(differences, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"differences must be a (seeds, images) matrix, got shape {matrix.shape}")
    _as_values(matrix, "differences")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    n_seeds, n_images = matrix.shape
    labels = np.arange(n_images).astype(str) if clusters is None else np.asarray(clusters, dtype=object)
    if labels.size != n_images:
        raise ValueError(f"got {n_images} images per seed but {labels.size} cluster labels")
    _, index = np.unique(labels.astype(str), return_inverse=True)
    n_clusters = int(index.max()) + 1
    sizes = np.bincount(index, minlength=n_clusters).astype(np.float64)
    # cells[s, g]: patient g's mean difference under seed s
    cells = np.stack([np.bincount(index, weights=row, minlength=n_clusters) for row in matrix]) / sizes
    estimate = float(cells.mean())
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    per_chunk = max(1, 2_000_000 // max(n_clusters, n_seeds))
    for start in range(0, n_resamples, per_chunk):
        stop = min(n_resamples, start + per_chunk)
        seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=stop - start)
        patient_counts = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=stop - start)
        weighted = seed_counts @ cells  # (chunk, patients): seed-weighted sums per patient
        means[start:stop] = np.einsum("rg,rg->r", weighted, patient_counts) / (n_seeds * n_clusters)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    spread = cells.mean(axis=0)
    std = float(spread.std(ddof=1)) if spread.size > 1 else math.nan
    return MeanCI(
        estimate,
        float(low),
        float(high),
        int(n_images),
        std,
        confidence,
        "seed-patient-bootstrap",
        n_clusters=n_clusters,
        n_resamples=n_resamples,
        seed=seed,
        n_seeds=int(n_seeds),
    )


def summarize(
    values: Sequence[float] | np.ndarray,
    patient_ids: Sequence[object] | None = None,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> MeanCI:
    """Mean and CI: the cluster bootstrap over patients when any patient has several images, else the
    t-interval."""
    if patient_ids is not None:
        labels = [str(label) for label in patient_ids]
        if len(set(labels)) < len(labels):
            return cluster_bootstrap_ci(values, labels, confidence, n_resamples, seed)
    return mean_ci(values, confidence)


def rank_biserial(differences: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation (R+ - R-) / (R+ + R-), zero differences dropped (as Wilcoxon
    does)."""
    nonzero = differences[differences != 0]
    if nonzero.size == 0:
        return 0.0
    ranks = scipy_stats.rankdata(np.abs(nonzero))
    positive = float(ranks[nonzero > 0].sum())
    negative = float(ranks[nonzero < 0].sum())
    return (positive - negative) / (positive + negative)


def paired_comparison(
    values_a: Sequence[float] | np.ndarray, values_b: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> PairedComparison:
    """Compare methods A and B on the same images (value i of both belongs to image i); differences are a - b.

    Two-sided tests. The tests treat images as independent; with several images per patient the p-values are
    optimistic (say so next to them, or compare patient means instead).
    """
    _check_confidence(confidence)
    a = _as_values(values_a, "values_a")
    b = _as_values(values_b, "values_b")
    if a.size != b.size:
        raise ValueError(f"paired comparison needs the same images: got {a.size} and {b.size} values")
    if a.size < 2:
        raise ValueError("paired comparison needs at least 2 images")
    differences = a - b
    difference_ci = mean_ci(differences, confidence)
    std = float(differences.std(ddof=1))
    if std == 0.0:
        # Constant differences: tests are undefined in scipy (division by zero); the answer is plain.
        identical = bool(np.all(differences == 0))
        t_stat, t_p = (0.0, 1.0) if identical else (math.copysign(math.inf, differences[0]), 0.0)
        dz = 0.0 if identical else math.copysign(math.inf, differences[0])
    else:
        t_result = scipy_stats.ttest_rel(a, b)
        t_stat, t_p = float(t_result.statistic), float(t_result.pvalue)
        dz = float(differences.mean()) / std
    if np.all(differences == 0):
        w_stat, w_p = 0.0, 1.0
    else:
        w_result = scipy_stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
        w_stat, w_p = float(w_result.statistic), float(w_result.pvalue)
    return PairedComparison(
        n=int(a.size),
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        mean_difference=difference_ci.mean,
        difference_low=difference_ci.low,
        difference_high=difference_ci.high,
        t_statistic=t_stat,
        t_pvalue=t_p,
        wilcoxon_statistic=w_stat,
        wilcoxon_pvalue=w_p,
        cohens_dz=dz,
        rank_biserial=rank_biserial(differences),
        confidence=confidence,
    )


def holm_adjust(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values, in the input order: reject test i at level alpha iff adjusted_i <=
    alpha.

    Sorted ascending, adjusted_(k) = max over j <= k of min(1, (m - j + 1) p_(j)) (1-based). NaN p-values
    (tests that could not be run) stay NaN and do not count in the family size m.
    """
    array = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    if np.any((array < 0) | (array > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    adjusted = np.full(array.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(array))
    m = valid.size
    if m == 0:
        return adjusted
    order = valid[np.argsort(array[valid], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * array[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def holm_reject(pvalues: Sequence[float] | np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """Boolean array: which hypotheses Holm's procedure rejects at family-wise level alpha (NaN: never)."""
    adjusted = holm_adjust(pvalues)
    return np.where(np.isnan(adjusted), False, adjusted <= alpha)
