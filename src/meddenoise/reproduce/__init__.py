"""`meddenoise reproduce`: the paper's grid (models x noise levels x strategies, plus baselines), resumable,
ending in the report. The folder's layout is `meddenoise.reprodir.ReproDir`'s.

    presets.py    the grids (`PRESETS`) and the options (`ReproduceConfig`)
    plan.py       the jobs of a grid, in run order, and what is skipped
    jobs.py       one job: prepare, train (resumed or started clean), evaluate; robustness evaluations
    audit.py      the privacy audit of every noise level
    modes_job.py  the privacy-modes step: DP-SGD runs, membership audits, one table
    estimate.py   `--dry-run`: an estimated time per job, measured on this device

A configuration whose folder holds DONE is never redone; a run killed mid-training continues from its last
checkpoint with --resume.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from meddenoise.config import save_config
from meddenoise.errors import ConfigError, MeddenoiseError
from meddenoise.evaluation import files
from meddenoise.fileio import atomic_write_json, ensure_writable_dir
from meddenoise.locking import folder_lock
from meddenoise.reprodir import PLAN_FILE, ReproDir
from meddenoise.reproduce.audit import (
    OUTSIDER_SKIP_DEFAULT,
    OUTSIDER_SKIP_OTHER,
    merge_audits,
    receiver_run,
    run_privacy_audit,
)
from meddenoise.reproduce.jobs import (
    RAY_MEMORY_SIGNS,
    failure_line,
    job_noise,
    prepare_data,
    run_baseline_job,
    run_federated_job,
    run_network_job,
    run_robustness,
    train_job,
)
from meddenoise.reproduce.plan import (
    SINGLE_DEVICE,
    Job,
    describe_plan,
    federated_jobs,
    interleave_timing,
    plan_jobs,
    protocol_settings,
    std_tag,
    strategy_overrides,
    timing_entries,
    train_overrides,
)
from meddenoise.reproduce.presets import (
    CLASSICAL_BASELINES,
    PRESET_NAMES,
    PRESETS,
    STRATEGIES,
    Preset,
    ReproduceConfig,
)

__all__ = [
    "CLASSICAL_BASELINES",
    "OUTSIDER_SKIP_DEFAULT",
    "OUTSIDER_SKIP_OTHER",
    "PLAN_FILE",
    "PRESETS",
    "PRESET_NAMES",
    "RAY_MEMORY_SIGNS",
    "SINGLE_DEVICE",
    "STRATEGIES",
    "Job",
    "Preset",
    "ReproduceConfig",
    "describe_plan",
    "dry_run",
    "failure_line",
    "federated_jobs",
    "gpu_count",
    "interleave_timing",
    "job_noise",
    "merge_audits",
    "plan_jobs",
    "protocol_settings",
    "receiver_run",
    "reproduce",
    "run_baseline_job",
    "run_federated_job",
    "run_network_job",
    "run_privacy_audit",
    "run_robustness",
    "std_tag",
    "strategy_overrides",
    "timing_entries",
    "train_job",
    "train_overrides",
]


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _load_plan(settings: ReproduceConfig) -> dict[str, Any]:
    layout = ReproDir(settings.folder)
    if not layout.plan_file.is_file():
        return {}
    if not settings.resume:
        raise ConfigError(
            f"{settings.folder} already holds a reproduction; turn resume on to continue it (finished "
            "configurations are kept) or choose another output folder (out)",
            "resume",
        )
    plan = layout.read_plan()
    if plan.get("preset") != settings.grid.name:
        raise ConfigError(
            f"{settings.folder} holds a '{plan.get('preset')}' reproduction, not '{settings.grid.name}'; "
            "use the same preset or another output folder (out)",
            "preset",
        )
    return plan


def dry_run(settings: ReproduceConfig) -> str:
    """The plan with an estimated time per job, measured on this device (nothing is written)."""
    from meddenoise.engine.runtime import resolve_device
    from meddenoise.reproduce.estimate import estimate_plan, format_estimates

    grid = settings.grid
    jobs, skipped = plan_jobs(grid, settings.folder, settings.seeds, gpu_count())
    if settings.data:
        from meddenoise.data.cache import load_prepared

        data = load_prepared(settings.data)
        counts = {split: int(data.indices(split).size) for split in ("train", "val", "test")}
        size = int(data.images.shape[-1])
    else:  # the preset's own data, not prepared yet: its split fractions of its image count
        count, size = int(grid.prepare.get("count", 0)), int(grid.prepare.get("size", 64))
        fractions = grid.prepare.get("fractions", (0.5, 0.33, 0.17))
        counts = {split: int(round(count * f)) for split, f in zip(("train", "val", "test"), fractions)}
    device = resolve_device(settings.device)
    lines = [
        f"reproduce --preset {grid.name}: {len(jobs)} jobs on {device} "
        f"({counts['train']} train / {counts['val']} val / {counts['test']} test images of {size}x{size})"
    ]
    lines.append(format_estimates(estimate_plan(jobs, grid, counts, size, device)))
    lines += [f"not run: {item['what']} ({item['reason']})" for item in skipped]
    return "\n".join(lines)


def reproduce(settings: ReproduceConfig) -> Path:
    """Run (or continue) the grid and build the report; returns the report's Markdown path."""
    ensure_writable_dir(settings.folder, what="output folder", parameter="out")
    with folder_lock(settings.folder):  # one reproduction per folder (its jobs lock their own folders too)
        return _reproduce(settings)


def _reproduce(settings: ReproduceConfig) -> Path:
    from meddenoise.evaluation.environment import describe_environment
    from meddenoise.evaluation.runs import describe_data

    started = time.perf_counter()
    previous = _load_plan(settings)
    layout = ReproDir(settings.folder)
    save_config(settings, layout.config_file)  # the effective options, before anything runs
    data_dir = prepare_data(settings)
    from meddenoise.data.cache import load_prepared

    data = load_prepared(data_dir)
    gpus = gpu_count()
    jobs, skipped = plan_jobs(settings.grid, settings.folder, settings.seeds, gpus)
    data_info = describe_data(data)
    plan: dict[str, Any] = {
        "preset": settings.grid.name,
        "description": describe_plan(settings.grid, data_info, bool(settings.data)),
        "preset_settings": dataclasses.asdict(settings.grid),
        "seeds": settings.seeds,
        "environment": describe_environment(),
        "data": data_info,
        "skipped": skipped,
        "failed": [],
        "jobs": [
            {"name": j.name, "kind": j.kind, "folder": str(j.folder.relative_to(settings.folder))}
            for j in jobs
        ],
        "timing": timing_entries(jobs, settings.folder),
        "wall_seconds_before": previous.get("wall_seconds", 0.0),
    }
    atomic_write_json(layout.plan_file, plan)
    for index, job in enumerate(jobs, start=1):
        if files.is_done(job.folder):
            print(f"[{index}/{len(jobs)}] {job.name}: done earlier, skipped", flush=True)
            continue
        print(f"[{index}/{len(jobs)}] {job.name}", flush=True)
        job_started = time.perf_counter()
        try:
            if job.kind == "network":
                run_network_job(job, data_dir, settings)
            elif job.kind == "timing":
                train_job(job, data_dir, settings)
            elif job.kind == "federated":
                run_federated_job(job, data_dir, settings)
            else:
                run_baseline_job(job, data_dir, settings)
        except Exception as exc:  # noqa: BLE001 - one broken job must not stop the grid; it is recorded
            reason = failure_line(exc, job.folder)
            print(f"  failed: {reason}", flush=True)
            plan["failed"].append({"what": job.name, "reason": reason})
            continue
        seconds = time.perf_counter() - job_started
        files.mark_done(job.folder, f"{seconds:.1f} s")
        print(f"  done in {seconds:.1f} s", flush=True)
    reason = run_robustness(jobs, settings)
    if reason:
        plan["failed"].append({"what": "robustness evaluations", "reason": reason})
    if settings.grid.privacy:
        reason = run_privacy_audit(data_dir, jobs, settings)
        if reason:
            plan["privacy_skipped"] = reason
            plan["failed"].append({"what": "privacy audit", "reason": reason})
    else:
        plan["privacy_skipped"] = f"the {settings.grid.name} preset does not run it"
    if settings.grid.dp_epsilons:
        from meddenoise.reproduce.modes_job import run_privacy_modes

        try:
            reason = run_privacy_modes(
                settings.folder,
                data_dir,
                settings.grid,
                jobs,
                device=settings.device,
                epochs=settings.epochs,
                quiet=settings.quiet,
            )
        except MeddenoiseError as exc:
            reason = f"the privacy-modes step failed: {exc}"
        if reason:
            plan["failed"].append({"what": "privacy modes", "reason": reason})
    plan["skipped"] = skipped
    plan["wall_seconds"] = round(previous.get("wall_seconds", 0.0) + time.perf_counter() - started, 1)
    atomic_write_json(layout.plan_file, plan)
    from meddenoise.report.build import build_report

    say = (lambda text: None) if settings.quiet else (lambda text: print(text, flush=True))
    report = build_report(settings.folder, say=say)
    return report.markdown
