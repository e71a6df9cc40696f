"""The reproduction's jobs, in run order, and what is skipped with the reason (no torch import)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from meddenoise.reprodir import ReproDir
from meddenoise.reproduce.presets import Preset


@dataclasses.dataclass
class Job:
    """One unit of the grid: train+evaluate a configuration, or evaluate a classical baseline."""

    name: str
    kind: str  # "network", "federated" or "baseline"
    folder: Path
    noise_std: float
    method: str
    strategy: str = ""
    seed: int = 0
    train_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    nproc: int = 0
    protocol: str = ""  # multi-device runs: "paper" or "controlled"
    repeat: int = 0  # timing repeats (kind "timing": trained only, for Table V's median)
    federation: dict[str, Any] = dataclasses.field(default_factory=dict)  # kind "federated": sites, strategy


def std_tag(noise_std: float) -> str:
    return f"std{noise_std:g}"


def strategy_overrides(strategy: str, gpus: int, preset: Preset) -> tuple[dict[str, Any] | None, str, int]:
    """(TrainConfig overrides or None if it cannot run here, label or skip reason, torchrun processes)."""
    if strategy == "single":
        return dict(SINGLE_DEVICE), "single", 0
    if strategy == "dp":
        if gpus >= 2:
            return {"strategy": "dp", "amp": "off"}, "dp", 0
        return (
            None,
            (
                f"DataParallel needs at least 2 GPUs ({gpus} here); on one device it degenerates to a single "
                "replica, so its time would say nothing about DP"
            ),
            0,
        )
    if gpus >= 2:
        # fp16 with loss scaling, as the paper's torch.cuda.amp
        return {"strategy": "ddp", "amp": "fp16", "nproc": gpus}, "ddp+amp", gpus
    if gpus == 0 and preset.cpu_ddp:
        # On CPU, DDP runs as 2 gloo processes of one thread each, in fp32: bf16 autocast is slower
        # than fp32 on
        # most CPUs and fp16 is not supported there, so AMP is left out and the label says "ddp".
        return {"strategy": "ddp", "amp": "off", "device": "cpu", "nproc": 2}, "ddp", 2
    return (
        None,
        (
            f"DDP+AMP needs at least 2 GPUs to compare with one device ({gpus} here)"
            + ("" if gpus else f"; the {preset.name} preset does not run CPU DDP")
        ),
        0,
    )


SINGLE_DEVICE = {"strategy": "single", "amp": "off"}


def train_overrides(preset: Preset, model: str, seed: int, extra: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig values of one network job: the preset's, the model's, then the job's own."""
    return {**preset.train, **preset.model_train.get(model, {}), "model": model, "seed": seed, **extra}


def network_job(
    layout: ReproDir,
    name: str,
    noise_std: float,
    method: str,
    strategy: str,
    seed: int,
    overrides: dict[str, Any],
) -> Job:
    """A train+evaluate job whose run folder is the reproduction's run folder of that name."""
    return Job(name, "network", layout.run_dir(name), noise_std, method, strategy, seed, overrides)


def plan_jobs(preset: Preset, out: Path, seeds: int, gpus: int) -> tuple[list[Job], list[dict[str, str]]]:
    """Every job of the grid, in run order, and what is skipped with the reason."""
    layout = ReproDir(out)
    from meddenoise.engine.targets import list_targets

    jobs: list[Job] = []
    skipped: list[dict[str, str]] = []
    multi_levels = (
        preset.noise_stds if preset.multi_device_noise_stds is None else preset.multi_device_noise_stds
    )
    multi_models = preset.models if preset.multi_device_models is None else preset.multi_device_models
    free_levels = preset.noise_stds if preset.clean_free_noise_stds is None else preset.clean_free_noise_stds
    available_targets = set(list_targets())
    for noise_std in preset.noise_stds:
        for method in preset.classical:
            jobs.append(
                Job(
                    f"{method}_{std_tag(noise_std)}",
                    "baseline",
                    layout.baseline_dir(f"{method}_{std_tag(noise_std)}"),
                    noise_std,
                    method,
                )
            )
        for seed in range(seeds):
            for model in (*preset.models, *preset.learned):
                name = f"{model}_{std_tag(noise_std)}_single_seed{seed}"
                overrides = train_overrides(preset, model, seed, SINGLE_DEVICE)
                jobs.append(network_job(layout, name, noise_std, model, "single", seed, overrides))
    for strategy in preset.strategies:
        if strategy == "single":
            continue
        runtime, label, nproc = strategy_overrides(strategy, gpus, preset)
        if runtime is None:
            skipped.append({"what": f"strategy {strategy}", "reason": label})
            continue
        # DataParallel is one process that splits its batch over the devices: its global batch and steps are
        # one device's already, so it has one protocol (the report derives it from the recorded steps).
        for protocol in preset.protocols if nproc else ("",):
            protocol_overrides, reason = protocol_settings(protocol, preset, nproc)
            if protocol_overrides is None:
                skipped.append({"what": f"strategy {label}, {protocol} protocol", "reason": reason})
                continue
            suffix = "" if protocol in ("paper", "") else f"-{protocol}"
            for noise_std in multi_levels:
                for seed in range(seeds):
                    for model in multi_models:
                        name = f"{model}_{std_tag(noise_std)}_{label}{suffix}_seed{seed}"
                        overrides = train_overrides(preset, model, seed, {**runtime, **protocol_overrides})
                        job = network_job(layout, name, noise_std, model, label, seed, overrides)
                        jobs.append(dataclasses.replace(job, nproc=nproc, protocol=protocol))
        left_out = [s for s in preset.noise_stds if s not in multi_levels]
        if left_out:
            skipped.append(
                {
                    "what": f"strategy {label} at noise std {', '.join(f'{s:g}' for s in left_out)}",
                    "reason": f"the {preset.name} preset times multi-device strategies at "
                    f"{', '.join(f'{s:g}' for s in multi_levels) or 'no level'} only",
                }
            )
        models_left_out = [m for m in preset.models if m not in multi_models]
        if models_left_out and multi_levels:
            skipped.append(
                {
                    "what": f"strategy {label} for {', '.join(models_left_out)}",
                    "reason": f"the {preset.name} preset times multi-device strategies with "
                    f"{', '.join(multi_models)} only (its time budget)",
                }
            )
    for target in preset.clean_free:
        if target not in available_targets:
            skipped.append(
                {"what": f"clean-free target {target}", "reason": "not registered in this installation"}
            )
            continue
        for noise_std in free_levels:
            name = f"unet-{target}_{std_tag(noise_std)}_single_seed0"
            overrides = train_overrides(preset, "unet", 0, {**SINGLE_DEVICE, "target": target})
            jobs.append(network_job(layout, name, noise_std, f"unet+{target}", "single", 0, overrides))
    jobs += federated_jobs(preset, out, skipped)
    return interleave_timing(jobs, preset, out), skipped


def protocol_settings(protocol: str, preset: Preset, nproc: int) -> tuple[dict[str, Any] | None, str]:
    """TrainConfig overrides of a multi-device timing protocol, or None and why it cannot run."""
    if protocol in ("paper", ""):
        return {}, ""
    batch = int(preset.train.get("batch_size", 16))
    if protocol == "controlled" and nproc > 0 and batch % nproc == 0:
        # the same global batch split over the devices: the same optimizer steps as one device
        return {"batch_size": batch // nproc}, ""
    return None, f"a global batch of {batch} does not split evenly over {nproc} devices"


def _single_of(jobs: list[Job], job: Job) -> int | None:
    """Position of the one-device run that `job` (a multi-device run) is compared with."""
    for position, other in enumerate(jobs):
        same = other.method == job.method and other.seed == job.seed
        if same and other.strategy == "single" and math.isclose(other.noise_std, job.noise_std):
            return position
    return None


def interleave_timing(jobs: list[Job], preset: Preset, out: Path) -> list[Job]:
    """Each multi-device run right after its one-device run (so both see the machine in the same state),
    then `timing_repeats - 1` more such pairs trained for their time only (OUT/timing/, not evaluated)."""
    layout = ReproDir(out)
    multi = [j for j in jobs if j.kind == "network" and j.strategy != "single"]
    ordered = [j for j in jobs if j not in multi]
    for job in multi:
        anchor = _single_of(ordered, job)
        position = len(ordered) if anchor is None else anchor + 1
        while position < len(ordered) and ordered[position].strategy not in ("single", ""):
            position += 1  # after the multi-device runs already placed behind the same anchor
        ordered.insert(position, job)
    pairs = [
        (ordered[_single_of(ordered, j)], j)
        for j in multi
        if j.seed == 0 and _single_of(ordered, j) is not None
    ]
    for repeat in range(1, preset.timing_repeats):
        done: set[str] = set()
        for single, job in pairs:
            for member in (job,) if single.name in done else (single, job):
                done.add(member.name)
                name = f"{member.name}_repeat{repeat}"
                overrides = {**member.train_overrides, "evaluate_test": False}
                timing = dataclasses.replace(member, name=name, kind="timing", folder=layout.timing_dir(name))
                ordered.append(dataclasses.replace(timing, train_overrides=overrides, repeat=repeat))
    return ordered


def federated_jobs(preset: Preset, out: Path, skipped: list[dict[str, str]]) -> list[Job]:
    """The preset's federated U-Net runs (skipped, with the reason, when Flower is not installed)."""
    layout = ReproDir(out)
    import importlib.util

    from meddenoise.federated import INSTALL_HINT
    from meddenoise.federated.jobs import job_name

    if not preset.federated:
        return []
    if not (importlib.util.find_spec("flwr") and importlib.util.find_spec("ray")):
        skipped.append({"what": "federated runs", "reason": f"Flower is not installed; {INSTALL_HINT}"})
        return []
    noise_std = preset.federated_noise_std
    jobs = []
    for spec in preset.federated:
        name = f"unet-{job_name(spec)}_{std_tag(noise_std)}_seed0"
        overrides = train_overrides(preset, "unet", 0, SINGLE_DEVICE)
        strategy = f"federated-{spec.get('strategy', 'fedavg')}"
        jobs.append(
            Job(
                name,
                "federated",
                layout.run_dir(name),
                noise_std,
                "unet",
                strategy,
                0,
                overrides,
                federation=dict(spec),
            )
        )
    return jobs


def timing_entries(jobs: list[Job], out: Path) -> list[dict[str, Any]]:
    """The runs Table V times (one-device and multi-device, every repeat), for the report."""
    compared = {(j.method, j.noise_std) for j in jobs if j.kind == "network" and j.strategy != "single"}
    return [
        {
            "folder": str(j.folder.relative_to(out)),
            "method": j.method,
            "noise_std": j.noise_std,
            "strategy": j.strategy,
            "protocol": j.protocol,
            "repeat": j.repeat,
        }
        for j in jobs
        if j.kind in ("network", "timing") and j.seed == 0 and (j.method, j.noise_std) in compared
    ]


def describe_plan(preset: Preset, data: dict[str, Any], given: bool) -> str:
    """The preset's description with the data it really ran on: its own, or the folder --data gave."""
    if not given:
        return f"{preset.description} Data: {preset.data_note}." if preset.data_note else preset.description
    counts = data.get("counts") or {}
    size = f"{data.get('height', '?')}x{data.get('width', '?')}"
    return (
        f"{preset.description} Data: the prepared folder given with --data (source "
        f"`{data.get('source') or '?'}`, {sum(counts.values()) or '?'} images of {size}), not the "
        "preset's own" + (f" ({preset.data_note})." if preset.data_note else ".")
    )
