"""Words from the audit's numbers: the console table, the verdict sentences and the Markdown report section.

Every sentence is a template filled with measured figures; a claim without a figure is not written.
"""

from __future__ import annotations

from typing import Any


def _pct(value: float) -> str:
    return f"{100.0 * value:.1f}%"


def _chance_pct(value: float) -> str:
    return f"{100.0 * value:.2g}%" if value < 0.01 else _pct(value)


def _has_interval(rate: dict[str, Any]) -> bool:
    low, high = rate["top1_interval"]
    return low == low and high == high  # NaN bounds: no interval (fewer than 2 patients)


def _interval(rate: dict[str, Any], key: str = "top1_interval") -> str:
    """'95% CI a-b, by patient' naming the method; 'no 95% CI: reason' when there is none."""
    low, high = rate[key]
    method = rate.get("interval_method", "wilson")
    if low != low or high != high:
        return f"no 95% CI: {rate.get('interval_note') or 'too few patients'}"
    if method == "group-bootstrap":
        unit = rate.get("unit", "patient")
        return f"95% CI {_pct(low)}-{_pct(high)}, bootstrap over {rate.get('groups')} {unit}s"
    if method == "group-wilson":
        unit = rate.get("unit", "patient")
        return (
            f"95% CI {_pct(low)}-{_pct(high)}, Wilson over {rate.get('groups')} {unit}s (all queries of a "
            f"{unit} agree, so each {unit} counts once)"
        )
    return f"95% CI {_pct(low)}-{_pct(high)}"


def _per_patient(rate: dict[str, Any]) -> str:
    """', per-patient average 41.0%' when some patient (group) has several queries."""
    groups = rate.get("groups") or rate.get("queries")
    if not groups or groups >= rate.get("queries", 0) or "per_group_top1" not in rate:
        return ""
    unit = rate.get("unit", "patient")
    return f", {_pct(rate['per_group_top1'])} averaged per {unit} ({groups} {unit}s)"


def _mean(entry: dict[str, Any], metric: str) -> float:
    return float(entry[metric]["mean"])


def level_sentences(level: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """The verdict for one noise level, one sentence per measurement."""
    std = level["noise_std"]
    distortion = level["distortion"]
    released = distortion["obfuscated"]
    one_copy, two_copies = (
        _mean(distortion["mean_removed"], "psnr"),
        _mean(distortion["two_copy_average"], "psnr"),
    )
    lines = [
        f"Released image (std {std:g}, mean {level['noise_mean']:g}): PSNR {_mean(released, 'psnr'):.2f} dB,"
        f" SSIM {_mean(released, 'ssim'):.3f} against the original; subtracting the known mean gives"
        f" {one_copy:.2f} dB; averaging the two copies that noise2noise training needs gives"
        f" {two_copies:.2f} dB ({two_copies - one_copy:+.2f} dB over one copy)."
    ]
    link = level["linkage"]
    lines.append(
        f"Linkage: the matcher ranks the original first for {_pct(link['top1'])} of {link['queries']}"
        f" obfuscated queries ({_interval(link)}{_per_patient(link)}) among {link['gallery']} clean images,"
        f" chance {_chance_pct(link['chance_top1'])}; top-5 {_pct(link['top5'])}"
        f" (chance {_chance_pct(link['chance_top5'])})."
    )
    reid = level["reidentification"]
    if "skipped" in reid:
        lines.append(f"Re-identification: not measured: {reid['skipped']}.")
    else:
        clean = reference.get("reidentification_clean_queries", {})
        clean_text = f"; {_pct(clean['top1'])} with un-obfuscated queries" if "top1" in clean else ""
        lines.append(
            f"Re-identification: the nearest other image shows the same patient for {_pct(reid['top1'])} of"
            f" {reid['queries']} queries ({_interval(reid)}{_per_patient(reid)}), chance"
            f" {_chance_pct(reid['chance_top1'])}{clean_text}; top-5 {_pct(reid['top5'])}"
            f" (chance {_chance_pct(reid['chance_top5'])})."
        )
    for role, label in (
        ("receiver", "receiver's denoiser (trained on the pairs)"),
        ("outsider", "outsider's"),
    ):
        entry = level["reversal"].get(role, {})
        if "skipped" in entry or "psnr" not in entry:
            lines.append(f"Reversal by the {label}: not measured: {entry.get('skipped', 'no run given')}.")
            continue
        gain = _mean(entry, "psnr") - _mean(released, "psnr")
        lines.append(
            f"Reversal by the {label}{_training_note(entry)}: PSNR {_mean(entry, 'psnr'):.2f} dB"
            f" ({gain:+.2f} dB over the released image), SSIM {_mean(entry, 'ssim'):.3f}"
            f"{_beside_classical(entry, level['reversal'].get('classical', {}))}."
        )
    classical = level["reversal"].get("classical", {})
    if "psnr" in classical:
        lines.append(
            f"Reversal by a Gaussian filter (sigma {classical.get('params', {}).get('sigma', '?')}, tuned on"
            f" {classical.get('tuned_on', 'other images')}, no training): PSNR {_mean(classical, 'psnr'):.2f}"
            f" dB, SSIM {_mean(classical, 'ssim'):.3f} on the same queries."
        )
    return lines


def _beside_classical(entry: dict[str, Any], classical: dict[str, Any]) -> str:
    """'; a Gaussian filter gives 26.94 dB on the same queries[, as much or more: ...]'."""
    if "psnr" not in classical:
        return ""
    difference = _mean(entry, "psnr") - _mean(classical, "psnr")
    text = f"; a Gaussian filter gives {_mean(classical, 'psnr'):.2f} dB on the same queries"
    if difference <= 0:
        return text + f" ({-difference:.2f} dB more: the network restores no more than a plain filter here)"
    return text + f" ({difference:.2f} dB less than the network)"


def _training_note(entry: dict[str, Any]) -> str:
    """' (target noise2noise, trained at std 0.2)' from the run's metadata, when it is known."""
    parts = []
    if entry.get("target"):
        parts.append(f"target {entry['target']}")
    noise = entry.get("noise")
    if isinstance(noise, dict) and noise.get("std") is not None:
        parts.append(f"trained at std {float(noise['std']):g}")
    return f" ({', '.join(parts)})" if parts else ""


def summary_sentences(result: dict[str, Any]) -> list[str]:
    """What the obfuscation hides and what it does not, across all levels, from the extreme figures.

    A level counts as linkable when the lower end of its top-1 interval lies above chance.
    """
    levels = result["levels"]
    if not levels:
        return []
    highest = max(levels, key=lambda level: level["noise_std"])
    lines = [
        f"Hidden: pixel fidelity; at std {highest['noise_std']:g} the released image is at"
        f" {_mean(highest['distortion']['obfuscated'], 'psnr'):.2f} dB PSNR from the original."
    ]
    linkable = [
        lv
        for lv in levels
        if _has_interval(lv["linkage"]) and lv["linkage"]["top1_interval"][0] > lv["linkage"]["chance_top1"]
    ]
    if linkable:
        worst = min(linkable, key=lambda level: level["linkage"]["top1"])
        link = worst["linkage"]
        stds = ", ".join(f"{lv['noise_std']:g}" for lv in linkable)
        lines.append(
            f"Not hidden: which image it is, at std {stds}: linkage top-1 is at least {_pct(link['top1'])}"
            f" (std {worst['noise_std']:g}), {link['top1'] / link['chance_top1']:.0f}x the chance rate of"
            f" {_chance_pct(link['chance_top1'])}."
        )
    for level in levels:
        if level not in linkable and not _has_interval(level["linkage"]):
            link = level["linkage"]
            lines.append(
                f"At std {level['noise_std']:g} linkage top-1 is {_pct(link['top1'])}, but with"
                f" {_interval(link)}; no claim about it is made."
            )
        elif level not in linkable:
            link = level["linkage"]
            lines.append(
                f"At std {level['noise_std']:g} linkage top-1 ({_pct(link['top1'])},"
                f" {_interval(link)}) is not above chance"
                f" ({_chance_pct(link['chance_top1'])})."
            )
    receiver = highest["reversal"].get("receiver", {})
    classical = highest["reversal"].get("classical", {})
    released = _mean(highest["distortion"]["obfuscated"], "psnr")
    if "psnr" in receiver and _mean(receiver, "psnr") > released:
        lines.append(
            f"Reversible: at std {highest['noise_std']:g} the receiver's denoiser restores"
            f" {_mean(receiver, 'psnr'):.2f} dB PSNR (SSIM {_mean(receiver, 'ssim'):.3f})"
            f"{_beside_classical(receiver, classical)}."
        )
    elif "psnr" in receiver:
        lines.append(
            f"Not reversed by the receiver's denoiser: at std {highest['noise_std']:g} its output is at"
            f" {_mean(receiver, 'psnr'):.2f} dB PSNR, below the released image's {released:.2f} dB (it did"
            f" not learn to denoise){_beside_classical(receiver, classical)}."
        )
    elif "psnr" in classical:
        lines.append(
            f"Reversible without training: at std {highest['noise_std']:g} a Gaussian filter restores"
            f" {_mean(classical, 'psnr'):.2f} dB PSNR (SSIM {_mean(classical, 'ssim'):.3f})."
        )
    return lines


def _cell(entry: dict[str, Any], key: str, fmt: str) -> str:
    if "skipped" in entry or key not in entry:
        return "skip"
    value = entry[key]
    if isinstance(value, dict):
        value = value["mean"]
    return format(value, fmt)


TABLE_HEADER = (
    "std",
    "PSNR",
    "SSIM",
    "link@1",
    "link@5",
    "chance@1",
    "reid@1",
    "reid@5",
    "chance@1",
    "recv PSNR",
    "outs PSNR",
    "gauss PSNR",
)


def table_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for level in result["levels"]:
        released = level["distortion"]["obfuscated"]
        link, reid, reversal = level["linkage"], level["reidentification"], level["reversal"]
        rows.append(
            (
                f"{level['noise_std']:g}",
                _cell(released, "psnr", ".2f"),
                _cell(released, "ssim", ".3f"),
                _cell(link, "top1", ".3f"),
                _cell(link, "top5", ".3f"),
                _cell(link, "chance_top1", ".4f"),
                _cell(reid, "top1", ".3f"),
                _cell(reid, "top5", ".3f"),
                _cell(reid, "chance_top1", ".4f"),
                _cell(reversal.get("receiver", {}), "psnr", ".2f"),
                _cell(reversal.get("outsider", {}), "psnr", ".2f"),
                _cell(reversal.get("classical", {}), "psnr", ".2f"),
            )
        )
    return rows


def format_table(result: dict[str, Any]) -> str:
    """A fixed-width console table, one row per noise level."""
    rows = [TABLE_HEADER, *table_rows(result)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADER))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows)


def _patients_text(data: dict[str, Any]) -> str:
    if data.get("split_unit") == "image: patient ids unknown":
        return "patient ids unknown: each image counted as its own patient"
    return f"{data['patients']} patients"


def _noise_words(settings: dict[str, Any]) -> str:
    """'Gaussian noise (mean 0.1, clamped to [0, 1], fixed seed 0' from the audit settings (older audits
    recorded only the Gaussian mean, and one seed for the noise and the sampling)."""
    kind = settings.get("noise_kind", "gaussian")
    parts = []
    if kind != "gaussian":
        parts.append(f"dose {settings.get('noise_dose')}")
    if kind != "poisson":
        parts.append(f"mean {settings['noise_mean']:g}")
    parts.append("clamped to [0, 1]" if settings.get("noise_clamp", True) else "not clamped")
    parts.append(f"fixed seed {settings.get('noise_seed', settings['seed'])}")
    name = {"gaussian": "Gaussian", "poisson": "Poisson", "poisson_gaussian": "Poisson-Gaussian"}[kind]
    return f"{name} noise ({', '.join(parts)}"


def markdown_section(result: dict[str, Any], heading: str = "## Privacy audit of noise obfuscation") -> str:
    """A self-contained Markdown section (figures, verdict, method) that a report can include as is."""
    data, settings = result["data"], result["settings"]
    lines = [
        heading,
        "",
        f"Data: `{data['folder']}` ({', '.join(data['sources'])}; {data['images']} images,"
        f" {_patients_text(data)}). Queries: {data['queries']} images of split `{data['split']}`,"
        f" obfuscated with {_noise_words(settings)}). Gallery: {data['gallery']} clean images.",
        "",
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|" + "|".join("---:" for _ in TABLE_HEADER) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(result)]
    lines += [
        "",
        "PSNR/SSIM: released (obfuscated) image against the original. link@k: the query's original among the"
        " k best-matching gallery images. reid@k: an image of the same patient (own image excluded) among the"
        " k nearest. chance@1: the rate of a random ranking of the same gallery. recv/outs PSNR: the"
        " receiver's / an outsider's denoiser output against the original. gauss PSNR: a Gaussian filter"
        " (tuned on validation images, never on the queries) on the same queries.",
        "",
        "### Verdict",
        "",
    ]
    lines += [f"- {sentence}" for sentence in summary_sentences(result)]
    for level in result["levels"]:
        lines += ["", f"Noise std {level['noise_std']:g}:", ""]
        lines += [f"- {sentence}" for sentence in level_sentences(level, result["reference"])]
    overlap = result.get("outsider_overlap")
    if overlap:
        lines.append("")
        if overlap.get("checked"):
            lines.append(
                f"Outsider check: its training split holds {overlap['queries_seen_in_training']} of the"
                f" audited queries (of {overlap['trained_images']} training images, compared by"
                f" {overlap['compared_by']})."
            )
        else:
            lines.append(f"Outsider check: not done: {overlap['reason']}.")
    matcher = settings["matcher"]
    lines += [
        "",
        f"Method: the matcher averages each image down to {matcher['feature_size']} x"
        f" {matcher['feature_size']} pixels, blurs it (Gaussian, sigma {matcher['blur_sigma']:g} px),"
        " removes the mean and compares by normalised cross-correlation. Clean images are used only to"
        " measure. 95% intervals: when a patient (group) has several queries, a percentile bootstrap that"
        " resamples patients (queries of one patient are not independent), with the per-patient average hit"
        " rate beside the per-query one (below 4 patients, or when every query hit or missed, a Wilson"
        " interval over patients when each patient's queries agree); otherwise Wilson intervals (hit rates)"
        " and t-intervals (means); none below 2 patients, and none for means below 4 patients when"
        " patients repeat (the reason is given).",
        "",
    ]
    lines += learned_matcher_lines(result.get("learned_matcher"))
    return "\n".join(lines)


def _rate(entry: dict[str, Any], key: str = "top1") -> str:
    value = entry.get(key)
    if value is None:
        return "n/a"
    low, high = entry.get(f"{key}_interval") or (None, None)
    interval = f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
    return f"{value:.2f}{interval}"


def learned_matcher_lines(learned: dict[str, Any] | None) -> list[str]:
    """The learned patient embedding's linkage and re-identification, beside the pixel matcher's above."""
    if not learned:
        return []
    lines = ["### A stronger attacker: the learned patient embedding", ""]
    if "skipped" in learned:
        return [*lines, f"Not measured: {learned['skipped']}.", ""]
    info = learned["matcher"]
    lines += [
        "A small CNN trained to tell patients apart (supervised contrastive; fitted on"
        f" {info.get('fitting_patients')} patients, {info.get('fitting_rule') or 'see its weights file'}),"
        " run on the same released images."
        f" The {learned['excluded_patients']} patient(s) it was fitted on ({learned['excluded_images']}"
        f" images) are left out of queries and gallery: {learned['queries']} queries, gallery"
        f" {learned['gallery']}.",
    ]
    registered = learned.get("registered_score")
    if registered:
        lines += [
            "",
            "With registration: the same embedding's candidates ranked again by the leak score of"
            f" `data leaks` ({registered}).",
        ]
    lines += [
        "",
        "| noise std | link@1 [95% CI] | reid@1 [95% CI] | reid chance@1 |"
        + (" link@1 with registration | reid@1 with registration |" if registered else ""),
        "|---:|---:|---:|---:|" + ("---:|---:|" if registered else ""),
    ]
    for level in learned["levels"]:
        reid = level["reidentification"]
        chance = reid.get("chance_top1")
        row = (
            f"| {level['noise_std']:g} | {_rate(level['linkage'])} | {_reid_text(reid)} | "
            f"{'n/a' if chance is None else f'{chance:.3f}'} |"
        )
        if registered:
            ranked = level.get("registered") or {}
            row += (
                f" {_rate(ranked['linkage']) if 'linkage' in ranked else 'n/a'} |"
                f" {_reid_text(ranked['reidentification']) if 'reidentification' in ranked else 'n/a'} |"
            )
        lines.append(row)
    lines += [
        "",
        "Where this matcher finds more than the pixel matcher, the pixel figures understate what an attacker"
        " can do; neither is an upper bound on what a better-trained attacker could do.",
        "",
    ]
    return lines


def _reid_text(reid: dict[str, Any]) -> str:
    return f"n/a ({reid['skipped']})" if "skipped" in reid else _rate(reid)
