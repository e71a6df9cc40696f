"""One table of privacy modes: quality, what the receiving site holds, what leaks, and the formal guarantee.

Rows are training modes (the paper's released pairs with clean targets, the clean-free targets, DP-SGD at
several epsilons, ...); each row is built from a run folder (test_metrics.csv, summary.csv), the supervised
run at the same noise level (for the paired gap), the obfuscation audit's level (linkage and
re-identification of what is released) and a membership audit of the run's model. `verdict` writes short
sentences from those numbers only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from meddenoise.rundir import RunDir, read_rows

# What the receiving site ends up holding, per training mode.
HOLDINGS = {
    "clean": {"clean_images": True, "released_images": "1 obfuscated copy per image", "linkable": True},
    "noise2noise": {
        "clean_images": False,
        "released_images": "2 obfuscated copies per image",
        "linkable": True,
    },
    "neighbor2neighbor": {
        "clean_images": False,
        "released_images": "1 obfuscated copy per image",
        "linkable": True,
    },
    "r2r": {"clean_images": False, "released_images": "1 obfuscated copy per image", "linkable": True},
    "dp-sgd": {"clean_images": False, "released_images": "none (the DP model only)", "linkable": False},
    "federated": {"clean_images": False, "released_images": "none (model updates only)", "linkable": False},
    "public": {
        "clean_images": False,
        "released_images": "none (trained on public data only)",
        "linkable": False,
    },
}


def test_rows(run: Path) -> list[dict[str, str]]:
    """Per-image test scores: the run's test_metrics.csv, else its `evaluate` output (federated runs)."""
    folder = RunDir(run)
    for path in (folder.test_table_file, folder.evaluation_dir("test") / "per_image.csv"):
        if path.is_file():
            return read_rows(path)
    raise FileNotFoundError(f"{run} has neither test_metrics.csv nor evaluation/test/per_image.csv")


def paired_gap(
    run: Path,
    supervised: Path,
    groups: dict[str, str],
    metric: str = "psnr",
    seed: int = 0,
    rows: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Mean per-image difference run - supervised on the same test images, with a 95% interval from
    resampling patients (groups). `rows`: the run's per-image scores when not its own test table."""
    from meddenoise.metrics.clustered import group_interval

    mine = {r["image_id"]: float(r[metric]) for r in (rows if rows is not None else test_rows(run))}
    theirs = {r["image_id"]: float(r[metric]) for r in test_rows(supervised)}
    shared = sorted(set(mine) & set(theirs))
    if not shared:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "images": 0}
    differences = np.array([mine[i] - theirs[i] for i in shared])
    # cluster-aware like every interval users see: none (NaN bounds, `note` says why) when too few patients
    ci = group_interval(differences, [groups.get(i, i) for i in shared], n_resamples=2000, seed=seed)
    return {
        "mean": ci.mean,
        "low": ci.low,
        "high": ci.high,
        "images": len(shared),
        "patients": ci.groups,
        "method": ci.method,
        "note": ci.note,
    }


def mode_row(
    label: str,
    mode: str,
    run: Path,
    *,
    supervised: Path | None,
    groups: dict[str, str],
    audit_level: dict[str, Any] | None,
    membership: dict[str, Any] | None,
    nonprivate: Path | None = None,
    per_image: Path | None = None,
) -> dict[str, Any]:
    """One row of the table (JSON-ready); `nonprivate`: the same network trained without DP, for DP rows;
    `per_image`: the run scored on the private test split when it was trained on other data."""
    tests = read_rows(per_image) if per_image is not None else test_rows(run)
    summary = RunDir(run).read_summary()
    row: dict[str, Any] = {
        "mode": label,
        "kind": mode,
        "run": str(run),
        "noise_std": float(summary.get("noise_std") or "nan"),
        "test_psnr": float(np.mean([float(r["psnr"]) for r in tests])),
        "test_ssim": float(np.mean([float(r["ssim"]) for r in tests])),
        "test_images": len(tests),
        **HOLDINGS[mode],
    }
    if supervised is not None and supervised != run:
        row["gap_psnr"] = paired_gap(run, supervised, groups, "psnr", rows=tests)
        row["gap_ssim"] = paired_gap(run, supervised, groups, "ssim", rows=tests)
    if nonprivate is not None:
        row["gap_psnr_to_nonprivate"] = paired_gap(run, nonprivate, groups, "psnr", rows=tests)
    if row["linkable"] and audit_level is not None:
        row["linkage_at_1"] = audit_level["linkage"].get("top1")
        reid = audit_level["reidentification"]
        row["reidentification_at_1"] = None if "skipped" in reid else reid.get("top1")
        row["reidentification_note"] = reid.get("skipped")
    if membership is not None:
        row.update(membership_columns(membership))
    epsilon = summary.get("dp_epsilon")
    row["epsilon"] = float(epsilon) if epsilon not in (None, "") else None
    if row["epsilon"] is not None:
        row["delta"] = float(summary["dp_delta"])
        row["dp_unit"] = summary.get("dp_unit")
    return row


def membership_columns(membership: dict[str, Any]) -> dict[str, Any]:
    """A membership audit's figures for the table: loss attack and offline LiRA on the best checkpoint
    (`membership_auc*`, `membership_lira_*`), and the last checkpoint's (`membership_last_*`)."""
    nan = math.nan
    columns: dict[str, Any] = {}

    def put(prefix: str, entry: dict[str, Any]) -> None:
        if "auc" not in entry:
            return
        columns[prefix] = entry["auc"]
        columns[f"{prefix}_ci"] = entry["auc_ci"]
        columns[f"{prefix}_upper"] = entry.get("auc_upper_95", nan)

    def lira_of(audit: dict[str, Any]) -> dict[str, Any]:
        return audit.get("lira") or audit.get("calibrated") or {}  # "calibrated": audits before LiRA

    put("membership_auc", membership["loss_threshold"])
    lira = lira_of(membership)
    put("membership_lira_auc", lira)
    if "auc" in lira:
        columns["membership_lira_tpr_at_1pct_fpr"] = lira["tpr_at_1pct_fpr"]
        columns["membership_lira_tpr_at_lowest_fpr"] = lira.get("tpr_at_lowest_fpr", nan)
        columns["membership_lira_lowest_fpr"] = lira.get("lowest_fpr", nan)
        columns["membership_lira_reference_models"] = lira.get("reference_models")
    last = (membership.get("checkpoints") or {}).get("last")
    if last is not None and membership.get("audited_checkpoint") != "last":
        put("membership_last_auc", last["loss_threshold"])
        put("membership_last_lira_auc", lira_of(last))
        columns["membership_last_epoch"] = last.get("epoch")
    return columns


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _gap(entry: dict[str, Any] | None, digits: int) -> str:
    if not entry:
        return "(reference)"
    if math.isnan(entry["low"]) or math.isnan(entry["high"]):
        return f"{entry['mean']:+.{digits}f} [n/a]"
    return f"{entry['mean']:+.{digits}f} [{entry['low']:+.{digits}f}, {entry['high']:+.{digits}f}]"


def _auc(row: dict[str, Any], key: str, upper: bool = False) -> str:
    if key not in row:
        return "-"
    low, high = row[f"{key}_ci"]
    if math.isnan(low) or math.isnan(high):
        return f"{row[key]:.2f} [n/a]"
    bound = row.get(f"{key}_upper", math.nan)
    shown = f"; <= {bound:.2f}" if upper and not math.isnan(bound) else ""
    return f"{row[key]:.2f} [{low:.2f}, {high:.2f}{shown}]"


def _tpr(row: dict[str, Any]) -> str:
    rate = row.get("membership_lira_lowest_fpr", math.nan)
    if "membership_lira_tpr_at_lowest_fpr" not in row or math.isnan(rate):
        return "-"
    return f"{100 * row['membership_lira_tpr_at_lowest_fpr']:.1f}% at {100 * rate:.1f}%"


def _last(row: dict[str, Any]) -> str:
    key = "membership_last_lira_auc" if "membership_last_lira_auc" in row else "membership_last_auc"
    return _auc(row, key, upper=True)


COLUMNS = (
    "mode",
    "noise std",
    "test PSNR",
    "PSNR gap to supervised (dB, 95% CI)",
    "test SSIM",
    "SSIM gap",
    "receiving site holds clean images?",
    "released images (linkable?)",
    "linkage@1",
    "re-id@1",
    "membership AUC, loss (95% CI)",
    "membership AUC, LiRA (95% CI; one-sided 95% upper bound)",
    "LiRA TPR at lowest FPR",
    "membership AUC, last checkpoint (LiRA, else loss)",
    "epsilon",
)


def table_cells(row: dict[str, Any]) -> list[str]:
    linkable = "yes" if row["linkable"] else "no"
    if row["epsilon"] is None:
        epsilon = "none (no formal guarantee)"
    else:
        epsilon = f"{row['epsilon']:.2f} (delta {row['delta']:g}, per {row['dp_unit']})"
    reid = "not measurable" if row.get("reidentification_note") else _fmt(row.get("reidentification_at_1"))
    return [
        row["mode"],
        f"{row['noise_std']:g}",
        f"{row['test_psnr']:.2f}",
        _gap(row.get("gap_psnr"), 2),
        f"{row['test_ssim']:.3f}",
        _gap(row.get("gap_ssim"), 3),
        "yes" if row["clean_images"] else "no",
        f"{row['released_images']} ({linkable})",
        _fmt(row.get("linkage_at_1")),
        reid,
        _auc(row, "membership_auc"),
        _auc(row, "membership_lira_auc", upper=True),
        _tpr(row),
        _last(row),
        epsilon,
    ]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(table_cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def verdict(rows: list[dict[str, Any]]) -> list[str]:
    """Sentences stated from the rows' numbers only (intervals decide what is called a difference)."""
    sentences = []
    for row in rows:
        gap = row.get("gap_psnr")
        parts = [f"{row['mode']} (std {row['noise_std']:g}): test PSNR {row['test_psnr']:.2f} dB"]
        if gap:
            if math.isnan(gap["low"]) or math.isnan(gap["high"]):
                parts.append(
                    f"{gap['mean']:+.2f} dB against supervised, no interval "
                    f"({gap.get('note') or 'too few patients'}), so no difference is claimed"
                )
            elif gap["high"] < 0:
                parts.append(f"{-gap['mean']:.2f} dB below supervised (interval excludes 0)")
            elif gap["low"] > 0:
                parts.append(f"{gap['mean']:.2f} dB above supervised (interval excludes 0)")
            else:
                parts.append(
                    f"no PSNR difference to supervised shown ({gap['mean']:+.2f} dB, interval spans 0)"
                )
        if row.get("linkage_at_1") is not None:
            parts.append(
                f"released images linked to their originals {100 * row['linkage_at_1']:.0f}% of the time"
            )
        elif not row["linkable"]:
            parts.append("no images released")
        parts += membership_sentences(row)
        to_nonprivate = row.get("gap_psnr_to_nonprivate")
        if to_nonprivate:
            parts.append(f"{_gap(to_nonprivate, 2)} dB against the same network trained without DP")
        if row["epsilon"] is not None:
            parts.append(f"formal guarantee epsilon {row['epsilon']:.2f}")
        else:
            parts.append("no formal guarantee")
        sentences.append("; ".join(parts) + ".")
    return sentences


def membership_sentences(row: dict[str, Any]) -> list[str]:
    """The strongest attack measured (offline LiRA, else the loss threshold) on the best and the last
    checkpoint. An interval that includes 0.5 is reported with its upper bound, never as privacy."""
    from meddenoise.privacy.membership import interpretation

    sentences = []
    for checkpoint, prefix in (("best", "membership"), ("last", "membership_last")):
        key = f"{prefix}_lira_auc" if f"{prefix}_lira_auc" in row else f"{prefix}_auc"
        if key not in row:
            continue
        attack = "LiRA" if "lira" in key else "loss-threshold"
        entry = {
            "auc": row[key],
            "auc_ci": row[f"{key}_ci"],
            "auc_upper_95": row.get(f"{key}_upper", math.nan),
        }
        sentences.append(f"{interpretation(entry, f'membership ({attack}, {checkpoint} checkpoint)')}")
    return sentences
