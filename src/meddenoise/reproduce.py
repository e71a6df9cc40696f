"""`meddenoise reproduce`: the paper's grid (models x noise levels x strategies, plus baselines), resumable,
ending in the report.

    OUT/reproduce.json             plan, environment, data, what ran / was skipped and why, wall time
    OUT/data/                      the prepared folder (unless --data gives one)
    OUT/runs/<configuration>/      an engine run folder + evaluation/test/ + DONE when finished
    OUT/baselines/<method>_std<s>/ an evaluation folder + DONE
    OUT/privacy/                   privacy_audit.json / .md
    OUT/report.md, report.html, figures/, tables/

A configuration whose folder holds DONE is never redone; a run killed mid-training continues from its last
checkpoint with --resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import Any

from meddenoise.config import option, print_config_option, quiet_option, save_config
from meddenoise.errors import ConfigError, MeddenoiseError
from meddenoise.evaluation import files
from meddenoise.fileio import atomic_write_json, atomic_write_text, ensure_writable_dir, read_json
from meddenoise.locking import folder_lock
from meddenoise.noise.spec import NoiseSpec
from meddenoise.rundir import RunDir

PLAN_FILE = "reproduce.json"
STRATEGIES = ("single", "dp", "ddp+amp")
CLASSICAL_BASELINES = ("noisy", "gaussian", "nlm", "bm3d")


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    description: str  # the grid's settings; the data is described by `data_note` (or what --data gave)
    prepare: dict[str, Any]  # options of `meddenoise prepare`
    train: dict[str, Any]  # TrainConfig fields shared by every network run
    model_train: dict[str, dict[str, Any]]  # per-model TrainConfig overrides
    models: tuple[str, ...] = ("unet", "unetpp")
    noise_stds: tuple[float, ...] = (0.1, 0.2, 0.3)
    noise_mean: float = 0.1
    strategies: tuple[str, ...] = STRATEGIES
    multi_device_noise_stds: tuple[float, ...] | None = None  # None: every level
    multi_device_models: tuple[str, ...] | None = None  # None: every model of `models`
    cpu_ddp: bool = False  # without GPUs, run DDP as 2 gloo processes on the CPU (fp32)
    classical: tuple[str, ...] = CLASSICAL_BASELINES
    baseline_limits: dict[str, int] = dataclasses.field(default_factory=dict)  # method -> max test images
    learned: tuple[str, ...] = ("dncnn",)
    clean_free: tuple[str, ...] = ("noise2noise", "neighbor2neighbor", "r2r")
    clean_free_noise_stds: tuple[float, ...] | None = None
    # Federated runs of the U-Net (meddenoise.federated, Flower's simulation) at one noise level, each beside
    # its one-device counterpart: as many rounds of one local epoch as that run has epochs.
    federated: tuple[dict[str, Any], ...] = ()
    federated_noise_std: float = 0.2
    privacy: bool = True
    privacy_queries: int = 200
    samples: int = 3
    tune_limit: int = 16
    # The privacy-modes table (privacy/modes_job.py): DP-SGD runs at one level, membership audits.
    dp_epsilons: tuple[float, ...] = ()
    dp_scratch_epsilons: tuple[float, ...] | None = None  # DP-SGD from scratch at these (None: dp_epsilons)
    dp_noise_std: float = 0.2
    # Robustness: the one-device U-Net (seed 0) trained at this std is also tested at the grid's other
    # levels (`evaluate --noise-std`); None: not run.
    robustness_from: float | None = 0.2
    dp_delta: float = 1e-5
    dp_unit: str = "patient"
    # DP-SGD also fine-tuned from a U-Net pretrained on public data (the rendered default: one public CT),
    # beside DP-SGD from scratch; public_images rendered at the private data's size.
    dp_public_pretraining: bool = False
    public_images: int = 480
    # TrainConfig overrides of the DP-SGD fine-tunes from the public start (DP needs its own batch, rate and
    # clipping: benchmarks/results/dp_sweep_*.json). Their non-private reference keeps the grid's recipe.
    dp_finetune_train: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Membership audits (privacy/membership.py): offline LiRA with this many reference models (0: the
    # loss-threshold attack only), of membership_reference_epochs (0: the run's), trained once and shared by
    # every audited run (membership_shared_references) or like each run.
    membership_reference_models: int = 0
    membership_reference_epochs: int = 0
    membership_shared_references: bool = False
    membership_images: int = 500
    data_note: str = ""  # the preset's own data, named only when the run really used it
    # Multi-device timing protocols (Table V): "paper" keeps the batch per device (the global batch grows
    # with the devices, so fewer optimizer steps); "controlled" keeps the global batch and the steps equal
    # to one device's, so only the strategy differs.
    protocols: tuple[str, ...] = ("paper", "controlled")
    timing_repeats: int = 2  # each compared configuration is trained this often, one-device and multi in turn


_TINY_UNET = {"base_channels": 4, "depth": 3}
PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke",
        description="seconds-long end-to-end check on tiny images (numbers mean nothing).",
        data_note="the rendered default, 48 images of 32x32",
        prepare={"source": "default", "count": 48, "size": 32},
        train={"epochs": 1, "batch_size": 4, "val_batch_size": 16, "patience": 0, **_TINY_UNET},
        model_train={"dncnn": {"base_channels": 4, "model_options": ["num_layers=3"], "depth": 0}},
        noise_stds=(0.1, 0.2),
        multi_device_noise_stds=(),
        classical=("noisy", "gaussian", "bm3d"),
        baseline_limits={"bm3d": 4},
        clean_free=("noise2noise", "r2r"),
        clean_free_noise_stds=(0.2,),
        privacy_queries=8,
        samples=2,
        tune_limit=4,
        dp_epsilons=(8.0,),
        dp_delta=1e-3,
        dp_unit="image",
        dp_public_pretraining=True,
        public_images=48,
    ),
    "quick": Preset(
        name="quick",
        description="CPU-sized version of the paper's grid (narrow networks, few epochs); about 11 minutes "
        "on 2 cores, set-up included (11 min 8 s measured from a fresh clone).",
        data_note="480 of the 725 images of the embedded NIH ChestX-ray14 sample (real patients, 64x64), "
        "split by patient",
        # 480 images drawn with the seed (all 725 took the main job past 18 minutes on 2 cores).
        prepare={"source": "nih-sample", "count": 480, "size": 64},
        # A few hundred steps instead of the paper's 23,000: a larger learning rate with a one-cycle schedule
        # (and batch 8, for more steps) takes the narrow networks well past the noisy input; lr 1e-3 does not.
        # 6 epochs, not 12: with 12 the main job took 21 min 45 s on 2 cores (the U-Net's val PSNR gained
        # about 1 dB from epoch 8 to 12).
        train={
            "epochs": 6,
            "batch_size": 8,
            "val_batch_size": 64,
            "patience": 0,
            "base_channels": 8,
            "depth": 3,
            "lr": 5e-3,
            "lr_schedule": "onecycle",
        },
        model_train={"dncnn": {"base_channels": 12, "model_options": ["num_layers=6"], "depth": 0}},
        # Table V times the U-Net only (twice each, for the spread); U-Net++ doubled its cost.
        multi_device_noise_stds=(0.1,),
        multi_device_models=("unet",),
        cpu_ddp=True,
        protocols=("controlled",),
        # One timed pair: two gloo processes on the same 2 cores save no time, and a second pair (34 s) only
        # made a speed-up sentence possible. Without it the report claims no speed-up, and says why.
        timing_repeats=1,
        baseline_limits={"bm3d": 32},
        # Every clean-free target, with the supervised U-Net's settings, at std 0.2 only: the level of the
        # privacy-modes table. At every level they took 6 of the main job's minutes on the NIH sample (725
        # images; 35-60 s a run on 2 cores), which with DP-SGD and public pretraining broke its 12 minutes.
        clean_free_noise_stds=(0.2,),
        # Two local epochs per round: with one (as many rounds as the U-Net's 6 epochs, each site a third of
        # the steps) FedAvg ended at 9.2 dB, below the noisy input; with two it reached 23.2 dB.
        federated=({"sites": 3, "partition": "iid", "strategy": "fedavg", "local_epochs": 2},),
        privacy_queries=100,
        # DP-SGD at std 0.2 only, accounted per patient: fine-tuned from the public start at each epsilon,
        # from scratch at 8 only (the main job's time budget; each DP run costs about 3.5 plain ones).
        dp_epsilons=(1.0, 4.0, 8.0),
        dp_scratch_epsilons=(8.0,),
        dp_unit="patient",
        dp_public_pretraining=True,
        # The DP settings sweep on these 480 images (benchmarks/results/dp_sweep_h200.json, selected by val
        # PSNR) put the public-start fine-tunes at expected batch 64, lr 3e-3, clip 0.1 at every epsilon; the
        # grid's batch 8 left them at their first epoch. 4 epochs: 10 and 40 scored within 0.3 dB there. From
        # scratch, DP needed 40 epochs (too long here).
        dp_finetune_train={"batch_size": 64, "lr": 3e-3, "dp_max_grad_norm": 0.1, "epochs": 4},
        # Offline LiRA in the membership audits, sized to add about a minute: one reference U-Net of the
        # quick recipe (12 epochs) on the val split's 243 images took 168 s wall (158 s CPU) on the 2 loaded
        # cores it was timed on, so 2 reference models of 3 epochs (validating on 16 images), trained once
        # and shared by all ~11 audited runs (their scores are cached), cost ~25-40 s, and scoring every
        # run's last checkpoint beside its best ~15-20 s. Two is the fewest that gives LiRA's pooled
        # variance; fewer epochs than the runs only weaken the attack (the references stay OUT models).
        membership_reference_models=2,
        membership_reference_epochs=3,
        membership_shared_references=True,
    ),
    "paper": Preset(
        name="paper",
        description="the paper's settings: 256x256, base width 64, 50 epochs, batch 16 per device, Adam lr "
        "1e-3, L1.",
        data_note="NIH ChestX-ray14, 15,000 images from the first two folders",
        prepare={"source": "nih", "count": 15000, "size": 256, "nih_folders": 2},
        train={"epochs": 50, "batch_size": 16, "val_batch_size": 64, "base_channels": 64, "patience": 0},
        model_train={"dncnn": {"base_channels": 64, "depth": 0}},
        baseline_limits={"bm3d": 500},
        federated=(
            {"sites": 3, "partition": "iid", "strategy": "fedavg"},
            {"sites": 3, "partition": "dirichlet", "alpha": 0.1, "strategy": "fedavg"},
            {"sites": 3, "partition": "dirichlet", "alpha": 0.1, "strategy": "fedprox", "proximal_mu": 0.01},
            {"sites": 3, "partition": "dirichlet", "alpha": 1.0, "strategy": "fedavg"},
        ),
        privacy_queries=1000,
        dp_epsilons=(1.0, 4.0, 8.0),
        dp_public_pretraining=True,
        public_images=2000,
        membership_reference_models=4,
    ),
}


PRESET_NAMES = tuple(PRESETS)


@dataclasses.dataclass
class ReproduceConfig:
    """Every option of `meddenoise reproduce`; `reproduce(config)` runs it."""

    preset: str = option("quick", "grid size: smoke, quick or paper", choices=PRESET_NAMES)
    out: str = option("", "output folder (runs, baselines, report)", required=True)
    seeds: int = option(1, "train each configuration this many times (seeds 0..K-1); tables show the spread")
    resume: bool = option(
        False, "continue a reproduction in --out: keep finished configurations, resume runs"
    )
    data: str = option("", "use this prepared folder instead of preparing the preset's data")
    data_root: str = option("", "folder of the source images (paper preset: the NIH ChestX-ray14 root)")
    device: str = option("auto", "device for training and evaluation: auto, cpu, cuda, cuda:N")
    epochs: int = option(0, "override the preset's epochs (0: keep)")
    lpips_weights: str = option("", "AlexNet LPIPS weights file (default: the torch hub cache, else n/a)")
    dry_run: bool = option(
        False, "print the plan, every job with its estimated time on this device, and exit without running"
    )
    quiet: bool = quiet_option()
    print_config: bool = print_config_option()

    def check(self) -> None:
        if self.seeds < 1:
            raise ConfigError(f"seeds must be >= 1; got {self.seeds}", "seeds")
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0; got {self.epochs}", "epochs")

    @property
    def grid(self) -> Preset:
        return PRESETS[self.preset]

    @property
    def folder(self) -> Path:
        return Path(self.out)


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


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


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


def plan_jobs(preset: Preset, out: Path, seeds: int, gpus: int) -> tuple[list[Job], list[dict[str, str]]]:
    """Every job of the grid, in run order, and what is skipped with the reason."""
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
                    out / "baselines" / f"{method}_{std_tag(noise_std)}",
                    noise_std,
                    method,
                )
            )
        for seed in range(seeds):
            for model in (*preset.models, *preset.learned):
                name = f"{model}_{std_tag(noise_std)}_single_seed{seed}"
                overrides = train_overrides(preset, model, seed, SINGLE_DEVICE)
                jobs.append(
                    Job(name, "network", out / "runs" / name, noise_std, model, "single", seed, overrides)
                )
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
                        job = Job(
                            name, "network", out / "runs" / name, noise_std, model, label, seed, overrides
                        )
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
            jobs.append(
                Job(name, "network", out / "runs" / name, noise_std, f"unet+{target}", "single", 0, overrides)
            )
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
                timing = dataclasses.replace(member, name=name, kind="timing", folder=out / "timing" / name)
                ordered.append(dataclasses.replace(timing, train_overrides=overrides, repeat=repeat))
    return ordered


def federated_jobs(preset: Preset, out: Path, skipped: list[dict[str, str]]) -> list[Job]:
    """The preset's federated U-Net runs (skipped, with the reason, when Flower is not installed)."""
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
                out / "runs" / name,
                noise_std,
                "unet",
                strategy,
                0,
                overrides,
                federation=dict(spec),
            )
        )
    return jobs


def _prepare(settings: ReproduceConfig) -> Path:
    """The prepared folder: --data as given, else OUT/data prepared with the preset's options (reused
    if valid)."""
    if settings.data:
        return Path(settings.data)
    from meddenoise.config import config_from_mapping
    from meddenoise.data.cache import prepare
    from meddenoise.data.prepare_config import PrepareConfig
    from meddenoise.data.sources import build_source

    options = dict(settings.grid.prepare)
    if options.get("source") in ("nih", "folder") and not settings.data_root:
        raise ConfigError(
            f"the {settings.grid.name} preset reads {options['source']} images: give their folder with "
            "--data-root (or a prepared folder with --data)"
        )
    folder = settings.folder / "data"
    values = {**options, "out": str(folder), "quiet": True}
    if settings.data_root:
        values["root"] = settings.data_root
    config = config_from_mapping(PrepareConfig, values, source=f"preset {settings.grid.name}")
    ensure_writable_dir(folder, what="prepared folder")
    with folder_lock(folder):
        result = prepare(build_source(config), config)
        save_config(config, folder / "config.json")
    state = "reused" if result.reused else f"prepared in {result.seconds:.1f} s"
    print(f"data: {result.info['shape'][0]} images in {folder} ({state})", flush=True)
    return folder.resolve()  # absolute, as every run records it: the report matches runs by their folder


def _train_config(job: Job, data_dir: Path, settings: ReproduceConfig, resume: bool):
    from meddenoise.config import config_from_mapping
    from meddenoise.engine.config import TrainConfig

    values = {
        **job.train_overrides,
        "data": str(data_dir),
        "out": str(job.folder),
        "noise": job_noise(job, settings).to_dict(),
        "resume": resume,
        "quiet": settings.quiet,
    }
    if settings.epochs:
        values["epochs"] = settings.epochs
    if settings.device != "auto" and values.get("device", "auto") == "auto":
        values["device"] = settings.device
    return config_from_mapping(TrainConfig, values, source=f"preset {settings.grid.name}")


def job_noise(job: Job, settings: ReproduceConfig) -> NoiseSpec:
    """The paper's obfuscation at the job's level: Gaussian, the preset's mean, clamped, fixed, seed 0."""
    return NoiseSpec(mean=settings.grid.noise_mean, std=job.noise_std)


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


def run_network_job(job: Job, data_dir: Path, settings: ReproduceConfig) -> None:
    train_job(job, data_dir, settings)
    _evaluate(job, settings)


def _resumable(folder: Path) -> bool:
    """Whether a run folder can continue from a checkpoint; one killed before its first checkpoint is
    removed (nothing to keep)."""
    resume = RunDir(folder).has_training_state()
    if folder.exists() and not resume:
        shutil.rmtree(folder)
    return resume


def _evaluate(job: Job, settings: ReproduceConfig) -> None:
    from meddenoise.evaluation.runs import evaluate_run

    evaluate_run(
        job.folder,
        device=settings.device,
        keep_samples=settings.grid.samples,
        lpips_weights=settings.lpips_weights or None,
        quiet=settings.quiet,
    )


def train_job(job: Job, data_dir: Path, settings: ReproduceConfig) -> None:
    resume = _resumable(job.folder)
    config = _train_config(job, data_dir, settings, resume)
    from meddenoise.engine.launch import train

    train(dataclasses.replace(config, nproc=job.nproc) if config.strategy == "ddp" else config)


def run_federated_job(job: Job, data_dir: Path, settings: ReproduceConfig) -> None:
    from meddenoise.config import config_to_dict
    from meddenoise.federated import run_federated
    from meddenoise.federated.jobs import federated_config

    resume = _resumable(job.folder)  # a federation killed before its first round ended starts again
    train = config_to_dict(_train_config(job, data_dir, settings, resume))
    config = federated_config(train, job.federation, data=str(data_dir), out=str(job.folder), resume=resume)
    run_federated(config)
    _evaluate(job, settings)


def run_baseline_job(job: Job, data_dir: Path, settings: ReproduceConfig) -> None:
    from meddenoise.evaluation.runs import evaluate_baseline

    evaluate_baseline(
        job.method,
        data_dir,
        job.folder,
        noise=job_noise(job, settings),
        device="cpu",
        keep_samples=settings.grid.samples,
        lpips_weights=settings.lpips_weights or None,
        limit=settings.grid.baseline_limits.get(job.method, 0),
        tune_limit=settings.grid.tune_limit,
        quiet=settings.quiet,
    )


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


RAY_MEMORY_SIGNS = ("OutOfMemoryError", "running low on memory", "memory monitor")


def failure_line(exc: BaseException, folder: Path) -> str:
    """One line for the plan and the report's "Failed jobs": our own messages as they are; for anything else
    (a Ray or Flower traceback can run to kilobytes) its first line, with the whole text kept in
    FOLDER/failure.txt. A site Ray stopped for lack of memory gets its cause and fix."""
    if isinstance(exc, MeddenoiseError):
        return str(exc)
    text = f"{type(exc).__name__}: {exc}"
    if "\n" not in text.strip() and len(text) <= 300:
        return text
    kept = ""
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "failure.txt", text + "\n")
        kept = f" (full text: {folder / 'failure.txt'})"
    if any(sign in text for sign in RAY_MEMORY_SIGNS):
        return (
            "Ray stopped a federated site for lack of memory: give the simulation more memory or fewer "
            f"parallel sites (--sim-cpus 1, a smaller --batch-size or fewer images){kept}"
        )
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return (first if len(first) <= 300 else first[:297] + "...") + kept


def run_robustness(jobs: list[Job], settings: ReproduceConfig) -> str | None:
    """Test the one-device U-Net trained at `robustness_from` at the grid's other noise levels (each an
    evaluation folder `test-std<s>` of that run, kept out of the tables of trained levels). Returns why it
    failed, or None."""
    from meddenoise.evaluation.runs import evaluate_run

    grid = settings.grid
    source = getattr(grid, "robustness_from", None)
    if source is None:
        return None
    run = next(
        (
            j.folder
            for j in jobs
            if j.kind == "network" and j.method == "unet" and j.strategy == "single" and j.seed == 0
            and math.isclose(j.noise_std, source) and files.is_done(j.folder)
        ),
        None,
    )  # fmt: skip
    if run is None:
        return None
    for level in grid.noise_stds:
        if math.isclose(level, source):
            continue
        folder = RunDir(run).evaluation_dir(f"test-std{level:g}")
        if (folder / "evaluation.json").is_file():
            continue
        print(f"robustness: {run.name} tested at noise std {level:g}", flush=True)
        try:
            evaluate_run(
                run,
                split="test",
                device=settings.device,
                out_dir=folder,
                lpips_weights=settings.lpips_weights or None,
                quiet=settings.quiet,
                noise_std=level,
            )
        except MeddenoiseError as exc:
            return f"{run.name} at noise std {level:g}: {exc}"
    return None


def run_privacy_audit(data_dir: Path, jobs: list[Job], settings: ReproduceConfig) -> str | None:
    """Audit every noise level into OUT/privacy, the receiver's reversal by the supervised U-Net trained at
    that level; returns why it was skipped, or None."""
    from meddenoise.privacy.audit import run_audit
    from meddenoise.privacy.verdict import markdown_section

    folder = settings.folder / "privacy"
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
    atomic_write_json(folder / "privacy_audit.json", result)
    atomic_write_text(folder / "privacy_audit.md", markdown_section(result))
    files.mark_done(folder)
    return None


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


def _load_plan(settings: ReproduceConfig) -> dict[str, Any]:
    path = settings.folder / PLAN_FILE
    if not path.is_file():
        return {}
    if not settings.resume:
        raise ConfigError(
            f"{settings.folder} already holds a reproduction; add --resume to continue it (finished "
            f"configurations "
            "are kept) or choose another --out"
        )
    plan = read_json(path, what="reproduction plan")
    if plan.get("preset") != settings.grid.name:
        raise ConfigError(
            f"{settings.folder} holds a '{plan.get('preset')}' reproduction, not '{settings.grid.name}'; "
            "use the same --preset or another --out"
        )
    return plan


def dry_run(settings: ReproduceConfig) -> str:
    """The plan with an estimated time per job, measured on this device (nothing is written)."""
    from meddenoise.engine.runtime import resolve_device
    from meddenoise.plan_estimate import estimate_plan, format_estimates

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
    ensure_writable_dir(settings.folder, what="output folder (--out)")
    with folder_lock(settings.folder):  # one reproduction per folder (its jobs lock their own folders too)
        return _reproduce(settings)


def _reproduce(settings: ReproduceConfig) -> Path:
    from meddenoise.evaluation.environment import describe_environment
    from meddenoise.evaluation.runs import describe_data

    started = time.perf_counter()
    previous = _load_plan(settings)
    save_config(settings, settings.folder / "config.json")  # the effective options, before anything runs
    data_dir = _prepare(settings)
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
    atomic_write_json(settings.folder / PLAN_FILE, plan)
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
        from meddenoise.privacy.modes_job import run_privacy_modes

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
    atomic_write_json(settings.folder / PLAN_FILE, plan)
    from meddenoise.report.build import build_report

    say = (lambda text: None) if settings.quiet else (lambda text: print(text, flush=True))
    report = build_report(settings.folder, say=say)
    return report.markdown
