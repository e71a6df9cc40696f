"""The grids `meddenoise reproduce` runs (`Preset`, `PRESETS`) and its options (`ReproduceConfig`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from meddenoise.config import option, print_config_option, quiet_option
from meddenoise.errors import ConfigError

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
    # The privacy-modes table (reproduce/modes_job.py): DP-SGD runs at one level, membership audits.
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
        description="CPU-sized version of the paper's grid (narrow networks, few epochs); about 8 minutes "
        "on 2 idle cores, set-up included (7 min 51 s measured from a fresh clone; 18 min on a heavily "
        "loaded machine).",
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
