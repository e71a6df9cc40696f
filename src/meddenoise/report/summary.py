"""The report's first section: what the tests and measurements further down found, one line each, each
linking to the section that holds its numbers.

A line names a winner or a difference only when its test rejects (Holm-corrected where the section corrects)
or its interval excludes zero; otherwise it says that no difference is shown, with the p-value. Measurements
that are not comparisons (re-identification rates, membership AUCs) are stated as measurements. What could
not be claimed (one training seed, unknown patient ids, a metric that is unavailable) is said last.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from meddenoise.report.document import Block, BulletList, Heading, Paragraph

TITLE = "Summary of findings"


@dataclasses.dataclass
class Finding:
    text: str
    section: str  # heading of the section that shows the numbers ("" for claims about the whole report)


def anchor(heading: str) -> str:
    """The fragment GitHub (and the HTML renderer) gives a heading: lower case, punctuation dropped,
    spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def summary_blocks(findings: list[Finding]) -> list[Block]:
    if not findings:
        return []
    items = [f.text + (f" ([{f.section}](#{anchor(f.section)}))" if f.section else "") for f in findings]
    return [
        Heading(2, TITLE),
        Paragraph(
            "Each line comes from a test or a measurement in the section it links to; a difference is named "
            "only where its test rejects or its interval excludes zero."
        ),
        BulletList(items),
    ]


def format_p(p: float | None) -> str:
    """A p-value for a sentence: "< 0.001", three decimals below 0.01, else two; "n/a" when missing."""
    if p is None or not math.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def _interval(low: float, high: float) -> str:
    return f" [{low:+.2f}, {high:+.2f}]" if math.isfinite(low) and math.isfinite(high) else ""


def learned_vs_classical(items: list[dict[str, Any]], section: str) -> list[Finding]:
    """One line over the levels: who leads where, by a test, else no difference shown."""
    from meddenoise.report.collect import method_label

    if not items:
        return []
    parts = []
    for item in items:
        leader, other = method_label(item["leader"]), method_label(item["other"])
        if item["shown"]:
            parts.append(
                f"at std {item['level']:g} {leader} beats {other} by {item['difference']:+.2f} dB"
                f"{_interval(item['low'], item['high'])} (Holm p {format_p(item['p'])})"
            )
        else:
            parts.append(
                f"at std {item['level']:g} no difference between {leader} and {other} is shown "
                f"(Holm p {format_p(item['p'])})"
            )
    return [Finding("Best network against best classical method, PSNR: " + "; ".join(parts) + ".", section)]


def clean_free(rows: list[dict[str, Any]], section: str) -> list[Finding]:
    """The clean-free targets' PSNR gap to supervised training at each level (Holm over that table)."""
    parts = []
    for row in rows:
        gap, p = row.get("psnr_gap"), row.get("psnr_t_p_holm")
        if gap is None or p is None or not math.isfinite(gap):
            continue
        low, high = row.get("psnr_gap_low", math.nan), row.get("psnr_gap_high", math.nan)
        name = f"{row['target']} (std {row['noise_std']:g})"
        excludes = not (math.isfinite(low) and math.isfinite(high)) or low > 0 or high < 0
        if math.isfinite(p) and p < 0.05 and excludes:  # with seeds, the interval covers them too
            parts.append(f"{name} {gap:+.2f} dB{_interval(low, high)} (Holm p {format_p(p)})")
        else:
            parts.append(f"{name} no difference shown ({gap:+.2f} dB, Holm p {format_p(p)})")
    if not parts:
        return []
    return [
        Finding("Training without clean images, PSNR against supervised: " + "; ".join(parts) + ".", section)
    ]


def federated(rows: list[dict[str, Any]], section: str) -> list[Finding]:
    findings = []
    for row in rows:
        gap = row.get("psnr_gap")
        if gap is None or not math.isfinite(gap):
            continue
        low, high, p = (
            row.get("psnr_gap_low", math.nan),
            row.get("psnr_gap_high", math.nan),
            row.get("psnr_gap_t_p", math.nan),
        )
        excludes = math.isfinite(low) and math.isfinite(high) and (high < 0 or low > 0)
        if excludes and math.isfinite(p) and p < 0.05:
            text = (
                f"Federated {row['setup']}: {gap:+.2f} dB{_interval(low, high)} PSNR against centralized "
                f"training (paired t-test p {format_p(p)}; one seed each, so the interval covers test "
                "patients, not training randomness)."
            )
        else:
            text = (
                f"Federated {row['setup']}: no PSNR difference to centralized training shown "
                f"({gap:+.2f} dB, p {format_p(p)})."
            )
        findings.append(Finding(text, section))
    return findings


def robustness(rows: list[dict[str, Any]], section: str) -> list[Finding]:
    """Networks tested away from their training level against the same model trained at that level."""
    from meddenoise.report.collect import method_label

    parts = []
    for row in rows:
        name = (
            f"{method_label(row['method'])} trained at {row['trained_noise_std']:g}, tested at "
            f"{row['tested_noise_std']:g}"
        )
        if not math.isfinite(row["difference"]):
            parts.append(f"{name}: {row['psnr_mean']:.2f} dB (no network trained at that level to compare)")
        elif row["shown"]:
            parts.append(
                f"{name}: {row['difference']:+.2f} dB"
                f"{_interval(row['difference_low'], row['difference_high'])} against the one trained there "
                f"(Holm p {format_p(row['t_p_holm'])})"
            )
        else:
            parts.append(
                f"{name}: no difference to the one trained there shown (Holm p {format_p(row['t_p_holm'])})"
            )
    return [Finding("Robustness: " + "; ".join(parts) + ".", section)] if parts else []


def privacy_audit(result: dict[str, Any], sentences: list[str], section: str) -> list[Finding]:
    """The audit's own summary lines (what the released images hide and what they do not), and
    re-identification at rank 1 by the learned matcher beside the pixel matcher."""
    findings = [Finding("Obfuscation audit: " + sentence, section) for sentence in sentences[:2]]

    def rates(levels: list[dict[str, Any]]) -> tuple[str, str] | None:
        measured = [lv for lv in levels if lv["reidentification"].get("top1") is not None]
        if not measured:
            return None
        stds = "/".join(f"{lv['noise_std']:g}" for lv in measured)
        return stds, "/".join(f"{100 * lv['reidentification']['top1']:.0f}%" for lv in measured)

    pixel = rates(result.get("levels", []))
    learned = result.get("learned_matcher") or {}
    learned_rates = rates(learned.get("levels", [])) if "levels" in learned else None
    with_registration = [
        {"noise_std": lv["noise_std"], **lv["registered"]}
        for lv in learned.get("levels", [])
        if "registered" in lv
    ]
    registered_rates = rates(with_registration) if with_registration else None
    if learned_rates:
        chance = learned["levels"][0]["reidentification"].get("chance_top1")
        text = (
            f"Re-identification of released images (another image of the same patient at rank 1), std "
            f"{learned_rates[0]}: learned matcher {learned_rates[1]} of {learned['queries']} queries from "
            f"patients it was not fitted on"
            + (f", {registered_rates[1]} with registration" if registered_rates else "")
            + (f" (chance {100 * chance:.1f}%)" if chance is not None else "")
            + (
                f"; pixel matcher {pixel[1]} of its {result['levels'][0]['reidentification'].get('queries')}"
                " queries"
                if pixel
                else ""
            )
            + "."
        )
        findings.append(Finding(text, section))
    elif pixel:
        findings.append(
            Finding(
                f"Re-identification of released images at rank 1 (pixel matcher), std {pixel[0]}: "
                f"{pixel[1]}.",
                section,
            )
        )
    return findings


def privacy_modes(result: dict[str, Any] | None, section: str) -> list[Finding]:
    """DP-SGD's cost against the same network without DP (highest epsilon, each start), and the strongest
    membership attack on the supervised model."""
    from meddenoise.privacy import modes

    if not result:
        return []
    rows = result.get("rows", [])
    findings = []
    dp_rows = [r for r in rows if r.get("epsilon") is not None and r.get("gap_psnr_to_nonprivate")]
    parts = []
    for public in (True, False):
        chosen = [r for r in dp_rows if ("public" in r["mode"]) == public]
        if not chosen:
            continue
        row = max(chosen, key=lambda r: r["epsilon"])
        gap = row["gap_psnr_to_nonprivate"]
        start = "fine-tuned from the public start" if public else "from scratch"
        if math.isfinite(gap["low"]) and math.isfinite(gap["high"]) and (gap["high"] < 0 or gap["low"] > 0):
            parts.append(
                f"{start}, epsilon {row['epsilon']:.2g}: {row['test_psnr']:.2f} dB, {gap['mean']:+.2f} dB"
                f"{_interval(gap['low'], gap['high'])} against the same network without DP"
            )
        else:
            parts.append(
                f"{start}, epsilon {row['epsilon']:.2g}: {row['test_psnr']:.2f} dB, no difference to the "
                f"same network without DP shown ({gap['mean']:+.2f} dB)"
            )
    if parts:
        unit = next((r.get("dp_unit") for r in dp_rows if r.get("dp_unit")), "")
        findings.append(
            Finding(
                f"DP-SGD{f' per {unit}' if unit else ''} at std {result['noise_std']:g}: "
                + "; ".join(parts)
                + ".",
                section,
            )
        )
    supervised = next((r for r in rows if r.get("kind") == "clean" and "membership_auc" in r), None)
    if supervised is not None:
        sentences = modes.membership_sentences(supervised)
        if sentences:
            findings.append(Finding(f"Membership of the supervised U-Net: {sentences[0]}.", section))
    return findings


def limits(*, seeds: list[int], ids_unknown: bool, lpips: str) -> list[Finding]:
    """What the report could not claim, and why."""
    findings = []
    if seeds and max(seeds) < 2:
        findings.append(
            Finding(
                "One training seed per configuration: every interval covers the test patients, not training "
                "randomness, so a small gap between two networks may not survive a rerun.",
                "",
            )
        )
    if ids_unknown:
        findings.append(
            Finding(
                "Patient ids are unknown for some images: those are treated as independent, and intervals "
                "are too narrow if patients repeat.",
                "",
            )
        )
    if lpips:
        findings.append(Finding(lpips, ""))
    return findings
