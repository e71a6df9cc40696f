"""The report section "Training without clean images at the receiving site".

For every noise level, each clean-free training target of the U-Net (noise2noise, neighbor2neighbor, r2r, ...)
is set against the supervised U-Net trained at the same level with the same settings: PSNR/SSIM with their
95% intervals, and the gap to supervised as the mean paired difference (mode minus supervised) on the same
test images, with its interval and the paired t-test p (Wilcoxon beside it), Holm-corrected over every test in
the table; intervals and tests are cluster-aware (`meddenoise.metrics.clustered`).
Every value is aggregated from the runs' `per_image.csv`; the copies each mode needs come from the evaluation
record (`target_copies`, written by `evaluate` from the registered target).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from meddenoise.report.collect import Collection, Evaluation, group_by, method_label
from meddenoise.report.document import Block, Heading, Paragraph, Table
from meddenoise.report.tables import (
    Pooled,
    TableResult,
    _aligned,
    _aligned_groups,
    _clustered,
    _disagreement_notes,
    _format_p,
    add_holm,
    add_seed_interval,
    format_interval,
    ids_unknown,
    interval,
    interval_notes,
    paired_test,
    pool_runs,
    seed_counts,
)

SUPERVISED_MODEL = "unet"
SECTION_TITLE = "Training without clean images at the receiving site"
TABLE_CAPTION = "Clean-free training targets against supervised U-Net"
GAP_METRICS = ("psnr", "ssim")


def clean_free_configurations(collection: Collection) -> dict[tuple[str, float], list[Evaluation]]:
    """(method, noise_std) -> one-device U-Net runs: supervised (`unet`) and every `unet+<target>`."""
    chosen = [
        e
        for e in collection.networks()
        if e.strategy == "single"
        and (e.method == SUPERVISED_MODEL or e.method.startswith(f"{SUPERVISED_MODEL}+"))
    ]
    return group_by(chosen, "method", "noise_std")


def _copies(runs: list[Evaluation]) -> str:
    found = {run.info.get("target_copies") for run in runs}
    return str(found.pop()) if len(found) == 1 and None not in found else "not recorded"


def _gap_tests(configurations: dict[tuple, Pooled], unit: str = "patient") -> list[dict[str, Any]]:
    """Paired mode-minus-supervised comparisons on the common images (cluster-aware), Holm-corrected over
    all of them: the paired t-test is primary, the Wilcoxon signed-rank test secondary."""
    tests = []
    for (method, level), pooled in sorted(configurations.items(), key=lambda item: (item[0][1], item[0][0])):
        supervised = configurations.get((SUPERVISED_MODEL, level))
        if method == SUPERVISED_MODEL or supervised is None:
            continue
        mode_values, supervised_values = _aligned(pooled, supervised)
        groups = _aligned_groups(pooled, supervised)
        for metric in GAP_METRICS:
            if mode_values[metric].size < 2:
                continue
            result = paired_test(mode_values[metric], supervised_values[metric], groups, unit)
            result = add_seed_interval(result, pooled, supervised, metric)
            tests.append(
                {
                    "noise_std": level,
                    "reference": method,
                    "method": SUPERVISED_MODEL,
                    "metric": metric,
                    "images": len(groups),
                    "gap": float(result["mean_difference"]),
                    "gap_low": float(result["difference_low"]),
                    "gap_high": float(result["difference_high"]),
                    **result,
                }
            )
    add_holm(tests)
    return tests


def _gap_text(test: dict[str, Any] | None, digits: int) -> str:
    if test is None:
        return "n/a"
    if np.isnan(test["gap_low"]):
        return f"{test['gap']:+.{digits}f} [CI n/a]"
    return f"{test['gap']:+.{digits}f} [{test['gap_low']:+.{digits}f}, {test['gap_high']:+.{digits}f}]"


def _noisy_inputs(collection: Collection) -> dict[float, Pooled]:
    """The `noisy` baseline (the obfuscated image itself) per noise level, when it was evaluated."""
    grouped = group_by([e for e in collection.baselines() if e.method == "noisy"], "noise_std")
    return {key[0]: pool_runs(runs) for key, runs in grouped.items()}


def _gain_over_noisy(pooled: Pooled, noisy: Pooled | None) -> float:
    """Mean over the common images of (output PSNR minus noisy-input PSNR)."""
    if noisy is None:
        return np.nan
    output, released = _aligned(pooled, noisy)
    return float(np.mean(output["psnr"] - released["psnr"])) if output["psnr"].size else np.nan


def table_clean_free(collection: Collection) -> TableResult | None:
    """One row per noise level and training target (supervised first); None without any clean-free run."""
    grouped = clean_free_configurations(collection)
    if not any(method != SUPERVISED_MODEL for method, _ in grouped):
        return None
    configurations = {key: pool_runs(runs) for key, runs in grouped.items()}
    noisy_inputs = _noisy_inputs(collection)
    unit = collection.cluster_unit()
    unknown = ids_unknown(collection)
    test_list = _gap_tests(configurations, unit)
    tests = {(t["noise_std"], t["reference"], t["metric"]): t for t in test_list}
    columns = [
        "Noise std",
        "Training target",
        "Copies per image",
        "Images",
        "PSNR (dB)",
        "SSIM",
        "Gain over noisy input (dB)",
        "PSNR gap (dB) [95% CI]",
        "p (PSNR, t, Holm)",
        "SSIM gap [95% CI]",
        "p (SSIM, t, Holm)",
    ]
    display, csv_rows, all_summaries = [], [], []
    for level in sorted({level for _, level in configurations}):
        methods = sorted(m for m, lv in configurations if lv == level)
        methods.sort(key=lambda m: (m != SUPERVISED_MODEL, m))
        for method in methods:
            pooled = configurations[(method, level)]
            summaries = {m: interval(pooled.values[m], pooled.group_ids, unit) for m in GAP_METRICS}
            all_summaries += [summary for summary in summaries.values() if summary["n"]]
            target = method.partition("+")[2] or "clean"
            psnr_test, ssim_test = (tests.get((level, method, m)) for m in GAP_METRICS)
            is_reference = method == SUPERVISED_MODEL
            gain = _gain_over_noisy(pooled, noisy_inputs.get(level))
            display.append(
                [
                    f"{level:g}",
                    "clean (supervised, the paper)" if is_reference else target,
                    _copies(grouped[(method, level)]),
                    str(len(pooled.image_ids)),
                    format_interval(summaries["psnr"], "psnr"),
                    format_interval(summaries["ssim"], "ssim"),
                    "n/a" if np.isnan(gain) else f"{gain:+.2f}",
                    "reference" if is_reference else _gap_text(psnr_test, 2),
                    "" if is_reference else _format_p(psnr_test["t_p_holm"]) if psnr_test else "n/a",
                    "reference" if is_reference else _gap_text(ssim_test, 4),
                    "" if is_reference else _format_p(ssim_test["t_p_holm"]) if ssim_test else "n/a",
                ]
            )
            row: dict[str, Any] = {
                "noise_std": level,
                "method": method,
                "target": target,
                "copies": _copies(grouped[(method, level)]),
                "images": len(pooled.image_ids),
                "psnr_gain_over_noisy": gain,
            }
            for metric in GAP_METRICS:
                row[f"{metric}_mean"] = summaries[metric]["mean"]
                row[f"{metric}_low"] = summaries[metric]["low"]
                row[f"{metric}_high"] = summaries[metric]["high"]
                test = tests.get((level, method, metric))
                for key in ("gap", "gap_low", "gap_high", "t_p", "t_p_holm", "wilcoxon_p", "wilcoxon_p_holm"):
                    row[f"{metric}_{key}"] = test[key] if test else np.nan
            csv_rows.append(row)
    notes = [
        "PSNR/SSIM: mean over the test images with its 95% interval ((±half-width) for a t-interval, [low, "
        f"high] for a bootstrap interval). Gap: mode minus supervised U-Net at the same noise level on the "
        f"same images, as the mean over {unit}s of each {unit}'s mean difference when {unit}s repeat (every "
        f"{unit} weighs the same; else the mean over images), with its 95% t-interval; negative = worse than "
        f"supervised. p: paired t-test of the same per-{unit} differences (the interval excludes 0 exactly "
        f"when the unadjusted p < 0.05), Holm-corrected over all {len(test_list)} tests of this table (the "
        "Wilcoxon signed-rank p is in the CSV). Copies per image: independently obfuscated copies of each "
        "image the releasing site must publish for that mode. Gain over noisy input: mean over the same "
        "images of (output PSNR minus the PSNR of the released image itself, the `noisy` baseline).",
        *interval_notes(all_summaries, unit, unknown),
        _clustered().describe_tests([t["test_method"] for t in test_list], unit, ids_unknown=unknown),
        *_disagreement_notes(test_list),
    ]
    seeds = _clustered().describe_seeds(seed_counts(list(configurations.values())), unit)
    if seeds:
        notes.append(seeds)
    missing = [
        f"{method_label(m)} at std {lv:g}"
        for m, lv in configurations
        if m != SUPERVISED_MODEL and (SUPERVISED_MODEL, lv) not in configurations
    ]
    if missing:
        notes.append("No supervised U-Net at the same level, so no gap for: " + ", ".join(missing) + ".")
    return TableResult(Table(columns, display, TABLE_CAPTION, notes), csv_rows)


def _settings_sentence(collection: Collection) -> str:
    """Which target options the clean-free runs used (from their evaluation records)."""
    options = sorted(
        {
            f"{e.method.partition('+')[2]}: {', '.join(e.info.get('target_options') or []) or 'defaults'}"
            for e in collection.networks()
            if e.method.startswith(f"{SUPERVISED_MODEL}+") and e.strategy == "single"
        }
    )
    return "Target options: " + "; ".join(options) + "." if options else ""


SELECTION_TEXT = {
    "released": "the epoch with the lowest loss of the mode's own target on held-out released (obfuscated) "
    "validation copies, which a receiving site can compute: no clean image chose it",
    "clean": "the epoch with the lowest validation loss against clean validation images, which a real "
    "receiving site would not have",
    "": "the epoch with the lowest validation loss against clean validation images (these runs do not "
    "record their rule; runs made before the rule was recorded always used this one), which a real "
    "receiving site would not have",
}


def _selection_sentence(collection: Collection) -> str:
    """Which checkpoint of each clean-free run was tested, from the rule each run recorded."""
    rules: dict[str, list[str]] = {}
    for evaluation in collection.networks():
        if evaluation.method.startswith(f"{SUPERVISED_MODEL}+") and evaluation.strategy == "single":
            history = collection.history(evaluation)
            rule = history.selection if history is not None else ""
            rules.setdefault(rule if rule in SELECTION_TEXT else "", []).append(evaluation.method)
    if len(rules) == 1:
        return f"The checkpoint kept for testing is {SELECTION_TEXT[next(iter(rules))]}."
    parts = [
        f"{', '.join(sorted(set(method_label(m) for m in methods)))}: {SELECTION_TEXT[rule]}"
        for rule, methods in sorted(rules.items())
    ]
    return "The checkpoint kept for testing is, per run: " + "; ".join(parts) + "."


def clean_free_section(collection: Collection, table: TableResult | None) -> list[Block]:
    if table is None:
        return []
    blocks: list[Block] = [
        Heading(2, SECTION_TITLE),
        Paragraph(
            "Here the receiving site trains the U-Net without ever holding a clean image: noise2noise maps "
            "one obfuscated copy of an image to a second, independently obfuscated copy; neighbor2neighbor "
            "and r2r (Recorrupted-to-Recorrupted) need a single copy. Each mode used the same network, "
            "epochs, batch size, learning rate and schedule as the supervised U-Net at that noise level. "
            "Clean images were used only for evaluation (validation scores and the test scores below); the "
            "training step of these modes receives no clean tensor. " + _selection_sentence(collection)
        ),
        table.table,
    ]
    sentence = _settings_sentence(collection)
    if sentence:
        blocks.append(Paragraph(sentence))
    return blocks
