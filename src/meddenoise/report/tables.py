"""The paper's Tables III-VI (and the U-Net++ head table) from the per-image rows of a `Collection`.

Every cell is an aggregate of per-image values read from `per_image.csv` files (means, intervals and paired
tests from `meddenoise.metrics.clustered`, which resample patients when a patient has several images) or a
time recorded by the training engine; nothing is re-measured. Each table comes with its full-precision rows,
written next to the report as CSV. Table V lives in `meddenoise.report.scaling`.

When a configuration was trained with several seeds, an image's value is first averaged over the seeds, and
the spread of the per-seed means is shown beside it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from meddenoise.report.collect import (
    Collection,
    Evaluation,
    group_by,
    method_label,
    method_sort_key,
    strategy_label,
    strategy_sort_key,
)
from meddenoise.report.document import Table

QUALITY_METRICS = ("psnr", "ssim", "ssim_win3", "lpips")
METRIC_HEADERS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "ssim_win3": "SSIM (win 3)", "lpips": "LPIPS"}
METRIC_DIGITS = {"psnr": 2, "ssim": 4, "ssim_win3": 4, "lpips": 4}
# Higher is better for every metric but LPIPS (a distance).
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "ssim_win3": True, "lpips": False}
PAPER_MODELS = ("unet", "unetpp")
SIGNIFICANCE_LEVEL = 0.05


@dataclasses.dataclass
class TableResult:
    table: Table
    rows: list[dict[str, Any]]  # full precision, for tables/*.csv


@dataclasses.dataclass
class Pooled:
    """Per-image values of one configuration, averaged over its seeds and aligned by image id."""

    image_ids: list[str]
    patient_ids: list[str]
    values: dict[str, np.ndarray]  # metric -> (n,)
    seed_means: dict[str, list[float]]  # metric -> one mean per seed run
    runs: list[Evaluation]
    group_ids: list[str] = dataclasses.field(default_factory=list)  # clusters of intervals and tests
    per_run: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # metric -> (runs, n)


def pool_runs(runs: Sequence[Evaluation]) -> Pooled:
    """Average each image's metrics over the seed runs of one configuration (they must share their images)."""
    runs = sorted(runs, key=lambda e: (e.seed if e.seed is not None else -1, str(e.folder)))
    image_ids = runs[0].image_ids()
    for run in runs[1:]:
        if sorted(run.image_ids()) != sorted(image_ids):
            raise ValueError(f"{run.folder} was evaluated on other images than {runs[0].folder}")
    values, seed_means, per_run = {}, {}, {}
    for metric in QUALITY_METRICS:
        stacked = []
        for run in runs:
            by_id = dict(zip(run.image_ids(), run.values(metric)))
            stacked.append(np.array([by_id[i] for i in image_ids]))
        matrix = np.vstack(stacked)  # (runs, n)
        values[metric] = matrix.mean(axis=0)
        seed_means[metric] = [float(row.mean()) for row in matrix]
        per_run[metric] = matrix
    return Pooled(
        image_ids, runs[0].patient_ids(), values, seed_means, list(runs), runs[0].group_ids(), per_run
    )


SEED_INTERVAL_METHOD = "seed-and-patient bootstrap"


def add_seed_interval(test: dict[str, Any], first: Pooled, second: Pooled, metric: str) -> dict[str, Any]:
    """With several training seeds on either side, replace the test's interval of the difference (first -
    second) by the two-level bootstrap over seeds and patients (`stats.hierarchical_bootstrap_ci`): the
    estimand stays the same (the mean over patients of each patient's mean difference, of seed-averaged
    values), its interval now also covers training randomness. Runs pair by seed order when both sides
    have as many; otherwise each run is compared with the other side's mean over its runs."""
    a_runs, b_runs = _aligned_runs(first, second, metric)
    if max(len(a_runs), len(b_runs)) < 2 or a_runs.shape[1] < 2:
        return test
    if len(a_runs) == len(b_runs):
        differences = a_runs - b_runs
    elif len(b_runs) == 1 or len(a_runs) > 1:
        differences = a_runs - b_runs.mean(axis=0)
    else:
        differences = a_runs.mean(axis=0) - b_runs
    keep = np.isfinite(differences).all(axis=0)
    groups = np.asarray(_aligned_groups(first, second), dtype=object)[keep]
    ci = _stats().hierarchical_bootstrap_ci(differences[:, keep], groups)
    test.update(
        difference_low=float(ci.low),
        difference_high=float(ci.high),
        interval_method=SEED_INTERVAL_METHOD,
        seeds=int(differences.shape[0]),
    )
    return test


def difference_shown(test: dict[str, Any]) -> bool:
    """A difference is claimed when its test rejects (Holm-adjusted p < 0.05) and, with several training
    seeds, the seed-and-patient interval also excludes 0 (the test alone sees the test patients only)."""
    if not test.get("t_p_holm", math.nan) < SIGNIFICANCE_LEVEL:
        return False
    if test.get("interval_method") == SEED_INTERVAL_METHOD:
        low, high = test["difference_low"], test["difference_high"]
        return bool(low > 0 or high < 0)
    return True


def _stats():
    from meddenoise.metrics import stats

    return stats


def _clustered():
    from meddenoise.metrics import clustered

    return clustered


def ids_unknown(collection: Collection) -> bool:
    """True when the prepared data has no patient ids for some or all images (each such image counted as its
    own patient): intervals that treat them as independent must say why, and that they are too narrow if
    patients repeat."""
    from meddenoise.data.split_claims import UNIT_IMAGE_UNKNOWN, UNIT_MIXED

    data = collection.plan.get("data") or next(
        (e.info["data"] for e in collection.evaluations if e.info.get("data")), {}
    )
    return (data or {}).get("split_unit") in (UNIT_IMAGE_UNKNOWN, UNIT_MIXED)


def seed_counts(configurations: Sequence[Pooled]) -> list[int]:
    """Training seeds (runs) of each compared network configuration, for `describe_seeds` (classical
    baselines are not trained, so they have none)."""
    return [len(pooled.runs) for pooled in configurations if pooled.runs and pooled.runs[0].kind == "network"]


def interval(values: np.ndarray, groups: Sequence[str], unit: str = "patient") -> dict[str, Any]:
    """Mean and 95% interval over the finite values, cluster-aware (`meddenoise.metrics.clustered`): the
    group bootstrap when a group (patient) has several images, the t-interval when none does, and no
    interval (method "none", with the reason in "note") below 2 groups."""
    return _clustered().group_interval(values, groups, unit=unit).to_dict()


def paired_test(a: np.ndarray, b: np.ndarray, groups: Sequence[str], unit: str = "patient") -> dict[str, Any]:
    """A - b on the same images: one estimand for every field, the mean over groups (patients) of each
    group's mean difference (the plain mean over images when each group has one), with its t-interval, the
    paired t-test (primary), the Wilcoxon signed-rank test (secondary) and d_z on the same per-group
    differences (`meddenoise.metrics.clustered.paired_test`). `image_mean_difference` (image-weighted) is
    kept for the CSV only."""
    result = _clustered().paired_test(a, b, groups, unit=unit)
    return {
        "mean_difference": result.mean_difference,
        "difference_low": result.low,
        "difference_high": result.high,
        "effect_size": result.effect_size,
        "t_p": result.t_pvalue,
        "wilcoxon_p": result.wilcoxon_pvalue,
        "test_method": result.method,
        "groups": result.groups,
        "note": result.note,
        "image_mean_difference": result.image_mean_difference,
    }


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    return [float(p) for p in _stats().holm_adjust(list(p_values))]


def add_holm(tests: list[dict[str, Any]]) -> None:
    """Holm-adjust the t and Wilcoxon p-values of a family of tests in place and mark disagreements."""
    for key in ("t_p", "wilcoxon_p"):
        adjusted = holm_adjust([t[key] for t in tests]) if tests else []
        for test, p in zip(tests, adjusted):
            test[f"{key}_holm"] = p
    for test in tests:
        test["wilcoxon_cannot_decide"] = wilcoxon_cannot_decide(test, len(tests))
        # A Wilcoxon test that cannot reach the level whatever the data does not disagree with the t-test:
        # it has no say (n/a with the reason); the decision rests on the t-test and the interval.
        test["tests_disagree"] = not test["wilcoxon_cannot_decide"] and _clustered().tests_disagree(
            test["t_p_holm"], test["wilcoxon_p_holm"], SIGNIFICANCE_LEVEL
        )


def wilcoxon_cannot_decide(test: dict[str, Any], family_size: int) -> bool:
    """True when no data could make this Wilcoxon test significant after Holm over `family_size` tests.

    The smallest two-sided exact Wilcoxon p with n paired units is 2 / 2^n, and Holm multiplies the smallest
    p of a family by its size, so every adjusted p is at least family_size x 2 / 2^n (7 pose groups in a
    table of 54 tests: 0.84)."""
    units = int(test.get("groups") or test.get("images") or 0)
    if units <= 0:
        return False
    smallest = family_size * 2.0 / 2.0 ** min(units, 200)
    return smallest >= SIGNIFICANCE_LEVEL


def interval_notes(summaries: Sequence[dict[str, Any]], unit: str, unknown_ids: bool = False) -> list[str]:
    """The caption sentence naming the interval method(s) used, and the reasons for every n/a."""
    clustered = _clustered()
    groups = max((s.get("groups") or 0 for s in summaries if s.get("method") == "group-bootstrap"), default=0)
    notes = [
        clustered.describe_intervals(
            [s["method"] for s in summaries], unit, groups or None, ids_unknown=unknown_ids
        )
    ]
    reasons = sorted({s["note"] for s in summaries if s.get("method") == "none" and s.get("note")})
    notes += [f"CI n/a: {reason}." for reason in reasons]
    return notes


def format_interval(summary: dict[str, Any], metric: str) -> str:
    if summary["n"] == 0 or math.isnan(summary["mean"]):
        return "n/a"
    digits = METRIC_DIGITS[metric]
    if summary.get("method") == "none" or math.isnan(summary["low"]):
        return f"{summary['mean']:.{digits}f} (CI n/a)"
    if summary.get("method") == "group-bootstrap":  # percentile intervals need not be symmetric
        return f"{summary['mean']:.{digits}f} [{summary['low']:.{digits}f}, {summary['high']:.{digits}f}]"
    half = (summary["high"] - summary["low"]) / 2.0
    return f"{summary['mean']:.{digits}f} (±{half:.{digits}f})"


def format_mean(value: float, metric: str, extra_digit: bool = False) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.{METRIC_DIGITS[metric] + (1 if extra_digit else 0)}f}"


def format_seconds(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.1f}"


def _configurations(collection: Collection, strategy_filter) -> dict[tuple, list[Evaluation]]:
    """(method, noise_std, setup) -> seed runs; the setup is the strategy with its timing protocol."""
    chosen = [e for e in collection.evaluations if strategy_filter(e)]
    return group_by(chosen, "method", "noise_std", "setup")


def _seed_spread(pooled: Pooled, metric: str) -> str:
    means = [m for m in pooled.seed_means[metric] if not math.isnan(m)]
    if len(means) < 2:
        return ""
    return f"{np.mean(means):.{METRIC_DIGITS[metric]}f} ± {np.std(means, ddof=1):.{METRIC_DIGITS[metric]}f}"


# -- Table III -----------------------------------------------------------------------------------------------


def paper_model_configurations(collection: Collection) -> dict[tuple, list[Evaluation]]:
    """(method, noise_std, strategy) -> seed runs, for U-Net and U-Net++ trained on clean targets on
    one device."""
    return _configurations(collection, lambda e: e.method in PAPER_MODELS and e.strategy == "single")


def table_quality(collection: Collection) -> TableResult:
    """Table III: quality with 95% CIs per model and noise level (one device), U-Net vs U-Net++ marked."""
    configurations = paper_model_configurations(collection)
    pooled = {key: pool_runs(runs) for key, runs in configurations.items()}
    unit = collection.cluster_unit()
    unknown = ids_unknown(collection)
    several_seeds = any(len(p.runs) > 1 for p in pooled.values())
    tests = _paired_between_models(pooled, unit)
    marks = {(t["noise_std"], t["better"], t["metric"]): "*" for t in tests if difference_shown(t)}
    columns = ["Noise std", "Model", "Images", *[METRIC_HEADERS[m] for m in QUALITY_METRICS]]
    if several_seeds:
        columns += ["Runs", "PSNR over runs (mean ± sd)"]
    display, csv_rows, summaries = [], [], []
    for key in sorted(pooled, key=lambda k: (k[1], method_sort_key(k[0]))):
        method, noise_std, _ = key
        runs = pooled[key]
        cells = [f"{noise_std:g}", method_label(method)]
        row: dict[str, Any] = {"noise_std": noise_std, "method": method, "runs": len(runs.runs)}
        cells.append(str(len(runs.image_ids)))
        row["images"] = len(runs.image_ids)
        for metric in QUALITY_METRICS:
            summary = interval(runs.values[metric], runs.group_ids, unit)
            if summary["n"]:
                summaries.append(summary)
            cell = format_interval(summary, metric)
            mark = marks.get((noise_std, method, metric))
            cells.append(cell + (mark or ""))
            row.update({f"{metric}_{k}": v for k, v in summary.items()})
        if several_seeds:
            cells += [str(len(runs.runs)), _seed_spread(runs, "psnr")]
        display.append(cells)
        csv_rows.append(row)
    notes = [
        "Mean over the test images with its 95% interval: (±half-width) for a t-interval, [low, high] for a "
        "bootstrap interval.",
        *interval_notes(summaries, unit, unknown),
        "* marks the better of U-Net and U-Net++ at that noise level when the paired t-test of the mean "
        f"difference on the same images, Holm-corrected across this table, gives p < {SIGNIFICANCE_LEVEL}. "
        + _clustered().describe_tests([t["test_method"] for t in tests], unit, ids_unknown=unknown),
        _clustered().describe_seeds(seed_counts(list(pooled.values())), unit),
    ]
    notes += _disagreement_notes(tests)
    if several_seeds:
        notes.append(
            "With several seeds, each image's value is the mean over the runs; 'PSNR over runs' is "
            "the mean and standard deviation of the per-run means (spread across training runs)."
        )
    notes = [note for note in notes if note]
    table = Table(columns, display, "Table III. Denoising quality on the test set (one device)", notes)
    return TableResult(table, csv_rows)


def _disagreement_notes(tests: Sequence[dict[str, Any]]) -> list[str]:
    """One note per direction listing every comparison where the t-test and the Wilcoxon test disagree."""
    found: dict[str, list[str]] = {}
    powerless = [test for test in tests if test.get("wilcoxon_cannot_decide")]
    for test in tests:
        if not test.get("tests_disagree"):
            continue
        first, second = test.get("reference", test.get("better")), test.get("method", test.get("other"))
        verdict = "only the t-test" if test["t_p_holm"] < SIGNIFICANCE_LEVEL else "only the Wilcoxon test"
        found.setdefault(verdict, []).append(
            f"{method_label(first)} vs {method_label(second)} ({METRIC_HEADERS[test['metric']]}, std "
            f"{test['noise_std']:g}, Holm p {_format_p(test['t_p_holm'])} t / "
            f"{_format_p(test['wilcoxon_p_holm'])} Wilcoxon)"
        )
    notes = [
        f"Tests disagree, {verdict} finds a difference: " + "; ".join(items) + ". Read these as uncertain."
        for verdict, items in found.items()
    ]
    if powerless:
        units = sorted({int(t.get("groups") or t.get("images") or 0) for t in powerless})
        notes.append(
            f"Wilcoxon n/a in {len(powerless)} of {len(tests)} comparisons: with "
            f"{' or '.join(str(u) for u in units)} paired units (images, or patients/groups if they repeat) "
            f"and Holm over {len(tests)} tests, its smallest possible adjusted p (tests x 2 / 2^units) is at "
            f"least {SIGNIFICANCE_LEVEL}, so it cannot find a difference whatever the data; those decisions "
            "rest on the t-test and the interval of the mean difference."
        )
    return notes


def _paired_between_models(pooled: dict[tuple, Pooled], unit: str = "patient") -> list[dict[str, Any]]:
    """U-Net vs U-Net++ per noise level and metric on their common images, Holm across all of them."""
    tests = []
    levels = sorted({key[1] for key in pooled})
    for level in levels:
        pair = [pooled.get((m, level, "single")) for m in PAPER_MODELS]
        if None in pair:
            continue
        first, second = _aligned(pair[0], pair[1])
        groups = _aligned_groups(pair[0], pair[1])
        for metric in QUALITY_METRICS:
            a, b = first[metric], second[metric]
            if not (np.isfinite(a).all() and np.isfinite(b).all()) or a.size < 2:
                continue
            result = add_seed_interval(paired_test(a, b, groups, unit), pair[0], pair[1], metric)
            if result["test_method"] == "none":
                continue
            # the sign of the tested difference (per-patient means), not of the image means
            better, other = (
                PAPER_MODELS
                if (result["mean_difference"] > 0) == HIGHER_IS_BETTER[metric]
                else PAPER_MODELS[::-1]
            )
            tests.append({"noise_std": level, "better": better, "other": other, "metric": metric, **result})
    add_holm(tests)
    return tests


def _aligned(first: Pooled, second: Pooled) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Both configurations' values on their common images, in the same order (the pairing of the tests)."""
    common = [i for i in first.image_ids if i in set(second.image_ids)]
    index_a = {i: k for k, i in enumerate(first.image_ids)}
    index_b = {i: k for k, i in enumerate(second.image_ids)}
    take_a = np.array([index_a[i] for i in common], dtype=np.int64)
    take_b = np.array([index_b[i] for i in common], dtype=np.int64)
    return (
        {m: first.values[m][take_a] for m in QUALITY_METRICS},
        {m: second.values[m][take_b] for m in QUALITY_METRICS},
    )


def _aligned_runs(first: Pooled, second: Pooled, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Each side's per-run values (runs, images) on the common images, in `_aligned`'s order."""
    common = [i for i in first.image_ids if i in set(second.image_ids)]
    index_a = {i: k for k, i in enumerate(first.image_ids)}
    index_b = {i: k for k, i in enumerate(second.image_ids)}
    take_a = np.array([index_a[i] for i in common], dtype=np.int64)
    take_b = np.array([index_b[i] for i in common], dtype=np.int64)
    runs_a = first.per_run.get(metric, first.values[metric][None, :])
    runs_b = second.per_run.get(metric, second.values[metric][None, :])
    return runs_a[:, take_a], runs_b[:, take_b]


def _aligned_groups(first: Pooled, second: Pooled) -> list[str]:
    """The group (patient) of each common image, in `_aligned`'s order."""
    groups = first.group_ids or first.patient_ids
    present = set(second.image_ids)
    return [g for i, g in zip(first.image_ids, groups) if i in present]


# -- Table IV and V ------------------------------------------------------------------------------------------


def _device_count(collection: Collection, runs: Sequence[Evaluation]) -> str:
    counts = set()
    for run in runs:
        world = run.info.get("world_size")
        history = collection.history(run)
        if world is None and history is not None:
            world = history.world_size
        if world is not None:
            counts.add(int(world))
    return ", ".join(str(c) for c in sorted(counts)) if counts else "n/a"


def _mean_train_seconds(collection: Collection, runs: Sequence[Evaluation]) -> float | None:
    seconds = [collection.train_seconds(run) for run in runs]
    if not seconds or any(s is None for s in seconds):
        return None
    return float(np.mean(seconds))


def table_configurations(collection: Collection) -> TableResult:
    """Table IV: quality and training time of every trained configuration (model x noise x strategy)."""
    configurations = _configurations(collection, lambda e: e.kind == "network")
    columns = ["Noise std", "Model", "Setup", "Devices", "PSNR (dB)", "SSIM", "LPIPS", "Training time (s)"]
    display, csv_rows = [], []
    keys = sorted(configurations, key=lambda k: (k[1], method_sort_key(k[0]), strategy_sort_key(k[2])))
    for key in keys:
        method, noise_std, strategy = key
        runs = pool_runs(configurations[key])
        seconds = _mean_train_seconds(collection, configurations[key])
        means = {
            m: float(np.nanmean(runs.values[m])) if np.isfinite(runs.values[m]).any() else math.nan
            for m in QUALITY_METRICS
        }
        display.append(
            [
                f"{noise_std:g}",
                method_label(method),
                strategy_label(strategy),
                _device_count(collection, configurations[key]),
                format_mean(means["psnr"], "psnr", extra_digit=True),
                format_mean(means["ssim"], "ssim"),
                format_mean(means["lpips"], "lpips"),
                format_seconds(seconds),
            ]
        )
        csv_rows.append(
            {
                "noise_std": noise_std,
                "method": method,
                "strategy": strategy,
                "runs": len(runs.runs),
                **{f"{m}_mean": v for m, v in means.items()},
                "train_seconds": seconds,
            }
        )
    notes = [
        "Means over the test images (and over seeds when several were run); training time is the "
        "engine's recorded wall time of the training loop (validation excluded)."
    ]
    table = Table(columns, display, "Table IV. Quality and training time per configuration", notes)
    return TableResult(table, csv_rows)


# -- Table VI ------------------------------------------------------------------------------------------------


def baseline_configurations(collection: Collection) -> dict[tuple, list[Evaluation]]:
    """(method, noise_std) -> runs for every method evaluated on the test images: classical baselines and
    networks trained on one device."""
    chosen = [e for e in collection.evaluations if e.kind == "baseline" or e.strategy == "single"]
    return group_by(chosen, "method", "noise_std")


def common_images(configurations: dict[tuple, Pooled], level: float) -> list[str]:
    """Image ids every method at `level` was evaluated on (in the first method's order)."""
    present = [pooled for (_, lv), pooled in configurations.items() if lv == level]
    shared = set(present[0].image_ids)
    for pooled in present[1:]:
        shared &= set(pooled.image_ids)
    return [i for i in present[0].image_ids if i in shared]


def mean_on(pooled: Pooled, image_ids: Sequence[str], metric: str) -> float:
    by_id = dict(zip(pooled.image_ids, pooled.values[metric]))
    return float(np.mean([by_id[i] for i in image_ids])) if image_ids else math.nan


def ranking(configurations: dict[tuple, Pooled], level: float) -> tuple[list[tuple[str, float]], int]:
    """Methods at `level` by mean PSNR on the images all of them were evaluated on, best first, and how
    many images that is (the same images for every method, so the order is a fair one)."""
    common = common_images(configurations, level)
    means = [(m, mean_on(p, common, "psnr")) for (m, lv), p in configurations.items() if lv == level]
    return sorted(means, key=lambda item: -item[1]), len(common)


@dataclasses.dataclass
class BaselineComparisons:
    """Table VI's data: pooled runs per (method, level), the best method per level, the image count it was
    ranked on, and the paired tests of the best against every other method (Holm over all of them)."""

    configurations: dict[tuple[str, float], Any]
    levels: list[float]
    methods: list[str]
    best: dict[float, str]
    ranked_on: dict[float, int]
    tests: list[dict[str, Any]]
    unit: str
    ids_unknown: bool


def baseline_comparisons(collection: Collection) -> BaselineComparisons:
    configurations = {key: pool_runs(runs) for key, runs in baseline_configurations(collection).items()}
    unit = collection.cluster_unit()
    levels = sorted({key[1] for key in configurations})
    methods = sorted({key[0] for key in configurations}, key=method_sort_key)
    best, ranked_on = {}, {}
    for level in levels:
        order, count = ranking(configurations, level)
        best[level], ranked_on[level] = order[0][0], count
    tests = []
    for level in levels:
        reference = configurations[(best[level], level)]
        for method in methods:
            if method == best[level] or (method, level) not in configurations:
                continue
            other = configurations[(method, level)]
            first, second = _aligned(reference, other)
            groups = _aligned_groups(reference, other)
            for metric in ("psnr", "ssim"):
                if first[metric].size < 2:
                    continue
                result = paired_test(first[metric], second[metric], groups, unit)
                result = add_seed_interval(result, reference, other, metric)
                tests.append(
                    {
                        "noise_std": level,
                        "reference": best[level],
                        "method": method,
                        "metric": metric,
                        "images": int(first[metric].size),
                        **result,
                    }
                )
    add_holm(tests)
    return BaselineComparisons(
        configurations, levels, methods, best, ranked_on, tests, unit, ids_unknown(collection)
    )


def table_baselines(collection: Collection) -> tuple[TableResult, TableResult]:
    """Table VI (methods x noise levels, PSNR / SSIM) and the paired tests behind its marks.

    In each noise level the best method (highest mean PSNR on the images every method was evaluated on) is
    compared with every other one on their common images: paired t-test (primary) and Wilcoxon signed-rank
    test (secondary), cluster-aware, on PSNR and SSIM; Holm over every test in the table.
    """
    compared = baseline_comparisons(collection)
    configurations, levels, methods = compared.configurations, compared.levels, compared.methods
    best, ranked_on, tests = compared.best, compared.ranked_on, compared.tests
    unit, unknown = compared.unit, compared.ids_unknown
    worse = {
        (t["noise_std"], t["method"], t["metric"])
        for t in tests
        if t["mean_difference"] > 0 and difference_shown(t)
    }

    columns = ["Method", *[f"PSNR / SSIM at std {level:g}" for level in levels]]
    display, csv_rows = [], []
    for method in methods:
        cells = [method_label(method)]
        for level in levels:
            runs = configurations.get((method, level))
            if runs is None:
                cells.append("not run")
                continue
            psnr_mean = float(np.mean(runs.values["psnr"]))
            ssim_mean = float(np.mean(runs.values["ssim"]))
            psnr_text = f"{psnr_mean:.2f}" + ("†" if (level, method, "psnr") in worse else "")
            ssim_text = f"{ssim_mean:.4f}" + ("†" if (level, method, "ssim") in worse else "")
            text = f"{psnr_text} / {ssim_text}"
            cells.append(f"**{text}**" if method == best[level] else text)
            common = common_images(configurations, level)
            csv_rows.append(
                {
                    "method": method,
                    "noise_std": level,
                    "psnr_mean": psnr_mean,
                    "ssim_mean": ssim_mean,
                    "images": len(runs.image_ids),
                    "psnr_mean_common_images": mean_on(runs, common, "psnr"),
                    "common_images": len(common),
                    "best": method == best[level],
                }
            )
        display.append(cells)
    full = max((len(pooled.image_ids) for pooled in configurations.values()), default=0)
    notes = [
        "All methods on the same test images with the same fixed noise; networks trained on one device. "
        "Bold: highest mean PSNR at that noise level, ranked on the images every method of that level was "
        "evaluated on ("
        + ", ".join(f"{ranked_on[level]} at std {level:g}" for level in levels)
        + f" of {full}). Cells are means over images; the paired tests compare {unit} means (see below), so "
        "a test's difference can differ from the difference of two cells when "
        f"{unit}s hold different numbers of images. †: significantly worse than the bold method (paired "
        f"t-test of the mean difference, Holm-corrected over all {len(tests)} tests of this table, "
        f"p < {SIGNIFICANCE_LEVEL}; Wilcoxon signed-rank beside it in the tests table).",
        _clustered().describe_tests([t["test_method"] for t in tests], unit, ids_unknown=unknown),
        _clustered().describe_seeds(seed_counts(list(configurations.values())), unit),
    ]
    notes += _disagreement_notes(tests)
    for (method, level), pooled in sorted(configurations.items(), key=lambda item: item[0][1]):
        if len(pooled.image_ids) < full:
            notes.append(
                f"{method_label(method)} at std {level:g}: {len(pooled.image_ids)} of {full} test images "
                "(a fixed subset, the same for every level); its mean and its paired tests use those only."
            )
    notes = [note for note in notes if note]
    table = Table(columns, display, "Table VI. Baselines and networks on the same test images", notes)
    seeds = seed_counts(list(configurations.values()))
    return TableResult(table, csv_rows), _tests_table(tests, unit, unknown, seeds)


CLASSICAL_METHODS = ("noisy", "gaussian", "nlm", "bm3d")


def learned_vs_classical(collection: Collection) -> list[dict[str, Any]]:
    """Per noise level: the best network against the best classical method (the noisy input aside), from
    Table VI's paired PSNR test of the two (Holm over the table). Each item: level, leader, other,
    classical_leads, shown (the test rejects), difference, low, high, p and the sentence (`text`): a winner
    is named only when the test rejects; otherwise "no difference is shown (p = ...)"."""
    compared = baseline_comparisons(collection)
    findings = []
    for level in compared.levels:
        order, count = ranking(compared.configurations, level)
        classical = [m for m, _ in order if m.partition("+")[0] in CLASSICAL_METHODS and m != "noisy"]
        networks = [m for m, _ in order if m.partition("+")[0] not in CLASSICAL_METHODS]
        if not classical or not networks:
            continue
        means = dict(order)
        leader, other = (
            (classical[0], networks[0]) if order[0][0] == classical[0] else (networks[0], classical[0])
        )
        test = next(
            (
                t
                for t in compared.tests
                if t["noise_std"] == level and t["metric"] == "psnr" and t["reference"] == leader
                and t["method"] == other
            ),
            None,
        )  # fmt: skip
        classical_leads = leader == classical[0]
        item = {"level": level, "leader": leader, "other": other, "classical_leads": classical_leads}
        if test is None or not math.isfinite(test["t_p_holm"]):
            text = (
                f"At noise std {level:g} {method_label(leader)} has the higher mean PSNR "
                f"({means[leader]:.2f} dB against {means[other]:.2f} dB for {method_label(other)}, "
                f"{count} test images), but no test of the difference was possible."
            )
            findings.append({**item, "shown": False, "difference": math.nan, "p": math.nan, "text": text})
            continue
        unit = "image" if test["test_method"] == _clustered().T_METHOD else compared.unit
        interval = (
            f" [{test['difference_low']:+.2f}, {test['difference_high']:+.2f}]"
            if math.isfinite(test["difference_low"])
            else ""
        )
        shown = test["mean_difference"] > 0 and difference_shown(test)
        kind = "classical method" if classical_leads else "network"
        if shown:
            text = (
                f"At noise std {level:g} a {kind} wins: {method_label(leader)} beats {method_label(other)} "
                f"by {test['mean_difference']:+.2f} dB PSNR{interval} (mean of {test['groups']} {unit} "
                f"means, paired t-test, Holm p = {_format_p(test['t_p_holm'])}; ranking on {count} test "
                "images: " + " > ".join(f"{method_label(m)} {v:.2f}" for m, v in order if m != "noisy") + ")."
            )
        else:
            text = (
                f"At noise std {level:g} no difference is shown between the best network and the best "
                f"classical method: {method_label(leader)} {means[leader]:.2f} dB against "
                f"{method_label(other)} {means[other]:.2f} dB, difference {test['mean_difference']:+.2f} dB"
                f"{interval} (paired t-test, Holm p = {_format_p(test['t_p_holm'])}, {count} test images)."
            )
        if classical_leads and shown:
            text += f" {_budget_text(collection, level)}"
        findings.append(
            {
                **item,
                "shown": shown,
                "difference": test["mean_difference"],
                "low": test["difference_low"],
                "high": test["difference_high"],
                "p": test["t_p_holm"],
                "text": text,
            }
        )
    return findings


def _budget_text(collection: Collection, level: float) -> str:
    """The networks' training budget at `level` (optimizer steps, epochs, training images) from the runs'
    summary files: the likely reason a network trails a classical filter."""
    steps, epochs = set(), set()
    for evaluation in collection.networks():
        history = collection.history(evaluation)
        if evaluation.noise_std == level and evaluation.strategy == "single" and history is not None:
            if history.global_steps is not None:
                steps.add(history.global_steps)
            if history.epochs_run is not None:
                epochs.add(history.epochs_run)
    data = collection.plan.get("data") or next(
        (e.info["data"] for e in collection.evaluations if e.info.get("data")), {}
    )
    images = (data.get("counts") or {}).get("train")

    def span(values: set[int]) -> str:
        return f"{min(values)}" if len(values) == 1 else f"{min(values)}-{max(values)}"

    parts = []
    if steps:
        parts.append(f"{span(steps)} optimizer steps")
    if epochs:
        parts.append(f"{span(epochs)} epochs")
    if images:
        parts.append(f"{images} training images")
    budget = ", ".join(parts) if parts else "a budget not recorded here"
    return (
        f"The networks were trained with {budget} (the paper: about 23,000 steps on 7,500 images); this "
        "small training budget is the likely reason, not evidence that the networks cannot do better."
    )


def _tests_table(
    tests: list[dict[str, Any]], unit: str = "patient", unknown_ids: bool = False, seeds: Sequence[int] = ()
) -> TableResult:
    columns = [
        "Noise std",
        "Compared",
        "Metric",
        "Images",
        "Groups",
        "Mean difference [95% CI]",
        "Effect size (d_z)",
        "p (t, Holm)",
        "p (Wilcoxon, Holm)",
        "Tests agree",
    ]
    display = []
    for test in tests:
        display.append(
            [
                f"{test['noise_std']:g}",
                f"{method_label(test['reference'])} vs {method_label(test['method'])}",
                METRIC_HEADERS[test["metric"]],
                str(test["images"]),
                str(test["groups"]),
                _difference_text(test),
                "n/a" if math.isnan(test["effect_size"]) else f"{test['effect_size']:.2f}",
                _format_p(test["t_p_holm"]),
                _format_p(test["wilcoxon_p_holm"]),
                _agreement(test),
            ]
        )
    notes = [
        "Mean difference = reference minus method on the same images: the mean over "
        f"{unit}s of each {unit}'s mean difference when {unit}s repeat (every {unit} weighs the same), else "
        "over images; d_z = mean difference / sd of the same differences, so it has the difference's sign. "
        + _clustered().describe_tests([t["test_method"] for t in tests], unit, ids_unknown=unknown_ids)
        + " 'Tests agree': whether the t-test and the Wilcoxon test reach the same decision at "
        f"p < {SIGNIFICANCE_LEVEL} after Holm."
    ]
    powerless = [t for t in tests if t.get("wilcoxon_cannot_decide")]
    if powerless:
        notes.append(
            f"{POWERLESS_CELL}: in {len(powerless)} of {len(tests)} rows the Wilcoxon test cannot reach p < "
            f"{SIGNIFICANCE_LEVEL} whatever the data (with n paired units and Holm over m tests its smallest "
            "possible p is m x 2 / 2^n), so only the t-test and the interval decide there."
        )
    seed_note = _clustered().describe_seeds(seeds, unit)
    if seed_note:
        notes.append(seed_note)
    return TableResult(Table(columns, display, "Paired tests behind Table VI", notes), tests)


def _difference_text(test: dict[str, Any], digits: int = 4) -> str:
    if math.isnan(test.get("difference_low", math.nan)):
        return f"{test['mean_difference']:+.{digits}f} [n/a]"
    return (
        f"{test['mean_difference']:+.{digits}f} "
        f"[{test['difference_low']:+.{digits}f}, {test['difference_high']:+.{digits}f}]"
    )


POWERLESS_CELL = "n/a†"


def _agreement(test: dict[str, Any]) -> str:
    """'yes' only when both tests ran; a test that could not run agrees with nothing."""
    if any(math.isnan(test[key]) for key in ("t_p_holm", "wilcoxon_p_holm")):
        return "n/a (no test)"
    if test.get("wilcoxon_cannot_decide"):
        return POWERLESS_CELL
    return "no: read as uncertain" if test["tests_disagree"] else "yes"


def _format_p(p: float) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    return "< 1e-4" if p < 1e-4 else f"{p:.4f}"


# -- U-Net++ heads -------------------------------------------------------------------------------------------


def table_heads(collection: Collection) -> TableResult | None:
    """Quality and speed of each U-Net++ head (the pruned networks), one device, first seed."""
    display, csv_rows = [], []
    runs = [e for e in collection.networks() if e.info.get("heads") and e.strategy == "single"]
    for evaluation in sorted(runs, key=lambda e: (e.noise_std, method_sort_key(e.method), e.seed or 0)):
        for head in evaluation.info["heads"]:
            display.append(
                [
                    f"{evaluation.noise_std:g}",
                    method_label(evaluation.method),
                    str(evaluation.seed if evaluation.seed is not None else ""),
                    str(head["head"]),
                    str(head.get("parameters", "n/a")),
                    format_mean(head["psnr_mean"], "psnr"),
                    format_mean(head["ssim_mean"], "ssim"),
                    f"{head['images_per_second']:.1f}",
                ]
            )
            csv_rows.append(
                {
                    "noise_std": evaluation.noise_std,
                    "method": evaluation.method,
                    "seed": evaluation.seed,
                    **head,
                }
            )
    if not display:
        return None
    columns = ["Noise std", "Model", "Seed", "Head", "Parameters used", "PSNR (dB)", "SSIM", "Images/s"]
    notes = [
        "Head k runs only the nodes X^{i,j} with i + j <= k (U-Net++ 'pruning'); means from per_head.csv; "
        "images/s measured by `evaluate` on its device (see the hardware section)."
    ]
    return TableResult(Table(columns, display, "U-Net++ heads: quality and inference speed", notes), csv_rows)


# -- Robustness: networks tested at other noise levels ---------------------------------------------------


ROBUSTNESS_TITLE = "Robustness to other noise levels"


def table_robustness(collection: Collection) -> TableResult | None:
    """Networks tested away from the noise level they were trained at (`evaluate --noise-std`), each beside
    the same model trained at the tested level on the same images: the difference (tested-away minus
    trained-there) on patient means with its interval and paired t-test, Holm over the table."""
    if not collection.robustness:
        return None
    unit = collection.cluster_unit()
    away = group_by(collection.robustness, "method", "noise_std")
    own = {key: pool_runs(runs) for key, runs in paper_like_singles(collection).items()}
    noisy = {e.noise_std: e for e in collection.baselines() if e.method == "noisy"}
    tests, entries = [], []
    for (method, tested), runs in sorted(away.items(), key=lambda item: (item[0][0], item[0][1])):
        pooled = pool_runs(runs)
        trained = float(runs[0].info["trained_noise_std"])
        entry = {"method": method, "trained": trained, "tested": tested, "pooled": pooled, "test": None}
        reference = own.get((method, tested))
        if reference is not None:
            first, second = _aligned(pooled, reference)
            groups = _aligned_groups(pooled, reference)
            if first["psnr"].size >= 2:
                test = paired_test(first["psnr"], second["psnr"], groups, unit)
                test = add_seed_interval(test, pooled, reference, "psnr")
                entry["test"], entry["reference_psnr"] = test, float(np.mean(second["psnr"]))
                tests.append(test)
        entries.append(entry)
    add_holm(tests)
    columns = ["Model", "Trained at", "Tested at", "Images", "PSNR (dB)", "Trained at the tested level (dB)",
               "Difference (dB) [95% CI]", "Holm p", "Noisy input (dB)"]  # fmt: skip
    display, csv_rows = [], []
    for entry in entries:
        pooled, test = entry["pooled"], entry["test"]
        summary = interval(pooled.values["psnr"], pooled.group_ids, unit)
        noisy_eval = noisy.get(entry["tested"])
        noisy_psnr = float(np.mean(noisy_eval.values("psnr"))) if noisy_eval is not None else math.nan
        difference = "n/a (no network trained at this level)"
        if test is not None:
            difference = f"{test['mean_difference']:+.2f}" + (
                f" [{test['difference_low']:+.2f}, {test['difference_high']:+.2f}]"
                if math.isfinite(test["difference_low"])
                else " [CI n/a]"
            )
        display.append(
            [
                method_label(entry["method"]),
                f"{entry['trained']:g}",
                f"{entry['tested']:g}",
                str(len(pooled.image_ids)),
                format_interval(summary, "psnr"),
                f"{entry['reference_psnr']:.2f}" if test is not None else "n/a",
                difference,
                _format_p(test["t_p_holm"]) if test is not None else "",
                "n/a" if math.isnan(noisy_psnr) else f"{noisy_psnr:.2f}",
            ]
        )
        csv_rows.append(
            {
                "method": entry["method"],
                "trained_noise_std": entry["trained"],
                "tested_noise_std": entry["tested"],
                "images": len(pooled.image_ids),
                "psnr_mean": summary["mean"],
                "psnr_low": summary["low"],
                "psnr_high": summary["high"],
                "reference_psnr_mean": entry.get("reference_psnr", math.nan),
                "difference": test["mean_difference"] if test else math.nan,
                "difference_low": test["difference_low"] if test else math.nan,
                "difference_high": test["difference_high"] if test else math.nan,
                "t_p_holm": test["t_p_holm"] if test else math.nan,
                "shown": bool(test and difference_shown(test)),
                "noisy_psnr_mean": noisy_psnr,
            }
        )
    notes = [
        "Each row: a network tested at another noise std than it was trained at (same mean, clamp and fixed "
        "test noise), beside the same model trained at the tested level, on the same test images. "
        "Difference: tested-away minus trained-there, on "
        f"{unit} means (paired t-test, Holm over this table).",
        _clustered().describe_tests(
            [t["test_method"] for t in tests], unit, ids_unknown=ids_unknown(collection)
        ),
    ]
    notes = [note for note in notes if note]
    return TableResult(
        Table(columns, display, "Robustness: trained at one noise level, tested at others", notes), csv_rows
    )


def paper_like_singles(collection: Collection) -> dict[tuple, list[Evaluation]]:
    """(method, noise_std) -> one-device seed runs of every network trained on clean targets."""
    chosen = [e for e in collection.networks() if e.strategy == "single"]
    return group_by(chosen, "method", "noise_std")
