"""`fit(config)`: one readable training loop for a single device, DataParallel and DDP.

The strategies differ only in the wrapper (`Runtime.wrap`) and in the shard each rank draws from the
batch source. Per step: gather a clean batch on the device -> obfuscate it there (noise operator) -> the
target's loss -> backward / step. Nothing reads the device per step: losses are summed on the device and
read at checkpoints and epoch ends, where non-finite losses are also detected.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from meddenoise.config import config_to_dict, save_config
from meddenoise.data.loader import CleanBatch, DeviceBatches
from meddenoise.engine import checkpoint as ckpt
from meddenoise.engine import distributed
from meddenoise.engine import reference as reference_pipeline
from meddenoise.engine.config import TrainConfig, parse_options
from meddenoise.engine.ema import WeightAverage
from meddenoise.engine.losses import build_loss
from meddenoise.engine.run_files import RunLog, csv_text, read_metrics, write_metrics, write_or_check_split
from meddenoise.engine.runtime import Runtime, build_runtime, set_cpu_threads_from_env, unwrap
from meddenoise.engine.schedule import learning_rate
from meddenoise.engine.step import TrainStep, build_optimizer
from meddenoise.engine.targets import TargetBatch, build_target, make_target_batch
from meddenoise.engine.validation import evaluate_batches, evaluate_split, reduce_means
from meddenoise.errors import ConfigError, MeddenoiseError
from meddenoise.fileio import atomic_write_text, ensure_writable_dir

# Fields that must match for --resume to continue the same run (the rest, e.g. epochs, may change).
IDENTITY_FIELDS = (
    "model",
    "base_channels",
    "depth",
    "norm",
    "deep_supervision",
    "model_options",
    "noise_kind",
    "noise_mean",
    "noise_std",
    "noise_clamp",
    "noise_mode",
    "noise_seed",
    "noise_dose",
    "target",
    "target_options",
    "batch_size",
    "optimizer",
    "loss",
    "seed",
    "train_split",
    "limit_train",
)
# Under DDP a time limit needs all ranks to agree; they compare clocks every this many steps.
TIME_CHECK_INTERVAL = 20
# How often the loop looks at the device-side non-finite flag between checkpoints (a cheap host read).
FINITE_CHECK_INTERVAL = 100


class BatchSource(Protocol):
    """Where training batches come from; the fast path is `DeviceBatches` (device-resident, by index)."""

    def __len__(self) -> int: ...
    def steps_per_epoch(self) -> int: ...
    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[CleanBatch]: ...


# (data, config, runtime) -> a callable that scores a model on the validation split (`reduce_means`' dict).
ValidationFactory = Callable[[Any, TrainConfig, Runtime], Callable[[torch.nn.Module], dict[str, float]]]


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """How batches reach the step and how often the host looks at the loss (for the reference comparison)."""

    name: str
    make_train_batches: Callable[[Any, TrainConfig, Runtime], BatchSource]
    read_loss_every_step: bool = False
    # The batches carry their noisy copy (`batch.noisy`, made on the host up front); the loop makes none.
    noisy_in_batches: bool = False
    # Replaces the device-side validation when set (the reference scores per image on the CPU).
    make_validation: ValidationFactory | None = None


def _device_train_batches(data: Any, config: TrainConfig, runtime: Runtime) -> BatchSource:
    return DeviceBatches.from_prepared(
        data,
        config.train_split,
        runtime.device,
        config.batch_size * runtime.replicas_per_process,
        limit=config.limit_train,
        rank=runtime.rank,
        world_size=runtime.world_size,
        seed=config.seed,
        shuffle=True,
    )


PIPELINES: dict[str, Pipeline] = {
    "fast": Pipeline("fast", _device_train_batches),
    # The seed code's habits, for benchmarks (engine/reference.py): host dataset, DataLoader, per-step sync.
    "reference": Pipeline(
        "reference",
        reference_pipeline.make_train_batches,
        read_loss_every_step=True,
        noisy_in_batches=True,
        make_validation=reference_pipeline.make_validation,
    ),
}


def register_pipeline(pipeline: Pipeline) -> Pipeline:
    PIPELINES[pipeline.name] = pipeline
    return pipeline


@dataclasses.dataclass
class Progress:
    """Where the run is and what the unfinished epoch has accumulated (all of it goes into the checkpoint)."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    train_seconds: float = 0.0  # of the unfinished epoch
    loss_sum: torch.Tensor | None = None  # device scalar, sum of step losses in the epoch
    bad_steps: torch.Tensor | None = None  # device scalar: 1 + first global step with a non-finite loss, or 0
    seen: torch.Tensor | None = None  # (n_train,) int32: how often each training image was used this epoch

    def start_epoch(self, train_count: int, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.bad_steps = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = torch.zeros(train_count, dtype=torch.int32, device=device)
        self.train_seconds = 0.0

    def to_state(self) -> dict[str, Any]:
        state = dataclasses.asdict(self)
        return {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> Progress:
        values = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
        return cls(**values)


def model_options(config: TrainConfig) -> dict[str, Any]:
    """The keyword arguments of `build_model` for this config (only the options the model has)."""
    from meddenoise.models import get_model_entry

    accepted = get_model_entry(config.model).defaults
    options: dict[str, Any] = {"base_channels": config.base_channels}
    wanted = {"norm": config.norm, "deep_supervision": config.deep_supervision}
    if config.depth:
        wanted["depth"] = config.depth
    options.update({k: v for k, v in wanted.items() if k in accepted})
    options.update(parse_options(config.model_options))
    return options


def noise_settings(config: TrainConfig) -> dict[str, Any]:
    return {
        "kind": config.noise_kind,
        "mean": config.noise_mean,
        "std": config.noise_std,
        "clamp": config.noise_clamp,
        "dose": config.noise_dose,
        "mode": config.noise_mode,
        "seed": config.noise_seed,
    }


def _identity(config: TrainConfig, runtime: Runtime) -> dict[str, Any]:
    values = config_to_dict(config)
    identity = {name: values[name] for name in IDENTITY_FIELDS}
    identity["data_parallel_width"] = runtime.data_parallel_width
    return identity


def _check_identity(saved: dict[str, Any], current: dict[str, Any], source: Path) -> None:
    differences = [
        f"{name}: checkpoint {saved.get(name)!r} vs now {value!r}"
        for name, value in current.items()
        if saved.get(name) != value
    ]
    if differences:
        raise MeddenoiseError(
            f"cannot resume from {source}: it was trained with other settings ({'; '.join(differences)}); "
            "use the same options as the original run or start a new run with another --out"
        )


class Trainer:
    """The state of one run; `run()` is the loop. Built by `fit`."""

    def __init__(self, config: TrainConfig, runtime: Runtime) -> None:
        from meddenoise.data.cache import load_prepared
        from meddenoise.models import build_model
        from meddenoise.noise import build_noise

        self.config, self.runtime = config, runtime
        self.out = Path(config.out)
        self.paths = ckpt.checkpoint_paths(self.out)
        self._check_fresh_or_resumable()  # on every rank: none may wait in a collective for one that failed
        if runtime.is_main:
            ensure_writable_dir(self.out, what="run folder (--out)")
        self.log = RunLog(self.out / "train.log", runtime.is_main)
        if config.pipeline not in PIPELINES:
            raise ConfigError(f"--pipeline must be one of {', '.join(PIPELINES)}; got {config.pipeline!r}")
        self.pipeline = PIPELINES[config.pipeline]

        self.data = load_prepared(config.data)
        self.noise = build_noise(
            config.noise_kind,
            mean=config.noise_mean,
            std=config.noise_std,
            clamp=config.noise_clamp,
            dose=config.noise_dose,
        )
        self.target = build_target(
            config.target, self.noise, seed=config.seed, **parse_options(config.target_options)
        )
        self.loss_fn = build_loss(config.loss)
        self.model_options = model_options(config)

        torch.manual_seed(config.seed)  # identical initial weights on every rank and on resume
        self.model = runtime.place(build_model(config.model, **self.model_options))
        self.ema = WeightAverage(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.optimizer = build_optimizer(
            self.model, config.optimizer, config.lr, config.weight_decay, runtime.device
        )
        self.train_batches = self.pipeline.make_train_batches(self.data, config, runtime)
        self.val_batches = DeviceBatches.from_prepared(
            self.data,
            config.val_split,
            runtime.device,
            config.val_batch_size,
            limit=config.limit_val,
            rank=runtime.rank,
            world_size=runtime.world_size,
            shuffle=False,
        )
        make_validation = self.pipeline.make_validation
        self.pipeline_validation = make_validation(self.data, config, runtime) if make_validation else None
        self.steps_per_epoch = self.train_batches.steps_per_epoch()
        planned = config.epochs * self.steps_per_epoch
        self.total_steps = min(planned, config.max_steps) if config.max_steps else planned
        self.progress = Progress()
        self.history: list[dict[str, Any]] = []

    # -- set-up ---------------------------------------------------------------------------------------------
    def _check_fresh_or_resumable(self) -> None:
        has_state = self.paths["last_state"].is_file()
        if self.config.resume and not has_state:
            raise MeddenoiseError(
                f"--resume: {self.out} has no checkpoint to continue ({self.paths['last_state']})"
            )
        if not self.config.resume and has_state:
            raise MeddenoiseError(
                f"{self.out} already holds a run; add --resume to continue it or choose another --out"
            )

    def write_run_files(self) -> None:
        if self.runtime.is_main:
            save_config(self.config, self.out / "config.json")
            write_or_check_split(
                self.out / "split.csv", self.data.records, self.config.data, self.config.resume
            )
        distributed.barrier()

    def restore(self) -> None:
        """Continue from checkpoints/last.state.pt: weights, optimizer, scaler, EMA, target, RNG, position."""
        state = ckpt.load_training_state(self.paths["last_state"], self.runtime.device)
        _check_identity(state["identity"], _identity(self.config, self.runtime), self.paths["last_state"])
        ckpt.load_state_into(self.model, state["model"], self.paths["last_state"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.runtime.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise MeddenoiseError("the checkpoint has no EMA weights; resume without --ema-decay")
            self.ema.load_state_dict(state["ema"])
        self.target.load_state_dict(state["target"])
        self.progress = Progress.from_state(state["progress"], self.runtime.device)
        ckpt.restore_rng_states(state["rng"])
        if self.runtime.is_main:
            # Records at or after the resumed epoch are recomputed (the kill may have come after writing).
            self.history = [
                r for r in read_metrics(self.out / "metrics.jsonl") if r["epoch"] < self.progress.epoch
            ]
        p = self.progress
        self.log.info(f"resumed from {self.paths['last_state']}: epoch {p.epoch + 1}, step {p.step_in_epoch}")

    # -- checkpoints ----------------------------------------------------------------------------------------
    def _metadata(self, kind: str, epoch: int, val_loss: float | None = None) -> dict[str, Any]:
        return {
            "format_version": ckpt.FORMAT_VERSION,
            "kind": kind,
            "model": self.config.model,
            "model_options": self.model_options,
            "noise": noise_settings(self.config),
            "target": self.config.target,
            "weights": "ema" if self.ema is not None else "raw",
            "epoch": epoch,
            "global_step": self.progress.global_step,
            "step_in_epoch": self.progress.step_in_epoch,
            "val_loss": val_loss,
            "strategy": self.runtime.strategy,
            "config": config_to_dict(self.config),
        }

    def evaluated_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else unwrap(self.model)

    def save_last(self) -> None:
        """Write the last checkpoint (rank 0); called only after the loss was checked finite."""
        if not self.runtime.is_main:
            return
        state = {
            "model": ckpt.plain_state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.runtime.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "target": self.target.state_dict(),
            "progress": self.progress.to_state(),
            "rng": ckpt.rng_states(),
            "identity": _identity(self.config, self.runtime),
        }
        ckpt.save_training_state(self.paths["last_state"], state)
        # Weights of a finished epoch belong to the epoch before the position; mid-epoch ones to the current.
        epoch = self.progress.epoch - (self.progress.step_in_epoch == 0)
        ckpt.save_weights(self.paths["last_weights"], self.evaluated_model(), self._metadata("last", epoch))

    # -- checks ---------------------------------------------------------------------------------------------
    def check_finite(self) -> None:
        """Read the device-side non-finite flag (all ranks agree); stop with the step named if it was set."""
        flag = distributed.all_reduce_max(self.progress.bad_steps.clone())
        first_bad = int(flag.item())  # host read: the only per-interval synchronisation
        if first_bad:
            step = first_bad - 1
            kept = self.paths["last_weights"]
            kept_text = (
                f"the last good checkpoint is {kept}" if kept.is_file() else "no checkpoint was written yet"
            )
            raise MeddenoiseError(
                f"the training loss became NaN or infinite at step {step} (epoch {self.progress.epoch + 1}); "
                f"training stopped and {kept_text}. Try a lower --lr, --grad-clip 1.0 or --amp off"
            )

    def time_is_up(self, started: float) -> bool:
        if not self.config.time_limit:
            return False
        over = time.perf_counter() - started > self.config.time_limit
        if self.runtime.world_size == 1:
            return over
        if self.progress.global_step % TIME_CHECK_INTERVAL:
            return False
        flag = torch.tensor(int(over), device=self.runtime.device)
        return bool(distributed.all_reduce_max(flag).item())

    # -- the loop -------------------------------------------------------------------------------------------
    def train_epoch(self, step: TrainStep, run_started: float, bar: Any) -> str | None:
        """Train from the current position to the epoch's end; returns why it stopped early, if it did."""
        config, runtime, progress = self.config, self.runtime, self.progress
        model = step.model
        model.train()
        world = runtime.world_size
        epoch_started = time.perf_counter() - progress.train_seconds
        for batch in self.train_batches.epoch(progress.epoch, progress.step_in_epoch):
            if self.pipeline.noisy_in_batches:
                noisy = runtime.to_device_batch(batch.noisy)  # the reference made it on the host, up front
                target_batch = TargetBatch([noisy], batch.clean, batch.image_keys)
            else:
                target_batch = make_target_batch(
                    self.target,
                    runtime.to_device_batch(batch.clean),
                    batch.image_keys,
                    self.noise,
                    seed=config.noise_seed,
                    epoch=progress.epoch,
                    mode=config.noise_mode,
                )
            share = batch.clean.shape[0] * world / batch.global_size
            lr = learning_rate(
                progress.global_step,
                base_lr=config.lr,
                kind=config.lr_schedule,
                total_steps=self.total_steps,
                warmup_steps=config.warmup_steps,
            )
            loss = step(target_batch, share, lr)
            if self.pipeline.read_loss_every_step:
                loss = torch.tensor(loss.item(), device=loss.device)  # the reference pipeline's per-step sync
            progress.loss_sum += loss
            bad_here = (~torch.isfinite(loss)) & (progress.bad_steps == 0)
            progress.bad_steps = torch.where(bad_here, progress.global_step + 1, progress.bad_steps)
            progress.seen.index_add_(0, batch.positions, torch.ones_like(batch.positions, dtype=torch.int32))
            progress.global_step += 1
            progress.step_in_epoch += 1
            if bar is not None:
                bar.update(1)
            at_epoch_end = progress.step_in_epoch == self.steps_per_epoch
            if progress.global_step % FINITE_CHECK_INTERVAL == 0:
                self.check_finite()
            if (
                config.checkpoint_every
                and progress.global_step % config.checkpoint_every == 0
                and not at_epoch_end
            ):
                self.check_finite()
                progress.train_seconds = time.perf_counter() - epoch_started
                self.save_last()
            if config.max_steps and progress.global_step >= config.max_steps and not at_epoch_end:
                progress.train_seconds = time.perf_counter() - epoch_started
                return "max_steps"
            if self.time_is_up(run_started) and not at_epoch_end:
                progress.train_seconds = time.perf_counter() - epoch_started
                return "time_limit"
        runtime.synchronize()
        progress.train_seconds = time.perf_counter() - epoch_started
        return None

    def validate(self) -> dict[str, float]:
        if self.pipeline_validation is not None:
            return self.pipeline_validation(self.evaluated_model())
        result = evaluate_batches(
            self.evaluated_model(),
            self.val_batches,
            self.noise,
            self.runtime,
            noise_seed=self.config.noise_seed,
            loss_name=self.config.loss,
        )
        return reduce_means(result)

    def end_epoch(
        self, stop_reason: str | None, val_seconds: float, val: dict[str, float], noisy: dict
    ) -> dict:
        """Record the epoch, update best / last checkpoints and the early-stopping counter."""
        config, progress = self.config, self.progress
        finished = stop_reason is None
        steps_done = progress.step_in_epoch
        totals = distributed.all_reduce_sum(
            torch.stack([progress.loss_sum.double(), progress.seen.double().sum()])
        )
        coverage = distributed.all_reduce_sum(progress.seen.clone())
        loss_sum, images = totals.tolist()
        record = {
            "epoch": progress.epoch,
            "partial_epoch": not finished,
            "steps": steps_done,
            "global_step": progress.global_step,
            "lr": learning_rate(
                max(0, progress.global_step - 1),
                base_lr=config.lr,
                kind=config.lr_schedule,
                total_steps=self.total_steps,
                warmup_steps=config.warmup_steps,
            ),
            "train_loss": loss_sum / max(1, steps_done) / self.runtime.world_size,
            "train_images": int(images),
            "train_images_each_once": bool(finished and bool((coverage == 1).all().item())),
            "val_loss": val["loss"],
            "val_psnr": val["psnr"],
            "val_ssim": val["ssim"],
            "noisy_val_psnr": noisy["psnr"],
            "noisy_val_ssim": noisy["ssim"],
            "val_images": val["images"],
            "train_seconds": progress.train_seconds,
            "val_seconds": val_seconds,
            "images_per_second": images / progress.train_seconds
            if progress.train_seconds > 0
            else float("nan"),
            "peak_memory_mb": self.runtime.peak_memory_mb(),
        }
        improved = val["loss"] < progress.best_val_loss
        if improved:
            progress.best_val_loss, progress.best_epoch = val["loss"], progress.epoch
            progress.epochs_without_improvement = 0
        elif finished:
            progress.epochs_without_improvement += 1
        if finished:
            progress.epoch += 1
            progress.step_in_epoch = 0
            progress.start_epoch(len(self.train_batches), self.runtime.device)
        if self.runtime.is_main:
            self.history = [r for r in self.history if r["epoch"] != record["epoch"]] + [record]
            write_metrics(self.out / "metrics.jsonl", self.history)
            if improved:
                ckpt.save_weights(
                    self.paths["best_weights"],
                    self.evaluated_model(),
                    self._metadata("best", record["epoch"], val["loss"]),
                )
            self.save_last()
        return record

    def run(self) -> str:
        config, runtime, progress = self.config, self.runtime, self.progress
        if progress.loss_sum is None:
            progress.start_epoch(len(self.train_batches), runtime.device)
        step = TrainStep(
            runtime.wrap(self.model),
            self.optimizer,
            runtime,
            self.target,
            self.loss_fn,
            grad_clip=config.grad_clip,
            ema=self.ema,
        )
        noisy = reduce_means(
            evaluate_batches(
                None,
                self.val_batches,
                self.noise,
                runtime,
                noise_seed=config.noise_seed,
                loss_name=config.loss,
            )
        )
        self.log.info(
            f"noisy input on {config.val_split} ({noisy['images']} images): PSNR {noisy['psnr']:.2f} dB, "
            f"SSIM {noisy['ssim']:.4f}"
        )
        run_started = time.perf_counter()
        bar = self._progress_bar()
        stop_reason: str | None = None
        try:
            while progress.epoch < config.epochs and stop_reason is None:
                if config.max_steps and progress.global_step >= config.max_steps:
                    stop_reason = "max_steps"
                    break
                runtime.reset_peak_memory()
                stop_reason = self.train_epoch(step, run_started, bar)
                self.check_finite()
                val_started = time.perf_counter()
                val = self.validate()
                val_seconds = time.perf_counter() - val_started
                epoch_shown = progress.epoch + 1
                record = self.end_epoch(stop_reason, val_seconds, val, noisy)
                self.log.info(self._epoch_line(epoch_shown, record))
                if stop_reason is None and config.max_steps and progress.global_step >= config.max_steps:
                    stop_reason = "max_steps"
                if stop_reason is None and config.time_limit and self.time_is_up_at_epoch_end(run_started):
                    stop_reason = "time_limit"
                if config.patience and progress.epochs_without_improvement >= config.patience:
                    stop_reason = "early_stopping"
                    self.log.info(f"early stopping: no lower validation loss for {config.patience} epochs")
        finally:
            if bar is not None:
                bar.close()
        reason = stop_reason or "epochs"
        self._write_summary(reason, noisy)
        return reason

    def time_is_up_at_epoch_end(self, started: float) -> bool:
        over = torch.tensor(
            int(time.perf_counter() - started > self.config.time_limit), device=self.runtime.device
        )
        return bool(distributed.all_reduce_max(over).item())

    def _progress_bar(self) -> Any:
        if not self.runtime.is_main or self.config.quiet:
            return None
        from tqdm import tqdm

        total = min(self.total_steps, self.config.epochs * self.steps_per_epoch)
        return tqdm(
            total=total, initial=self.progress.global_step, unit="step", dynamic_ncols=True, leave=False
        )

    def _epoch_line(self, epoch: int, record: dict[str, Any]) -> str:
        partial = " (partial)" if record["partial_epoch"] else ""
        return (
            f"epoch {epoch}/{self.config.epochs}{partial}: train loss {record['train_loss']:.5f}, "
            f"val loss {record['val_loss']:.5f}, val PSNR {record['val_psnr']:.2f} dB "
            f"(noisy {record['noisy_val_psnr']:.2f}), SSIM {record['val_ssim']:.4f}, "
            f"{record['train_seconds']:.1f}+{record['val_seconds']:.1f} s, "
            f"{record['images_per_second']:.0f} img/s"
        )

    def _write_summary(self, reason: str, noisy: dict[str, float]) -> None:
        if not self.runtime.is_main:
            return
        best = next((r for r in self.history if r["epoch"] == self.progress.best_epoch), {})
        train_seconds = sum(r["train_seconds"] for r in self.history)
        row = {
            "model": self.config.model,
            "strategy": self.runtime.strategy,
            "world_size": self.runtime.world_size,
            "devices": self.runtime.data_parallel_width,
            "device": str(self.runtime.device),
            "amp": self.runtime.amp,
            "target": self.config.target,
            "noise_std": self.config.noise_std,
            "noise_mean": self.config.noise_mean,
            "epochs_run": len(self.history),
            "global_steps": self.progress.global_step,
            "stop_reason": reason,
            "best_epoch": self.progress.best_epoch,
            "best_val_loss": best.get("val_loss"),
            "best_val_psnr": best.get("val_psnr"),
            "best_val_ssim": best.get("val_ssim"),
            "noisy_val_psnr": noisy["psnr"],
            "noisy_val_ssim": noisy["ssim"],
            "train_seconds": train_seconds,
            "val_seconds": sum(r["val_seconds"] for r in self.history),
            "images_per_second": sum(r["train_images"] for r in self.history) / train_seconds
            if train_seconds
            else None,
            "peak_memory_mb": max((r["peak_memory_mb"] for r in self.history), default=None),
        }
        atomic_write_text(self.out / "summary.csv", csv_text([row]))

    # -- after training -------------------------------------------------------------------------------------
    def evaluate_test(self) -> Path | None:
        """Score the best checkpoint on the test split, per image, into test_metrics.csv (rank 0)."""
        config = self.config
        if not (config.evaluate_test and self.runtime.is_main):
            return None
        if len(self.data.indices(config.test_split)) == 0:
            self.log.info(f"no images in split {config.test_split!r}: test_metrics.csv not written")
            return None
        model, metadata = ckpt.load_trained_model(self.out, self.runtime.device)
        result = evaluate_split(
            model,
            self.data,
            config.test_split,
            self.noise,
            self.runtime,
            noise_seed=config.noise_seed,
            batch_size=config.val_batch_size,
            loss_name=config.loss,
        )
        rows = [
            {
                "image_id": result["image_id"][i],
                "patient_id": result["patient_id"][i],
                "noise_std": config.noise_std,
                "noise_mean": config.noise_mean,
                "model": config.model,
                "strategy": self.runtime.strategy,
                "psnr": float(result["psnr"][i]),
                "ssim": float(result["ssim"][i]),
                "noisy_psnr": float(result["noisy_psnr"][i]),
                "noisy_ssim": float(result["noisy_ssim"][i]),
            }
            for i in range(len(result["row"]))
        ]
        path = self.out / "test_metrics.csv"
        atomic_write_text(path, csv_text(rows))
        psnr = float(result["psnr"].mean())
        self.log.info(
            f"test ({len(rows)} images, best epoch {metadata['epoch'] + 1}): PSNR {psnr:.2f} dB "
            f"(noisy {float(result['noisy_psnr'].mean()):.2f}), SSIM {float(result['ssim'].mean()):.4f} "
            f"-> {path}"
        )
        return path


def _out_of_memory_message(config: TrainConfig) -> str:
    smaller = max(1, config.batch_size // 2)
    return (
        f"out of memory with --batch-size {config.batch_size} on the training device; "
        f"try --batch-size {smaller} (or --val-batch-size {max(1, config.val_batch_size // 2)}, --amp bf16)"
    )


def _is_out_of_memory(exc: BaseException) -> bool:
    out_of_memory_types = tuple(
        t
        for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
        if t
    )
    if out_of_memory_types and isinstance(exc, out_of_memory_types):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def fit(config: TrainConfig) -> Path:
    """Train as configured and return the run folder (see docs/training.md for what it holds)."""
    set_cpu_threads_from_env()
    runtime = build_runtime(
        strategy=config.strategy,
        device=config.device,
        amp=config.amp,
        channels_last=config.channels_last,
        compile=config.compile,
        sync_bn=config.sync_bn,
    )
    try:
        try:
            trainer = Trainer(config, runtime)
        except Exception as exc:
            if _is_out_of_memory(exc):
                raise MeddenoiseError(
                    f"out of memory while placing the prepared images and the model on {runtime.device}; "
                    "use --limit-train / --limit-val, a smaller --base-channels, or prepare smaller images"
                ) from None
            raise
        trainer.log.info(
            f"runtime: {runtime.describe()}; global batch {config.batch_size * runtime.data_parallel_width}"
        )
        trainer.write_run_files()
        if config.resume:
            trainer.restore()
        try:
            reason = trainer.run()
        except Exception as exc:
            if _is_out_of_memory(exc):
                raise MeddenoiseError(_out_of_memory_message(config)) from None
            raise
        trainer.log.info(f"training finished ({reason}); run folder {trainer.out}")
        distributed.barrier()
        trainer.evaluate_test()
        distributed.barrier()
        return trainer.out
    finally:
        distributed.teardown()
