"""How long a reproduction plan will take on this device (`reproduce --dry-run`), from timings taken here.

Every network configuration of the plan is timed for a few optimizer steps on random images of the plan's
size (Adam, L1; after warm-up; CUDA synchronised), DP-SGD runs with Opacus's per-sample gradients when Opacus
is installed, and each classical baseline denoises two images. A job's estimate is then its steps (epochs x
batches, plus validation and test passes at a third of a step per batch) or its images times those timings.
What is not timed (the privacy audit's matching, membership audits, the report) is listed as such, never
given a number.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch

WARMUP_STEPS = 1
TIMED_STEPS = 3
# What decides a step's time: the network and the batch (not the seed, target or noise level).
STEP_KEYS = ("model", "base_channels", "depth", "norm", "deep_supervision", "model_options", "batch_size")
# A validation or test batch runs forward only: about a third of a training step's work.
FORWARD_SHARE = 1.0 / 3.0


@dataclasses.dataclass
class Estimate:
    name: str
    kind: str
    seconds: float | None  # None: not estimated (why in `how`)
    how: str


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_seconds(
    train_values: dict[str, Any], size: int, device: torch.device, private: bool = False
) -> float:
    """Seconds per optimizer step of the network `train_values` describes, timed here on random images."""
    from meddenoise.config import config_from_mapping
    from meddenoise.engine.config import TrainConfig

    values = {**train_values, "data": "unused", "out": "unused"}
    config = config_from_mapping(TrainConfig, values, source="plan estimate")
    model = config.model_spec().build().to(device)
    if private:
        from opacus import GradSampleModule

        from meddenoise.engine.private import prepare_model

        prepare_model(model)  # as the DP runs do (no in-place activations under Opacus's hooks)
        model = GradSampleModule(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(config.batch_size, 1, size, size, generator=generator).to(device)
    targets = torch.rand(config.batch_size, 1, size, size, generator=generator).to(device)
    model.train()

    def one_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        output = model(images)
        if isinstance(output, (list, tuple)):
            output = output[-1]
        torch.nn.functional.l1_loss(output, targets).backward()
        optimizer.step()

    import warnings

    warnings.filterwarnings("ignore", message="Full backward hook is firing")  # Opacus, as in training
    for _ in range(WARMUP_STEPS):
        one_step()
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(TIMED_STEPS):
        one_step()
    _synchronize(device)
    return (time.perf_counter() - started) / TIMED_STEPS


def baseline_seconds_per_image(method: str, noise_mean: float, noise_std: float, size: int) -> float:
    """Seconds per image of a classical baseline with its default parameters, timed on two images."""
    from meddenoise.baselines.classical import build_baseline

    baseline = build_baseline(method, noise_mean, noise_std)
    images = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    baseline(images)
    return (time.perf_counter() - started) / 2


def estimate_plan(
    jobs: list[Any], preset: Any, counts: dict[str, int], size: int, device: torch.device
) -> list[Estimate]:
    """One Estimate per job of the plan (`reproduce.plan_jobs`), then the steps after the grid."""
    from meddenoise.baselines.classical import DEFAULT_GRIDS

    train_images, val_images, test_images = (counts.get(k, 0) for k in ("train", "val", "test"))
    steps_cache: dict[tuple, float] = {}
    baseline_cache: dict[str, float] = {}

    def timed(values: dict[str, Any], private: bool = False) -> float:
        key = tuple(str(values.get(k)) for k in STEP_KEYS) + (private,)
        if key not in steps_cache:
            steps_cache[key] = step_seconds(values, size, device, private)
        return steps_cache[key]

    def network_seconds(values: dict[str, Any], per_step: float, epochs: int, batch: int) -> float:
        batches = math.ceil(train_images / max(1, batch))
        evaluation = math.ceil(val_images / int(values.get("val_batch_size", 64))) * epochs
        evaluation += math.ceil(test_images / 16)
        return per_step * (epochs * batches + FORWARD_SHARE * evaluation)

    estimates = []
    for job in jobs:
        if job.kind in ("network", "timing", "federated"):
            values = {k: v for k, v in job.train_overrides.items() if k != "evaluate_test"}
            values.setdefault("model", job.method.partition("+")[0])
            # one process's steps: DDP's controlled protocol splits the same global batch over processes
            batch = int(preset.train.get("batch_size", 16))
            timing_values = {**values, "batch_size": batch, "strategy": "single", "device": str(device)}
            timing_values.pop("nproc", None)
            per_step = timed(timing_values)
            epochs = int(values.get("epochs", preset.train.get("epochs", 1)))
            if job.kind == "federated":
                epochs *= int((job.federation or {}).get("local_epochs", 1))
            steps = math.ceil(train_images / batch)
            how = f"{per_step:.3f} s per step (timed here) x {epochs} epoch(s) of {steps} steps"
            if job.nproc:
                how += f"; {job.nproc} processes share this machine's cores, so no faster than one"
            estimates.append(
                Estimate(job.name, job.kind, network_seconds(values, per_step, epochs, batch), how)
            )
        else:
            method = job.method
            if method == "noisy":
                estimates.append(Estimate(job.name, job.kind, 0.1 * test_images / 16, "no denoising"))
                continue
            if method not in baseline_cache:  # the noise level hardly changes a filter's time
                baseline_cache[method] = baseline_seconds_per_image(
                    method, preset.noise_mean, job.noise_std, size
                )
            per_image = baseline_cache[method]
            limit = preset.baseline_limits.get(method, 0)
            images = min(test_images, limit) if limit else test_images
            grid = DEFAULT_GRIDS.get(method) or {}
            settings = math.prod(len(v) for v in grid.values()) if grid else 0
            tuned = settings * min(val_images, preset.tune_limit)
            estimates.append(
                Estimate(
                    job.name,
                    job.kind,
                    per_image * (images + tuned),
                    f"{per_image:.3f} s per image (timed here) x {images} test + {tuned} tuning images",
                )
            )
    estimates += _after_grid(preset, timed, network_seconds)
    return estimates


def _after_grid(preset: Any, timed: Any, network_seconds: Any) -> list[Estimate]:
    """The steps after the grid: robustness evaluations, privacy audit, privacy modes, report."""
    import importlib.util

    extra = [
        Estimate(
            "privacy audit", "audit", None, "not estimated: matching time depends on the matcher and data"
        ),
    ]
    if getattr(preset, "dp_epsilons", ()):
        base = {**preset.train, **preset.model_train.get("unet", {}), "model": "unet", "norm": "group"}
        plain = timed({**base, "strategy": "single"})
        epochs = int(base.get("epochs", 1))
        batch = int(base.get("batch_size", 16))
        runs = 1 + (2 if preset.dp_public_pretraining else 0)  # non-private, public, non-private fine-tune
        extra.append(
            Estimate(
                "privacy modes: non-private runs",
                "privacy",
                runs * network_seconds(base, plain, epochs, batch),
                f"{runs} runs of the GroupNorm U-Net, {plain:.3f} s per step",
            )
        )
        if importlib.util.find_spec("opacus"):
            from meddenoise.reproduce.modes_job import scratch_epsilons

            scratch = len(scratch_epsilons(preset))
            finetune = getattr(preset, "dp_finetune_train", {})
            tuned = {**base, **finetune}
            dp_scratch = timed({**base, "strategy": "single"}, private=True)
            dp_tuned = timed({**tuned, "strategy": "single"}, private=True)
            seconds = scratch * network_seconds(base, dp_scratch, epochs, batch)
            if preset.dp_public_pretraining:
                seconds += len(preset.dp_epsilons) * network_seconds(
                    tuned, dp_tuned, int(tuned.get("epochs", epochs)), int(tuned.get("batch_size", batch))
                )
            extra.append(
                Estimate(
                    "privacy modes: DP-SGD runs",
                    "privacy",
                    seconds,
                    f"per-sample gradients (Opacus) timed here: {dp_scratch:.3f} s per step",
                )
            )
        extra.append(
            Estimate(
                "privacy modes: membership audits",
                "privacy",
                None,
                "not estimated (reference models, scoring)",
            )
        )
    extra.append(
        Estimate("report", "report", None, "not estimated (seconds to a minute: figures and tables)")
    )
    return extra


def format_estimates(estimates: list[Estimate]) -> str:
    width = max(len(e.name) for e in estimates)
    lines = []
    for number, estimate in enumerate(estimates, start=1):
        seconds = "not estimated" if estimate.seconds is None else _duration(estimate.seconds)
        lines.append(f"  {number:>3}. {estimate.name:<{width}}  {seconds:>13}  {estimate.how}")
    known = sum(e.seconds for e in estimates if e.seconds is not None)
    unknown = sum(1 for e in estimates if e.seconds is None)
    lines.append(
        f"estimated: about {_duration(known)} for what was timed"
        + (f", plus {unknown} step(s) not estimated" if unknown else "")
        + " (timings taken now on this machine; other load slows them)"
    )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
