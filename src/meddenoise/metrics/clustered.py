"""Intervals and paired tests that respect groups of images (patients, or the rendered default's pose groups).

Images of one patient are not independent: a t-interval over 172 images of 35 patients is about three times
too narrow. Every interval and paired test shown to users goes through this module, which picks the method
from the data and says which one it used:

- every group holds one image: the Student t-interval over images, paired t-test / Wilcoxon over images;
- some group holds several images: the percentile bootstrap that resamples whole groups (the mean stays the
  image-level mean), and the paired tests on per-group mean differences;
- fewer than 2 groups (or fewer than 2 images): no interval, no test, and `note` says why (never a zero-width
  interval);
- 2 or 3 groups of which some repeat: no interval either. Resampling so few groups puts more than 2.5% of the
  resamples on "every group is the same one", so the percentile interval is just the range of the groups' own
  means (narrower than the t-interval over images), not a 95% interval; the paired tests on the 2-3 group
  means still run;
- values that are all equal: no interval (a bootstrap or t-interval would have zero width).

The mean-based test (paired t) is the primary one; the Wilcoxon signed-rank test is reported beside it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from meddenoise.metrics import stats

T_METHOD = "t"
BOOTSTRAP_METHOD = "group-bootstrap"
NO_METHOD = "none"
# Below this many groups the percentile bootstrap's 2.5% tails fall on single-group resamples (see above).
MIN_BOOTSTRAP_GROUPS = 4


@dataclasses.dataclass(frozen=True)
class Interval:
    mean: float
    low: float  # nan when method is "none"
    high: float
    n: int  # finite values used
    groups: int
    method: str  # "t", "group-bootstrap" or "none"
    note: str = ""  # why there is no interval (method "none")

    @property
    def available(self) -> bool:
        return self.method != NO_METHOD

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PairedTest:
    n: int  # images
    groups: int
    mean_a: float
    mean_b: float
    mean_difference: float  # image-level mean of a - b
    low: float  # interval of the mean difference (nan without one)
    high: float
    method: str  # "t" (images independent), "group-bootstrap" (tests on per-group means) or "none"
    t_pvalue: float  # paired t-test: over images, or over per-group mean differences
    wilcoxon_pvalue: float  # the same units, signed-rank
    effect_size: float  # d_z over the tested units
    note: str = ""

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def _labels(groups: Sequence[object] | None, size: int) -> np.ndarray:
    if groups is None:
        return np.arange(size).astype(str)
    labels = np.asarray([str(g) for g in groups], dtype=object)
    if labels.size != size:
        raise ValueError(f"got {size} values but {labels.size} group labels")
    return labels


def group_interval(
    values: Sequence[float] | np.ndarray,
    groups: Sequence[object] | None = None,
    *,
    unit: str = "patient",
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Interval:
    """Mean of the finite values and its interval, chosen by the group structure (module docstring)."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    labels = _labels(groups, array.size)
    finite = np.isfinite(array)
    array, labels = array[finite], labels[finite]
    n = int(array.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, 0, NO_METHOD, "no finite values")
    n_groups = len(set(labels.tolist()))
    mean = float(array.mean())
    if n_groups == n:
        if n < 2:
            return Interval(mean, math.nan, math.nan, n, n_groups, NO_METHOD, "one image: no interval")
        if np.ptp(array) == 0:
            return Interval(mean, math.nan, math.nan, n, n_groups, NO_METHOD, _equal_note(n))
        t = stats.mean_ci(array, confidence)
        return Interval(mean, t.low, t.high, n, n_groups, T_METHOD)
    if n_groups < 2:
        return Interval(
            mean,
            math.nan,
            math.nan,
            n,
            n_groups,
            NO_METHOD,
            f"all {n} images come from one {unit}, so their spread says nothing about other {unit}s",
        )
    if n_groups < MIN_BOOTSTRAP_GROUPS:
        return Interval(mean, math.nan, math.nan, n, n_groups, NO_METHOD, _few_groups_note(n, n_groups, unit))
    if np.ptp(array) == 0:
        return Interval(mean, math.nan, math.nan, n, n_groups, NO_METHOD, _equal_note(n))
    boot = stats.cluster_bootstrap_ci(array, labels.tolist(), confidence, n_resamples, seed)
    return Interval(mean, boot.low, boot.high, n, n_groups, BOOTSTRAP_METHOD)


def _few_groups_note(n: int, groups: int, unit: str) -> str:
    return (
        f"the {n} images come from only {groups} {unit}s: a bootstrap over so few {unit}s only spans their "
        f"own means, so no 95% interval is given (at least {MIN_BOOTSTRAP_GROUPS} {unit}s are needed)"
    )


def _equal_note(n: int) -> str:
    return f"all {n} values are equal: they show no spread, so no interval is given"


def _group_means(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    _, index = np.unique(labels.astype(str), return_inverse=True)
    sums = np.bincount(index, weights=values)
    return sums / np.bincount(index)


def paired_test(
    values_a: Sequence[float] | np.ndarray,
    values_b: Sequence[float] | np.ndarray,
    groups: Sequence[object] | None = None,
    *,
    unit: str = "patient",
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> PairedTest:
    """A against B on the same images (value i of both is image i): mean difference with its interval and
    the paired tests, on images or on per-group means (module docstring). Pairs with a non-finite value
    are dropped."""
    a = np.asarray(values_a, dtype=np.float64).reshape(-1)
    b = np.asarray(values_b, dtype=np.float64).reshape(-1)
    if a.size != b.size:
        raise ValueError(f"paired test needs the same images: got {a.size} and {b.size} values")
    labels = _labels(groups, a.size)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b, labels = a[keep], b[keep], labels[keep]
    n = int(a.size)
    n_groups = len(set(labels.tolist()))
    nan = math.nan

    def unavailable(note: str) -> PairedTest:
        mean_a = float(a.mean()) if n else nan
        mean_b = float(b.mean()) if n else nan
        return PairedTest(
            n, n_groups, mean_a, mean_b, mean_a - mean_b, nan, nan, NO_METHOD, nan, nan, nan, note
        )

    if n_groups < 2:
        return unavailable(
            "fewer than 2 images" if n < 2 else f"all {n} images come from one {unit}: no test is possible"
        )
    differences = a - b
    note = ""
    if n_groups == n:
        result = stats.paired_comparison(a, b, confidence)
        low, high, method = result.difference_low, result.difference_high, T_METHOD
    else:
        result = stats.paired_comparison(_group_means(a, labels), _group_means(b, labels), confidence)
        if n_groups < MIN_BOOTSTRAP_GROUPS:  # the tests on the group means hold; an interval would not
            low = high = nan
            note = _few_groups_note(n, n_groups, unit)
        else:
            boot = stats.cluster_bootstrap_ci(differences, labels.tolist(), confidence, n_resamples, seed)
            low, high = boot.low, boot.high
        method = BOOTSTRAP_METHOD
    if low == high:  # equal differences: no spread to show (never a zero-width interval)
        low = high = nan
        note = _equal_note(n)
    return PairedTest(
        n=n,
        groups=n_groups,
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        mean_difference=float(differences.mean()),
        low=float(low),
        high=float(high),
        method=method,
        t_pvalue=float(result.t_pvalue),
        wilcoxon_pvalue=float(result.wilcoxon_pvalue),
        effect_size=float(result.cohens_dz),
        note=note,
    )


def tests_disagree(t_p: float, wilcoxon_p: float, alpha: float = 0.05) -> bool:
    """True when one test rejects at `alpha` and the other does not (both must be defined)."""
    if math.isnan(t_p) or math.isnan(wilcoxon_p):
        return False
    return (t_p < alpha) != (wilcoxon_p < alpha)


def describe_intervals(methods: Sequence[str], unit: str = "patient", groups: int | None = None) -> str:
    """One caption sentence naming the interval method(s) actually used in a table."""
    used = sorted(set(methods) - {NO_METHOD})
    parts = []
    if BOOTSTRAP_METHOD in used:
        counted = f" the {groups}" if groups else ""
        parts.append(
            f"95% percentile bootstrap resampling{counted} {unit}s with replacement (10,000 resamples; "
            f"images of one {unit} are not independent, so images are not resampled on their own)"
        )
    if T_METHOD in used:
        parts.append(f"95% Student t-interval over images (every {unit} has one image)")
    if NO_METHOD in methods:
        parts.append(
            f"n/a where fewer than 2 images or 2 {unit}s remain, fewer than {MIN_BOOTSTRAP_GROUPS} {unit}s "
            "hold repeated images, or all values are equal (the reason is given)"
        )
    return "Intervals: " + "; ".join(parts) + "." if parts else "Intervals: none could be computed."


def describe_tests(methods: Sequence[str], unit: str = "patient") -> str:
    """One caption sentence naming the paired tests actually used in a table."""
    used = set(methods) - {NO_METHOD}
    parts = []
    if BOOTSTRAP_METHOD in used:
        parts.append(
            "paired t-test (primary, on the mean) and Wilcoxon signed-rank test (secondary) on the "
            f"per-{unit} mean differences, since images of one {unit} are not independent; the interval of "
            f"the mean difference resamples {unit}s"
        )
    if T_METHOD in used:
        parts.append(
            "paired t-test (primary, on the mean) and Wilcoxon signed-rank test (secondary) over images, "
            "with the t-interval of the mean difference"
        )
    return "Tests: " + "; ".join(parts) + "." if parts else "Tests: none could be run."
