"""The paper's Tables III-VI (and the U-Net++ head table) from the per-image rows of a `Collection`.

Every cell is an aggregate of per-image values read from `per_image.csv` files (means, t-intervals, paired
tests from `meddenoise.metrics.stats`) or a time recorded by the training engine; nothing is re-measured. Each
table comes with its full-precision rows, written next to the report as CSV.

When a configuration was trained with several seeds, an image's value is first averaged over the seeds (the
images stay the independent units of the interval), and the spread of the per-seed means is shown beside it.
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


def pool_runs(runs: Sequence[Evaluation]) -> Pooled:
    """Average each image's metrics over the seed runs of one configuration (they must share their images)."""
    runs = sorted(runs, key=lambda e: (e.seed if e.seed is not None else -1, str(e.folder)))
    image_ids = runs[0].image_ids()
    for run in runs[1:]:
        if sorted(run.image_ids()) != sorted(image_ids):
            raise ValueError(f"{run.folder} was evaluated on other images than {runs[0].folder}")
    values, seed_means = {}, {}
    for metric in QUALITY_METRICS:
        stacked = []
        for run in runs:
            by_id = dict(zip(run.image_ids(), run.values(metric)))
            stacked.append(np.array([by_id[i] for i in image_ids]))
        matrix = np.vstack(stacked)  # (runs, n)
        values[metric] = matrix.mean(axis=0)
        seed_means[metric] = [float(row.mean()) for row in matrix]
    return Pooled(image_ids, runs[0].patient_ids(), values, seed_means, list(runs))


def _stats():
    from meddenoise.metrics import stats

    return stats


def interval(values: np.ndarray, patient_ids: Sequence[str]) -> dict[str, float]:
    """Mean and 95% t-interval over the finite values; with repeated patients also the patient-bootstrap
    interval (`meddenoise.metrics.stats`)."""
    stats = _stats()
    finite = np.isfinite(values)
    if not finite.any():
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    t_interval = stats.mean_ci(values[finite])
    result = {"mean": t_interval.mean, "low": t_interval.low, "high": t_interval.high, "n": t_interval.n}
    patients = [str(p) for p, keep in zip(patient_ids, finite) if keep]
    if len(set(patients)) < len(patients):
        bootstrap = stats.cluster_bootstrap_ci(values[finite], patients)
        result.update(bootstrap_low=bootstrap.low, bootstrap_high=bootstrap.high)
    return result


def paired_comparison(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Paired t-test and Wilcoxon signed-rank of a - b over the same images, with the effect sizes."""
    result = _stats().paired_comparison(a, b)
    return {
        "mean_difference": result.mean_difference,
        "effect_size": result.cohens_dz,
        "rank_biserial": result.rank_biserial,
        "t_p": result.t_pvalue,
        "wilcoxon_p": result.wilcoxon_pvalue,
    }


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    return [float(p) for p in _stats().holm_adjust(list(p_values))]


def format_interval(summary: dict[str, float], metric: str) -> str:
    if summary["n"] == 0 or math.isnan(summary["mean"]):
        return "n/a"
    digits = METRIC_DIGITS[metric]
    if math.isnan(summary["low"]):  # one image: no interval
        return f"{summary['mean']:.{digits}f}"
    half = (summary["high"] - summary["low"]) / 2.0
    return f"{summary['mean']:.{digits}f} (±{half:.{digits}f})"


def format_mean(value: float, metric: str, extra_digit: bool = False) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.{METRIC_DIGITS[metric] + (1 if extra_digit else 0)}f}"


def format_seconds(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.1f}"


def _configurations(collection: Collection, strategy_filter) -> dict[tuple, list[Evaluation]]:
    chosen = [e for e in collection.evaluations if strategy_filter(e)]
    return group_by(chosen, "method", "noise_std", "strategy")


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
    several_seeds = any(len(p.runs) > 1 for p in pooled.values())
    comparisons = _paired_between_models(pooled)
    columns = ["Noise std", "Model", "Images", *[METRIC_HEADERS[m] for m in QUALITY_METRICS]]
    if several_seeds:
        columns += ["Runs", "PSNR over runs (mean ± sd)"]
    display, csv_rows = [], []
    for key in sorted(pooled, key=lambda k: (k[1], method_sort_key(k[0]))):
        method, noise_std, _ = key
        runs = pooled[key]
        cells = [f"{noise_std:g}", method_label(method)]
        row: dict[str, Any] = {"noise_std": noise_std, "method": method, "runs": len(runs.runs)}
        cells.append(str(len(runs.image_ids)))
        row["images"] = len(runs.image_ids)
        for metric in QUALITY_METRICS:
            summary = interval(runs.values[metric], runs.patient_ids)
            cell = format_interval(summary, metric)
            mark = comparisons.get((noise_std, method, metric))
            cells.append(cell + (mark or ""))
            row.update({f"{metric}_{k}": v for k, v in summary.items()})
        if several_seeds:
            cells += [str(len(runs.runs)), _seed_spread(runs, "psnr")]
        display.append(cells)
        csv_rows.append(row)
    notes = [
        "Mean over the test images with the half-width of the 95% t-interval in brackets "
        "(the paper's format). * marks the better of U-Net and U-Net++ at that noise level when the paired "
        f"Wilcoxon signed-rank test on the same images, Holm-corrected across this table, gives p < "
        f"{SIGNIFICANCE_LEVEL}."
    ]
    if several_seeds:
        notes.append(
            "With several seeds, each image's value is the mean over the runs; 'PSNR over runs' is "
            "the mean and standard deviation of the per-run means (spread across training runs)."
        )
    table = Table(columns, display, "Table III. Denoising quality on the test set (one device)", notes)
    return TableResult(table, csv_rows)


def _paired_between_models(pooled: dict[tuple, Pooled]) -> dict[tuple, str]:
    """Marks for Table III: U-Net vs U-Net++ per noise level and metric, Holm across all of them."""
    tests = []
    levels = sorted({key[1] for key in pooled})
    for level in levels:
        pair = [pooled.get((m, level, "single")) for m in PAPER_MODELS]
        if None in pair:
            continue
        first, second = _aligned(pair[0], pair[1])
        for metric in QUALITY_METRICS:
            a, b = first[metric], second[metric]
            if not (np.isfinite(a).all() and np.isfinite(b).all()) or a.size < 2:
                continue
            result = paired_comparison(a, b)
            better = PAPER_MODELS[0] if (a.mean() > b.mean()) == HIGHER_IS_BETTER[metric] else PAPER_MODELS[1]
            tests.append(((level, better, metric), result["wilcoxon_p"]))
    adjusted = holm_adjust([p for _, p in tests]) if tests else []
    return {key: "*" for (key, _), p in zip(tests, adjusted) if p < SIGNIFICANCE_LEVEL}


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


def table_speedup(collection: Collection, skipped: Sequence[dict[str, str]] = ()) -> TableResult:
    """Table V: training-time reduction of DP and DDP+AMP against one device, per model and noise level."""
    configurations = _configurations(collection, lambda e: e.kind == "network" and e.method in PAPER_MODELS)
    columns = ["Model", "Noise std", "Setup", "PSNR (dB)", "SSIM", "LPIPS", "TT (s)", "TS (%)", "Speed-up"]
    display, csv_rows = [], []
    groups: dict[tuple, list[str]] = {}
    for method, noise_std, strategy in configurations:
        groups.setdefault((method, noise_std), []).append(strategy)
    for method, noise_std in sorted(groups, key=lambda k: (method_sort_key(k[0]), k[1])):
        baseline = _mean_train_seconds(collection, configurations.get((method, noise_std, "single"), []))
        for strategy in sorted(groups[(method, noise_std)], key=strategy_sort_key):
            runs = configurations[(method, noise_std, strategy)]
            pooled = pool_runs(runs)
            seconds = _mean_train_seconds(collection, runs)
            reduction = speedup = None
            if baseline and seconds:
                reduction = 100.0 * (1.0 - seconds / baseline)
                speedup = baseline / seconds
            means = {m: float(np.mean(pooled.values[m])) for m in QUALITY_METRICS}
            display.append(
                [
                    method_label(method),
                    f"{noise_std:g}",
                    strategy_label(strategy),
                    format_mean(means["psnr"], "psnr", extra_digit=True),
                    format_mean(means["ssim"], "ssim"),
                    format_mean(means["lpips"], "lpips"),
                    format_seconds(seconds),
                    "n/a" if reduction is None else f"{reduction:.2f}%",
                    "n/a" if speedup is None else f"{speedup:.2f}x",
                ]
            )
            csv_rows.append(
                {
                    "method": method,
                    "noise_std": noise_std,
                    "strategy": strategy,
                    "train_seconds": seconds,
                    "time_saving_percent": reduction,
                    "speedup": speedup,
                }
            )
    notes = [
        "TS (time saving) = 100 x (1 - TT / TT of one device), the paper's definition; speed-up = "
        "TT of one device / TT. Timings compare only within one machine under the same load."
    ]
    notes += [f"Not run: {item['what']}: {item['reason']}" for item in skipped]
    table = Table(
        columns, display, "Table V. Training-time saving of DP and DDP+AMP against one device", notes
    )
    return TableResult(table, csv_rows)


# -- Table VI ------------------------------------------------------------------------------------------------


def baseline_configurations(collection: Collection) -> dict[tuple, list[Evaluation]]:
    """(method, noise_std) -> runs for every method evaluated on the test images: classical baselines and
    networks trained on one device."""
    chosen = [e for e in collection.evaluations if e.kind == "baseline" or e.strategy == "single"]
    return group_by(chosen, "method", "noise_std")


def table_baselines(collection: Collection) -> tuple[TableResult, TableResult]:
    """Table VI (methods x noise levels, PSNR / SSIM) and the paired tests behind its marks.

    In each noise level every method is compared with the best one (highest mean PSNR) on the same images:
    paired t-test and Wilcoxon signed-rank on per-image PSNR and on SSIM; Holm over every test in the table.
    """
    configurations = {key: pool_runs(runs) for key, runs in baseline_configurations(collection).items()}
    levels = sorted({key[1] for key in configurations})
    methods = sorted({key[0] for key in configurations}, key=method_sort_key)
    best = {}
    for level in levels:
        present = [m for m in methods if (m, level) in configurations]
        best[level] = max(present, key=lambda m: float(np.mean(configurations[(m, level)].values["psnr"])))
    tests = []
    for level in levels:
        reference = configurations[(best[level], level)]
        for method in methods:
            if method == best[level] or (method, level) not in configurations:
                continue
            first, second = _aligned(reference, configurations[(method, level)])
            for metric in ("psnr", "ssim"):
                if first[metric].size < 2:
                    continue
                result = paired_comparison(first[metric], second[metric])
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
    for key in ("t_p", "wilcoxon_p"):
        adjusted = holm_adjust([t[key] for t in tests]) if tests else []
        for test, p in zip(tests, adjusted):
            test[f"{key}_holm"] = p
    worse = {
        (t["noise_std"], t["method"], t["metric"]) for t in tests if t["wilcoxon_p_holm"] < SIGNIFICANCE_LEVEL
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
            csv_rows.append(
                {
                    "method": method,
                    "noise_std": level,
                    "psnr_mean": psnr_mean,
                    "ssim_mean": ssim_mean,
                    "images": len(runs.image_ids),
                    "best": method == best[level],
                }
            )
        display.append(cells)
    notes = [
        "All methods on the same test images with the same fixed noise; networks trained on one device. "
        "Bold: highest mean PSNR at that noise level. †: significantly worse than the bold method (paired "
        f"Wilcoxon signed-rank test, Holm-corrected over all {len(tests)} tests of this table, "
        f"p < {SIGNIFICANCE_LEVEL})."
    ]
    full = max(len(pooled.image_ids) for pooled in configurations.values())
    for (method, level), pooled in sorted(configurations.items(), key=lambda item: item[0][1]):
        if len(pooled.image_ids) < full:
            notes.append(
                f"{method_label(method)} at std {level:g}: {len(pooled.image_ids)} of {full} test images "
                "(a fixed subset, the same for every level); its mean and its paired tests use those only."
            )
    table = Table(columns, display, "Table VI. Baselines and networks on the same test images", notes)
    return TableResult(table, csv_rows), _tests_table(tests)


def _tests_table(tests: list[dict[str, Any]]) -> TableResult:
    columns = [
        "Noise std",
        "Compared",
        "Metric",
        "Images",
        "Mean difference",
        "Effect size (d_z)",
        "p (t)",
        "p (Wilcoxon)",
        "p (Wilcoxon, Holm)",
    ]
    display = []
    for test in tests:
        display.append(
            [
                f"{test['noise_std']:g}",
                f"{method_label(test['reference'])} vs {method_label(test['method'])}",
                METRIC_HEADERS[test["metric"]],
                str(test["images"]),
                f"{test['mean_difference']:+.4f}",
                f"{test['effect_size']:.2f}",
                _format_p(test["t_p"]),
                _format_p(test["wilcoxon_p"]),
                _format_p(test["wilcoxon_p_holm"]),
            ]
        )
    notes = [
        "Mean difference = reference minus method, over the same images; d_z = mean difference / sd of "
        "the differences."
    ]
    return TableResult(Table(columns, display, "Paired tests behind Table VI", notes), tests)


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
