"""`TrainConfig`: every option of `meddenoise train`. Defaults are the paper's protocol (Adam, lr 1e-3, L1,
batch 16 per device, 50 epochs, best checkpoint by validation loss, Gaussian obfuscation with mean 0.1)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meddenoise.config import check_bounds, option, print_config_option, quiet_option, seed_option
from meddenoise.errors import ConfigError
from meddenoise.noise.spec import NoiseSpec

if TYPE_CHECKING:
    from meddenoise.models.spec import ModelSpec

# The options that make up `TrainConfig.model_spec()` (a run's network).
MODEL_FIELDS = ("model", "base_channels", "depth", "norm", "deep_supervision", "model_options")

RESUME_CHOICES = ("no", "yes", "auto")
# `--recipe small`: what took narrow networks (base 8, depth 3) past their noisy input in a few hundred steps
# (docs/training.md, "Small networks"); the paper's lr 1e-3 without a schedule left them below it.
# The --loss and --lr-schedule choices without importing torch; tests keep them equal to the registries
# (`losses.LOSSES`, `schedule.SCHEDULES`).
LOSS_CHOICES = ("l1", "l2")
SCHEDULE_CHOICES = ("none", "cosine", "onecycle")
SMALL_RECIPE = {"lr": 5e-3, "lr_schedule": "onecycle", "batch_size": 8}

# Beyond these a network does not fit any device (U-Net channels double per level: base x 2^(depth-1)).
MAX_BASE_CHANNELS = 1024
MAX_DEPTH = 12
# Opacus's get_noise_multiplier gives up above this noise multiplier (its MAX_SIGMA); beyond it the update is
# noise alone.
MAX_NOISE_MULTIPLIER = 1e6
# Saved configs and TOML files from before `--resume auto` hold a boolean.
_RESUME_SPELLINGS = {True: "yes", False: "no", "true": "yes", "false": "no"}


@dataclass
class TrainConfig:
    # -- data and outputs ----------------------------------------------------------------------------------
    data: str = option("", "prepared folder (from `meddenoise prepare`)", required=True)
    out: str = option("", "run folder to create (or to continue with --resume)", required=True)
    train_split: str = option(
        "train", "split of the prepared folder used for training", choices=("train", "val", "test", "all")
    )
    val_split: str = option(
        "val", "split used for validation (loss, PSNR, SSIM each epoch)", choices=("train", "val", "test")
    )
    test_split: str = option(
        "test", "split evaluated with the best checkpoint at the end", choices=("train", "val", "test")
    )
    evaluate_test: bool = option(
        True, "evaluate the best checkpoint on the test split and write test_metrics.csv"
    )
    limit_train: int = option(0, "use only the first N training images (0: all), for quick runs", ge=0)
    limit_val: int = option(0, "use only the first N validation images (0: all)", ge=0)
    # -- model ---------------------------------------------------------------------------------------------
    model: str = option("unet", "model name (see `meddenoise models`): unet, unetpp, dncnn")
    # Bounds that refuse absurd networks before anything is allocated; the image size bounds depth further
    # (ModelSpec.check_input_size).
    base_channels: int = option(
        64, "channels of the first level (64 in the paper)", ge=1, le=MAX_BASE_CHANNELS
    )
    depth: int = option(0, "levels of the U-Net / U-Net++ (0: the model's default)", ge=0, le=MAX_DEPTH)
    norm: str = option(
        "batch", "normalisation layers: batch (the paper) or group", choices=("batch", "group")
    )
    deep_supervision: bool = option(
        True, "U-Net++ only: train every output head (the paper); other models take only the default"
    )
    model_options: list[str] = option([], "extra model options KEY=VALUE (e.g. residual=true)")
    # -- obfuscation and target ----------------------------------------------------------------------------
    noise: NoiseSpec = option(
        NoiseSpec(), "the obfuscation: noise of the training copies and of the validation and test inputs"
    )
    target: str = option(
        "clean", "training target: clean (the paper) or a clean-free one (noise2noise, r2r, ...)"
    )
    target_options: list[str] = option([], "target options KEY=VALUE (e.g. correction=mean, gamma=2)")
    # -- optimisation --------------------------------------------------------------------------------------
    recipe: str = option(
        "paper",
        "paper: the options as given (defaults: the paper's Adam lr 1e-3, batch 16, no schedule); small: for "
        "narrow networks and few steps, options left at those defaults become lr 5e-3, one-cycle, batch 8",
        choices=("paper", "small"),
    )
    epochs: int = option(50, "training epochs", ge=1)
    batch_size: int = option(16, "images per device per step (global batch = this x devices)", ge=1)
    val_batch_size: int = option(64, "images per device per validation step", ge=1)
    lr: float = option(1e-3, "learning rate (Adam)", gt=0)
    optimizer: str = option("adam", "optimizer", choices=("adam", "adamw"))
    weight_decay: float = option(0.0, "weight decay (decoupled with adamw)", ge=0)
    loss: str = option("l1", "pixel loss: l1 (the paper) or l2", choices=LOSS_CHOICES)
    lr_schedule: str = option("none", "learning-rate schedule", choices=SCHEDULE_CHOICES)
    warmup_steps: int = option(0, "linear warm-up steps (onecycle: 0 means 30 percent of the steps)", ge=0)
    grad_clip: float = option(0.0, "clip the gradient norm to this value (0: off)", ge=0)
    ema_decay: float = option(
        0.0, "keep an exponential moving average of the weights (e.g. 0.999; 0: off)", ge=0, lt=1
    )
    patience: int = option(10, "stop after this many epochs without a lower validation loss (0: never)", ge=0)
    seed: int = seed_option()  # initialisation, epoch order, target randomness
    init_from: str = option(
        "",
        "start from another run's weights (its folder: the best checkpoint; or a .safetensors file), e.g. "
        "a network pretrained on public data before DP-SGD fine-tuning; the model options must match",
    )
    max_steps: int = option(0, "stop after this many optimizer steps (0: no limit)", ge=0)
    time_limit: float = option(0.0, "stop training after this many seconds (0: no limit)", ge=0)
    selection: str = option(
        "auto",
        "best-checkpoint rule: clean (validation loss against clean images), released (the target's own "
        "loss on held-out released copies only: what a receiving site can compute); auto: released for "
        "clean-free targets, clean for supervised training",
        choices=("auto", "clean", "released"),
    )
    # -- differential privacy (DP-SGD with Opacus; docs/privacy.md) ----------------------------------------
    dp_epsilon: float = option(
        0.0,
        "train with DP-SGD spending this privacy budget epsilon over the planned steps (0: off)",
        ge=0,
    )
    dp_delta: float = option(1e-5, "DP-SGD delta (keep it well below 1 / number of patients)", gt=0, lt=1)
    dp_max_grad_norm: float = option(
        1.0, "DP-SGD: clip each patient's (unit's) gradient to this L2 norm", gt=0
    )
    dp_noise_multiplier: float = option(
        0.0,
        "DP-SGD with this noise multiplier instead of one derived from --dp-epsilon (0: derive)",
        ge=0,
        le=MAX_NOISE_MULTIPLIER,
    )
    dp_unit: str = option(
        "patient",
        "DP-SGD privacy unit: patient (all images of a patient, the split grouping) or image",
        choices=("patient", "image"),
    )
    dp_views: int = option(
        1,
        "DP-SGD augmentation multiplicity: train on this many augmented views of every sampled image "
        "(small shifts and intensity changes, never flips), averaged into its unit's gradient before "
        "clipping; the privacy cost is unchanged",
        ge=1,
        le=64,
    )
    # -- runtime -------------------------------------------------------------------------------------------
    strategy: str = option("single", "single device, DataParallel or DDP", choices=("single", "dp", "ddp"))
    device: str = option("auto", "auto (CUDA if present), cpu, cuda or cuda:N")
    nproc: int = option(
        0, "ddp: processes to launch on this node via torchrun (0: one per GPU, or 2 on CPU)", ge=0
    )
    amp: str = option(
        "auto",
        "mixed precision: auto (bf16 on CUDA, off on CPU), off, fp16, bf16",
        choices=("auto", "off", "fp16", "bf16"),
    )
    channels_last: bool = option(True, "channels_last memory format on CUDA")
    compile: bool = option(False, "torch.compile the model (pays off for long runs on GPUs)")
    sync_bn: bool = option(False, "ddp: synchronise BatchNorm statistics across GPUs")
    dist_timeout: float = option(
        600.0,
        "ddp: seconds to wait for the other processes (joining, each exchange) before stopping with an error",
        gt=0,
    )
    pipeline: str = option(
        "fast",
        "fast: device-resident data, no per-step host sync; reference: the paper's code's pipeline, for "
        "benchmarks (host float32 dataset, DataLoader, loss.item() each step, CPU validation; fp32 or fp16)",
        choices=("fast", "reference"),
    )
    data_placement: str = option(
        "auto",
        "where the images live: device (copied once to the training device), stream (read from disk by "
        "index, a batch ahead, for splits larger than memory) or auto (device when the splits take at most "
        "half the free memory, else stream); both give the same results",
        choices=("auto", "device", "stream"),
    )
    loader_workers: int = option(
        4, "--pipeline reference: DataLoader worker processes (4 in the paper's code)", ge=0
    )
    # -- checkpoints and logs ------------------------------------------------------------------------------
    checkpoint_every: int = option(
        0, "also checkpoint every N steps inside an epoch (0: at epoch ends only)", ge=0
    )
    resume: str = option(
        "no",
        "yes (or the bare flag): continue the run in --out from its last checkpoint; auto: continue when "
        "--out holds a checkpoint, else start fresh (torchrun restarts, SLURM requeue); no: start fresh",
        choices=RESUME_CHOICES,
        bare="yes",
    )
    log: list[str] = option(
        [],
        "extra training logs besides metrics.jsonl (always written): tensorboard (event files in "
        "RUN/tensorboard/; needs pip install 'meddenoise[tensorboard]')",
        choices=("tensorboard",),
    )
    quiet: bool = quiet_option()
    print_config: bool = print_config_option()

    def __post_init__(self) -> None:
        key = self.resume.lower() if isinstance(self.resume, str) else self.resume
        self.resume = _RESUME_SPELLINGS.get(key, self.resume)

    def with_recipe(self) -> TrainConfig:
        """The config with `recipe` applied: under "small", each option of SMALL_RECIPE still at the paper's
        default takes the small recipe's value; options given explicitly are kept."""
        if self.recipe != "small":
            return self
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        changes = {
            name: value for name, value in SMALL_RECIPE.items() if getattr(self, name) == defaults[name]
        }
        return dataclasses.replace(self, **changes)

    def check(self) -> None:
        # Single-option numeric rules (ranges, finiteness) are declared on the fields above and checked by
        # `validate_config`; again here for a config made in code and checked directly. Below: rules that
        # join several options.
        check_bounds(self)
        if self.pipeline == "reference":
            self._check_reference()
            if self.data_placement != "auto":
                raise ConfigError(
                    "data_placement applies to the fast pipeline (the reference pipeline keeps its own "
                    "host dataset); leave data_placement at auto",
                    "data_placement",
                )
        from meddenoise.engine import private

        private.check_config(self)
        for item in [*self.model_options, *self.target_options]:
            if "=" not in item:
                parameter = "model_options" if item in self.model_options else "target_options"
                raise ConfigError(f"{parameter} expects KEY=VALUE items; got {item!r}", parameter)

    def _check_reference(self) -> None:
        """The paper's code's modes only: fp32 or fp16 AMP, no compile, one fixed noisy copy, supervised."""
        if self.amp == "bf16" or self.compile:
            raise ConfigError(
                "the reference pipeline reproduces the paper's code: fp32 (amp off) or its fp16 AMP "
                "(amp fp16), without compile; use the fast pipeline for bf16 or torch.compile",
                "amp" if self.amp == "bf16" else "compile",
            )
        if self.noise.mode != "fixed" or self.target != "clean":
            raise ConfigError(
                "the reference pipeline trains like the paper's, on one fixed noisy copy per image against "
                "the clean image: use noise.mode fixed and target clean (or the fast pipeline)",
                "noise.mode" if self.noise.mode != "fixed" else "target",
            )

    def runtime_precision(self) -> tuple[str, bool]:
        """(amp, channels_last) the runtime uses: as given, except that the reference pipeline runs like the
        paper's code, in fp32 unless fp16 is asked for and in torch's default memory format. (`check()`
        validates and never changes a value; this is where such defaults are decided.)"""
        if self.pipeline == "reference":
            return ("off" if self.amp == "auto" else self.amp), False
        return self.amp, self.channels_last

    def step_budget(self, steps_per_epoch: int) -> int:
        """The optimizer steps this run takes: `epochs` epochs, capped by `max_steps` (the one place that
        counts them; DP-SGD derives its noise multiplier from the same number)."""
        planned = self.epochs * steps_per_epoch
        return min(planned, self.max_steps) if self.max_steps else planned

    def model_spec(self) -> ModelSpec:
        """The network this config trains (`--model`, `--base-channels`, `--depth`, `--norm`, ...)."""
        from meddenoise.models.spec import ModelSpec

        return ModelSpec(
            name=self.model,
            base_channels=self.base_channels,
            depth=self.depth,
            norm=self.norm,
            deep_supervision=self.deep_supervision,
            options=parse_options(self.model_options),
        )


def parse_options(items: list[str]) -> dict[str, object]:
    """KEY=VALUE strings -> typed values (true/false, ints, floats, else strings)."""
    parsed: dict[str, object] = {}
    for item in items:
        key, _, text = item.partition("=")
        lowered = text.strip().lower()
        value: object
        if lowered in ("true", "false"):
            value = lowered == "true"
        elif lowered in ("none", "null"):
            value = None
        else:
            try:
                value = int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    value = text
        parsed[key.strip().replace("-", "_")] = value
    return parsed
