"""The reproduction's privacy audit: every noise level, each reversed by the U-Net trained at that level."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from meddenoise.errors import MeddenoiseError
from meddenoise.evaluation import files
from meddenoise.fileio import ensure_writable_dir
from meddenoise.noise.spec import NoiseSpec
from meddenoise.reprodir import ReproDir, write_privacy_audit
from meddenoise.reproduce.plan import Job
from meddenoise.reproduce.presets import ReproduceConfig

OUTSIDER_SKIP_DEFAULT = (
    "the embedded default's images are all rendered from one CT, so there is no "
    "'other data' that does not share the audited anatomy; a denoiser trained on other poses of that CT "
    "is the receiver's own situation (its training split never holds the audited test images), so it would "
    "not measure an outsider. Measure it with `meddenoise privacy-audit --outsider-run` on a real source "
    "(e.g. a denoiser trained on another NIH folder)"
)
OUTSIDER_SKIP_OTHER = (
    "reproduce trains no outsider's denoiser; run `meddenoise privacy-audit --outsider-run RUN` with a "
    "denoiser trained only on other data"
)


def receiver_run(jobs: list[Job], noise_std: float) -> Job | None:
    """The receiver's denoiser for one audited level: the supervised one-device U-Net (seed 0) trained at
    that same noise level, when it finished."""
    return next(
        (
            j
            for j in jobs
            if j.method == "unet"
            and j.strategy == "single"
            and j.seed == 0
            and math.isclose(j.noise_std, noise_std)
            and files.is_done(j.folder)
        ),
        None,
    )


def merge_audits(per_level: list[dict[str, Any]], outsider_reason: str) -> dict[str, Any]:
    """One audit result from single-level audits that share data, queries, gallery and matcher."""
    merged = dict(per_level[0])
    merged["levels"] = [level for result in per_level for level in result["levels"]]
    merged["settings"] = {
        **per_level[0]["settings"],
        "noise_stds": [level["noise_std"] for level in merged["levels"]],
        "receiver_per_level": True,
    }
    learned = [result.get("learned_matcher") or {} for result in per_level]
    if all("levels" in entry for entry in learned) and learned:
        merged["learned_matcher"] = {
            **learned[0],
            "levels": [level for entry in learned for level in entry["levels"]],
        }
    for level in merged["levels"]:
        outsider = level["reversal"].get("outsider", {})
        if "psnr" not in outsider:
            level["reversal"]["outsider"] = {"skipped": outsider_reason}
    return merged


def run_privacy_audit(data_dir: Path, jobs: list[Job], settings: ReproduceConfig) -> str | None:
    """Audit every noise level into OUT/privacy, the receiver's reversal by the supervised U-Net trained at
    that level; returns why it was skipped, or None."""
    from meddenoise.privacy.audit import run_audit
    from meddenoise.privacy.verdict import markdown_section

    folder = ReproDir(settings.folder).privacy_dir
    if files.is_done(folder):
        return None
    per_level = []
    for noise_std in settings.grid.noise_stds:
        receiver = receiver_run(jobs, noise_std)
        print(f"privacy audit at std {noise_std:g}", flush=True)
        # One audit per level: `run_audit` takes one receiver run, and each level has its own denoiser.
        try:
            per_level.append(
                run_audit(
                    data_dir,
                    noise=NoiseSpec(mean=settings.grid.noise_mean, std=noise_std),
                    max_queries=settings.grid.privacy_queries,
                    run_dir=str(receiver.folder) if receiver is not None else None,
                    device=settings.device,
                    quiet=settings.quiet,
                )
            )
        except MeddenoiseError as exc:
            return f"the privacy audit failed at std {noise_std:g}: {exc}"
    sources = per_level[0].get("data", {}).get("sources", [])
    result = merge_audits(per_level, OUTSIDER_SKIP_DEFAULT if sources == ["default"] else OUTSIDER_SKIP_OTHER)
    ensure_writable_dir(folder, what="privacy audit folder")
    write_privacy_audit(folder, result, markdown_section(result))
    files.mark_done(folder)
    return None
