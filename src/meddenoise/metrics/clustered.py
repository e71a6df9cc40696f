"""Intervals and paired tests that respect groups of images (patients, or the rendered default's pose groups).

Images of one patient are not independent: a t-interval over 172 images of 35 patients is about three times
too narrow. Every interval and paired test shown to users goes through this module, which picks the method
from the data and says which one it used.

One mean (`group_interval`, e.g. a method's mean PSNR):

- every group holds one image: the Student t-interval over images;
- some group holds several images: the percentile bootstrap that resamples whole groups (the mean stays the
  image-level mean, and each resample takes the image-level mean of the drawn groups: the same statistic);
- fewer than 2 groups (or fewer than 2 images): no interval, and `note` says why (never a zero-width
  interval);
- 2 or 3 groups of which some repeat: no interval either. Resampling so few groups puts more than 2.5% of the
  resamples on "every group is the same one", so the percentile interval is just the range of the groups' own
  means (narrower than the t-interval over images), not a 95% interval;
- values that are all equal: no interval (a bootstrap or t-interval would have zero width).

One comparison (`paired_test`, A against B on the same images) has one estimand: the mean over groups of
each group's mean difference a - b (every patient weighs the same, however many images it has; with one image
per group that is the plain mean over images). The point estimate, its 95% interval (Student t over the
per-group differences), the paired t-test (primary), the Wilcoxon signed-rank test (secondary) and d_z all
use those same per-group differences, so:

- the interval always contains the difference, and d_z has the difference's sign;
- the interval excludes 0 exactly when the unadjusted paired t-test gives p < 1 - confidence (the interval
  is the inversion of that test; they can only differ by floating-point rounding at p = 0.05 itself);
- the Wilcoxon test may disagree with both (it tests the median of the signed ranks, not the mean);
  `tests_disagree` finds those cases.

`mean_a` and `mean_b` are group-weighted the same way, so `mean_a - mean_b == mean_difference`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from meddenoise.metrics import stats

T_METHOD = "t"
BOOTSTRAP_METHOD = "group-bootstrap"
GROUP_MEANS_METHOD = "group-means"  # paired tests: t over per-group mean differences (groups repeat)
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
    mean_a: float  # mean over groups of each group's mean of a (the plain image mean with one image each)
    mean_b: float
    mean_difference: float  # mean over groups of each group's mean of a - b: the estimand of every field
    low: float  # t-interval of mean_difference over the per-group differences (nan without one)
    high: float
    method: str  # "t" (one image per group), "group-means" (groups repeat: per-group means) or "none"
    t_pvalue: float  # paired t-test on the per-group differences (the images when each group has one)
    wilcoxon_pvalue: float  # the same units, signed-rank
    effect_size: float  # d_z = mean / sd of the per-group differences: the sign of mean_difference
    note: str = ""
    image_mean_difference: float = math.nan  # image-weighted mean of a - b, for reference only (CSV)

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
) -> PairedTest:
    """A against B on the same images (value i of both is image i): the mean over groups of the per-group
    mean difference a - b, its t-interval and the paired tests, all on the same per-group differences
    (module docstring). Pairs with a non-finite value are dropped."""
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
    group_a = _group_means(a, labels) if n else a
    group_b = _group_means(b, labels) if n else b
    image_difference = float((a - b).mean()) if n else nan

    def unavailable(note: str) -> PairedTest:
        mean_a = float(group_a.mean()) if n else nan
        mean_b = float(group_b.mean()) if n else nan
        return PairedTest(
            n,
            n_groups,
            mean_a,
            mean_b,
            mean_a - mean_b,
            nan,
            nan,
            NO_METHOD,
            nan,
            nan,
            nan,
            note,
            image_difference,
        )

    if n_groups < 2:
        return unavailable(
            "fewer than 2 images" if n < 2 else f"all {n} images come from one {unit}: no test is possible"
        )
    result = stats.paired_comparison(group_a, group_b, confidence)
    low, high = result.difference_low, result.difference_high
    method = T_METHOD if n_groups == n else GROUP_MEANS_METHOD
    note = ""
    if not low < high:  # equal differences: no spread to show (never a zero-width interval)
        low = high = nan
        note = f"all {n_groups} differences ({_units(n_groups, n, unit)}) are equal: no interval is given"
    return PairedTest(
        n=n,
        groups=n_groups,
        mean_a=float(group_a.mean()),
        mean_b=float(group_b.mean()),
        mean_difference=float(result.mean_difference),
        low=float(low),
        high=float(high),
        method=method,
        t_pvalue=float(result.t_pvalue),
        wilcoxon_pvalue=float(result.wilcoxon_pvalue),
        effect_size=float(result.cohens_dz),
        note=note,
        image_mean_difference=image_difference,
    )


def tests_disagree(t_p: float, wilcoxon_p: float, alpha: float = 0.05) -> bool:
    """True when one test rejects at `alpha` and the other does not (both must be defined)."""
    if math.isnan(t_p) or math.isnan(wilcoxon_p):
        return False
    return (t_p < alpha) != (wilcoxon_p < alpha)


def _units(groups: int, images: int, unit: str) -> str:
    return "one per image" if groups == images else f"one per {unit}"


IDS_UNKNOWN_SENTENCE = (
    "Patient ids are unknown, so each image is treated as its own patient and the images as independent "
    "(except images that `prepare --group-similar` joined as suspected same-patient groups: those are "
    "clustered); if some patients contributed several images, these intervals are too narrow and the "
    "p-values too small. Preparing with --group-similar clusters by the learned matcher's suspected patients"
)


def describe_intervals(
    methods: Sequence[str], unit: str = "patient", groups: int | None = None, *, ids_unknown: bool = False
) -> str:
    """One caption sentence naming the interval method(s) actually used in a table (of single means).

    `ids_unknown`: the data has no patient ids (each image counted as its own patient); the caption says
    that images are treated as independent for that reason, not because each patient has one image."""
    used = sorted(set(methods) - {NO_METHOD})
    parts = []
    if BOOTSTRAP_METHOD in used:
        counted = f" the {groups}" if groups else ""
        parts.append(
            f"95% percentile bootstrap resampling{counted} {unit}s with replacement (10,000 resamples; "
            f"images of one {unit} are not independent, so images are not resampled on their own)"
        )
    if T_METHOD in used:
        if ids_unknown:
            parts.append(
                "95% Student t-interval over images (treated as independent: patient ids are unknown)"
            )
        else:
            parts.append(f"95% Student t-interval over images (every {unit} has one image)")
    if NO_METHOD in methods:
        parts.append(
            f"n/a where fewer than 2 images or 2 {unit}s remain, fewer than {MIN_BOOTSTRAP_GROUPS} {unit}s "
            "hold repeated images, or all values are equal (the reason is given)"
        )
    text = "Intervals: " + "; ".join(parts) + "." if parts else "Intervals: none could be computed."
    return text + " " + IDS_UNKNOWN_SENTENCE + "." if ids_unknown else text


def describe_tests(methods: Sequence[str], unit: str = "patient", *, ids_unknown: bool = False) -> str:
    """One caption sentence naming the estimand and the paired tests actually used in a table."""
    used = set(methods) - {NO_METHOD}
    parts = []
    if GROUP_MEANS_METHOD in used or BOOTSTRAP_METHOD in used:
        parts.append(
            f"{unit}s repeat, so each comparison is made on {unit} means: the difference is the mean over "
            f"{unit}s of each {unit}'s mean difference (every {unit} weighs the same), with the 95% "
            f"t-interval, paired t-test (primary), Wilcoxon signed-rank test (secondary) and d_z on the same "
            f"per-{unit} differences"
        )
    if T_METHOD in used:
        reason = "treated as independent: patient ids are unknown" if ids_unknown else f"one per {unit}"
        parts.append(
            f"over images ({reason}): mean difference with its 95% t-interval, paired t-test (primary), "
            "Wilcoxon signed-rank test (secondary) and d_z on the same per-image differences"
        )
    if not parts:
        return "Tests: none could be run."
    text = (
        "Tests: "
        + "; ".join(parts)
        + ". The interval excludes 0 exactly when the unadjusted t-test gives p < 0.05 (Holm adjusts p only)."
    )
    return text + " " + IDS_UNKNOWN_SENTENCE + "." if ids_unknown else text


def describe_seeds(seeds: Sequence[int], unit: str = "patient") -> str:
    """One caption sentence saying what the intervals of a table cover, given the training seeds per
    configuration (one count per compared configuration)."""
    counts = sorted(set(int(s) for s in seeds if s))
    if not counts:
        return ""
    if counts == [1]:
        return (
            f"Each network was trained once (one seed): the intervals and tests cover the sampling of test "
            f"{unit}s, not training randomness; training again with another seed can move a gap by more than "
            "its interval suggests."
        )
    span = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return (
        f"Networks were trained with {span} seeds; each image's value is the mean over them. The intervals "
        f"of differences resample seeds and test {unit}s (two-level bootstrap), so they cover training "
        "randomness too; a difference is marked only when its test rejects and that interval excludes 0 "
        f"(the test itself, on {unit} means of seed-averaged values, sees the test {unit}s only)."
    )
