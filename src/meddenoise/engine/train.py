"""`fit(config)`: one readable training loop for a single device, DataParallel and DDP.

The strategies differ only in the wrapper (`Runtime.wrap`) and in the shard each rank draws from the
batch source. Per step: gather a clean batch on the device -> obfuscate it there (noise operator) -> the
target's loss -> backward / step. Nothing reads the device per step: losses are summed on the device and
read at checkpoints and epoch ends, where non-finite losses are also detected.

Helpers live next door: setup.py (model, optimizer, batches and step: ordinary or DP-SGD, from one call),
loop.py (the step loop, shared with federated sites), pipelines.py (where batches come from), progress.py
(the position and the epoch's sums), identity.py (what must match to resume), run_files.py (logs and
tables), checkpoint.py (files). docs/architecture.md follows one optimizer step through them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from pathlib import Path
from typing import Any

import torch

from meddenoise.config import save_config, validate_config
from meddenoise.engine import checkpoint as ckpt
from meddenoise.engine import distributed, placement
from meddenoise.engine.config import TrainConfig, parse_options
from meddenoise.engine.ema import WeightAverage
from meddenoise.engine.event_log import TensorBoardLog, summary_writer_class
from meddenoise.engine.identity import check_identity, run_identity
from meddenoise.engine.input_profile import training_profile
from meddenoise.engine.loop import train_steps
from meddenoise.engine.losses import build_loss
from meddenoise.engine.pipelines import BatchContext, get_pipeline
from meddenoise.engine.progress import Progress
from meddenoise.engine.run_files import (
    RunLog,
    csv_text,
    epoch_line,
    learning_warning,
    summary_row,
    test_metric_rows,
    write_or_check_split,
)
from meddenoise.engine.runtime import Runtime, build_runtime, set_cpu_threads_from_env, unwrap
from meddenoise.engine.schedule import learning_rate
from meddenoise.engine.selection import released_validation_loss, resolve_rule
from meddenoise.engine.setup import training_setup
from meddenoise.engine.step import TrainStep
from meddenoise.engine.targets import build_target
from meddenoise.engine.termination import Terminated, TerminationSignal
from meddenoise.engine.validation import evaluate_batches, evaluate_split, reduce_means
from meddenoise.errors import MeddenoiseError
from meddenoise.fileio import atomic_write_text, ensure_writable_dir
from meddenoise.locking import folder_lock
from meddenoise.rundir import RunDir, write_per_image

# Under DDP a time limit needs all ranks to agree; they compare clocks every this many steps.
TIME_CHECK_INTERVAL = 20
# On a CPU the pace is measured over this many steps, and announced when the rest of the run would take
# longer than PACE_NOTE_SECONDS.
PACE_STEPS = 20
PACE_NOTE_SECONDS = 600.0
# How often the loop looks at the device-side non-finite flag between checkpoints (a cheap host read).
FINITE_CHECK_INTERVAL = 100


class Trainer:
    """The state of one run; `run()` is the loop. Built by `fit`."""

    def __init__(self, config: TrainConfig, runtime: Runtime) -> None:
        self.config, self.runtime = config, runtime
        self.out = Path(config.out)
        self.run_dir = RunDir(self.out)
        self.paths = ckpt.checkpoint_paths(self.out)
        # On every rank: none may wait in a collective for one that failed.
        self.resuming = self._decide_resume()
        if runtime.is_main:
            ensure_writable_dir(self.out, what="run folder", parameter="out")
        self.log = RunLog(self.run_dir.log_file, runtime.is_main)
        self.event_log = None
        self.termination: TerminationSignal | None = None  # set by fit while the loop runs
        self.pace_from: tuple[int, float] | None = None  # (step, clock) the CPU pace is measured from
        if "tensorboard" in config.log:
            summary_writer_class()  # on every rank: a missing package stops all of them, before training
            if runtime.is_main:
                self.event_log = TensorBoardLog(self.run_dir.tensorboard_dir)
        self.pipeline = get_pipeline(config.pipeline)
        self._build_data_and_noise()
        self._build_model_and_batches()
        self.progress = Progress()
        self.history: list[dict[str, Any]] = []

    # -- set-up ---------------------------------------------------------------------------------------------
    def _build_data_and_noise(self) -> None:
        from meddenoise.data.cache import load_prepared

        config = self.config
        self.data = load_prepared(config.data)
        self.noise_op = config.noise.build()
        target_options = parse_options(config.target_options)
        self.target = build_target(config.target, self.noise_op, seed=config.seed, **target_options)
        self.target.rank = self.runtime.rank
        self.selection = resolve_rule(config.selection, self.target)
        self.loss_fn = build_loss(config.loss)
        self.input_profile = training_profile(self.data, config.train_split, self.noise_op, config.noise.seed)

    def _build_model_and_batches(self) -> None:
        config, runtime = self.config, self.runtime
        self.model_spec = config.model_spec()
        self.model_spec.check_input_size(*self.data.images.shape[-2:])  # before any memory is asked for
        torch.manual_seed(config.seed)  # identical initial weights on every rank and on resume
        network = self.model_spec.build()
        if config.init_from:
            # Before any wrapper (DDP, Opacus) sees the network; a resumed run restores its own state later.
            state, self.initialized_from = ckpt.initial_weights(config.init_from, self.model_spec)
            network.load_state_dict(state)
        splits = [(config.train_split, config.limit_train), (config.val_split, config.limit_val)]
        needed = placement.split_bytes(self.data, splits)
        self.placement = placement.choose_placement(config.data_placement, needed, runtime.device)
        # Ordinary training or DP-SGD: model, optimizer, batches and step budget come from one call.
        self.setup = training_setup(
            runtime.place(network), self.data, config, runtime, self.pipeline, self.placement.kind
        )
        self.model, self.optimizer = self.setup.model, self.setup.optimizer
        self.train_batches, self.total_steps = self.setup.train_batches, self.setup.total_steps
        self.ema = WeightAverage(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.val_batches = placement.make_batches(
            self.data,
            config.val_split,
            runtime.device,
            config.val_batch_size,
            self.placement.kind,
            limit=config.limit_val,
            rank=runtime.rank,
            world_size=runtime.world_size,
            shuffle=False,
        )
        make_validation = self.pipeline.make_validation
        # the reference pipeline brings its own validation (host-side, per image); the fast one runs on device
        self.validation = make_validation(self.data, config, runtime) if make_validation else self._validate
        self.steps_per_epoch = self.train_batches.steps_per_epoch()

    def _results_without_state(self) -> list[str]:
        """The files of an earlier run in --out (recorded epochs, checkpoints), relative to it."""
        found = [path for path in (self.paths["best_weights"], self.paths["last_weights"]) if path.is_file()]
        metrics = self.run_dir.metrics_file
        if metrics.is_file() and metrics.read_text(encoding="utf-8").strip():
            found.append(metrics)
        return [str(path.relative_to(self.out)) for path in found]

    def _decide_resume(self) -> bool:
        """Whether this invocation continues the run in --out (`--resume auto`: when it holds a checkpoint).

        Rank 0 decides and tells the others, so all ranks of a restarted job take the same branch.
        """
        has_state = self.paths["last_state"].is_file()
        mode = self.config.resume
        orphaned = [] if has_state else self._results_without_state()
        if mode in ("auto", "no") and distributed.broadcast_object(bool(orphaned)):
            # a run's results whose training state is gone: it cannot continue, and a fresh start here would
            # overwrite its checkpoints and metrics
            raise MeddenoiseError(
                f"{self.out} holds an earlier run's results ({', '.join(orphaned) or 'on rank 0'}) but no "
                f"training state ({self.paths['last_state']}), so it cannot be continued, and starting fresh "
                "would overwrite them; move the folder aside or choose another output folder",
                parameter="out",
            )
        if mode == "auto":
            resuming = bool(distributed.broadcast_object(has_state))
            if resuming and not has_state:
                raise MeddenoiseError(
                    f"resume auto: rank 0 found {self.paths['last_state']} but rank {self.runtime.rank} "
                    "cannot see it; the run folder must be on a file system every node shares",
                    parameter="resume",
                )
            return resuming
        if mode == "yes" and not has_state:
            raise MeddenoiseError(
                f"resume: {self.out} has no checkpoint to continue ({self.paths['last_state']}); "
                "use resume auto to start fresh when there is none",
                parameter="resume",
            )
        if mode == "no" and has_state:
            raise MeddenoiseError(
                f"{self.out} already holds a run; turn resume on to continue it (resume auto continues "
                "when there is a checkpoint) or choose another output folder (out)",
                parameter="resume",
            )
        return mode == "yes"

    def write_run_files(self) -> None:
        if self.runtime.is_main:
            save_config(self.config, self.run_dir.config_file)
            write_or_check_split(self.run_dir.split_file, self.data.records, self.config.data, self.resuming)
        distributed.barrier()

    def restore(self) -> None:
        """Continue from checkpoints/last.state.pt: weights, optimizer, scaler, EMA, target, RNG, position."""
        source = self.paths["last_state"]
        state = ckpt.load_training_state(source, self.runtime.device)
        check_identity(state["identity"], run_identity(self.config, self.runtime), source)
        ckpt.load_state_into(self.model, state["model"], source)
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.runtime.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise MeddenoiseError(
                    "the checkpoint has no EMA weights; resume without ema_decay", parameter="ema_decay"
                )
            self.ema.load_state_dict(state["ema"])
        self.target.load_state_dict(state["target"])
        runtime = self.runtime
        self.progress = Progress.from_state(
            state["progress"], runtime.device, runtime.rank, runtime.world_size
        )
        ckpt.restore_rng_states(state["rng"])
        self.setup.extras.load_state_dict(state.get("extras") or {}, self.progress.global_step)
        if self.runtime.is_main:
            # Records at or after the resumed epoch are recomputed (the kill may have come after writing);
            # records count epochs from 1, the position from 0.
            self.history = [r for r in self.run_dir.read_metrics() if r["epoch"] <= self.progress.epoch]
        p = self.progress
        self.log.info(f"resumed from {source}: epoch {p.epoch + 1}, step {p.step_in_epoch}")

    # -- checkpoints ----------------------------------------------------------------------------------------
    def _metadata(self, kind: str, epoch: int, val_loss: float | None = None) -> ckpt.CheckpointMetadata:
        return ckpt.CheckpointMetadata.for_run(
            kind,
            self.config,
            epoch=epoch,
            global_step=self.progress.global_step,
            val_loss=val_loss,
            strategy=self.runtime.strategy,
            weights="ema" if self.ema is not None else "raw",
            step_in_epoch=self.progress.step_in_epoch,
            input_profile=self.input_profile,
        )

    def evaluated_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else unwrap(self.model)

    def save_last(self, best: tuple[int, float] | None = None) -> None:
        """Write the last checkpoint, and the best one when `best` = (epoch, val loss) is given (rank 0;
        every rank calls it: the epoch's sums are gathered); called only after the loss was checked finite.
        All files are checked for space first and written best first, so a failure leaves the previous
        checkpoints consistent and resumable."""
        progress_state = self.progress.to_state(self.runtime.rank, self.runtime.world_size)  # collective
        if not self.runtime.is_main:
            return
        state = {
            "model": ckpt.plain_state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.runtime.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "target": self.target.state_dict(),
            "progress": progress_state,
            "rng": ckpt.rng_states(),
            "identity": run_identity(self.config, self.runtime),
            "extras": self.setup.extras.state_dict(),  # DP-SGD: the privacy accountant
        }
        files = []
        if best is not None:
            metadata = self._metadata("best", best[0], best[1])
            files.append((self.paths["best_weights"], ckpt.weights_payload(self.evaluated_model(), metadata)))
        files.append((self.paths["last_state"], ckpt.training_state_payload(state)))
        # Weights of a finished epoch belong to the epoch before the position; mid-epoch ones to the current
        # (numbered from 1: the position's epoch p is epoch p + 1).
        epoch = self.progress.epoch + (self.progress.step_in_epoch != 0)
        last = ckpt.weights_payload(self.evaluated_model(), self._metadata("last", epoch))
        files.append((self.paths["last_weights"], last))
        ckpt.write_checkpoint_files(self.out, files)

    # -- checks ---------------------------------------------------------------------------------------------
    def check_finite(self) -> None:
        """Read the device-side non-finite flag (all ranks agree); stop with the step named if it was set."""
        step = self.progress.first_non_finite_step()  # host read: the only per-interval synchronisation
        if step is not None:
            kept = self.paths["last_weights"]
            kept_text = (
                f"the last good checkpoint is {kept}" if kept.is_file() else "no checkpoint was written yet"
            )
            raise MeddenoiseError(
                f"the training loss became NaN or infinite at step {step} (epoch {self.progress.epoch + 1}); "
                f"training stopped and {kept_text}. Try a lower lr, grad_clip 1.0 or amp off",
                parameter="lr",
            )

    def outside_stop(self, started: float, at_epoch_end: bool = False) -> str | None:
        """ "terminated" (SIGTERM received), "time_limit" (--time-limit passed) or None. Under DDP all ranks
        agree, every few steps and at epoch ends: a SIGTERM reaches the ranks at slightly different steps."""
        watching = self.termination is not None
        if not (self.config.time_limit or watching):
            return None
        terminated = watching and self.termination.received
        over = bool(self.config.time_limit) and time.perf_counter() - started > self.config.time_limit
        if self.runtime.world_size > 1:
            if not at_epoch_end and self.progress.global_step % TIME_CHECK_INTERVAL:
                return None
            flag = torch.tensor(2 if terminated else int(over), device=self.runtime.device)
            agreed = int(distributed.all_reduce_max(flag).item())
            terminated, over = agreed == 2, agreed >= 1
        return "terminated" if terminated else "time_limit" if over else None

    def _learning_rate(self, step: int) -> float:
        config = self.config
        return learning_rate(
            step,
            base_lr=config.lr,
            kind=config.lr_schedule,
            total_steps=self.total_steps,
            warmup_steps=config.warmup_steps,
        )

    # -- the loop -------------------------------------------------------------------------------------------
    # -- when to stop: these three decide, nothing else ---------------------------------------------------
    def stop_before_training(self) -> str | None:
        """Before the first epoch (a resumed run may have nothing left to do)."""
        return steps_spent(self.config, self.progress) or epochs_done(self.config, self.progress)

    def stop_after_step(self, run_started: float) -> str | None:
        """After a step inside an epoch: the step budget, SIGTERM or --time-limit (the epoch count is looked
        at between epochs only)."""
        return steps_spent(self.config, self.progress) or self.outside_stop(run_started)

    def stop_after_epoch(self, run_started: float, cut_short: str | None) -> str | None:
        """After validation: early stopping, then why the epoch was cut short (if it was), then the limits."""
        config, progress = self.config, self.progress
        if config.patience and progress.epochs_without_improvement >= config.patience:
            return "early_stopping"
        return (
            cut_short
            or steps_spent(config, progress)
            or self.outside_stop(run_started, at_epoch_end=True)
            or epochs_done(config, progress)
        )

    def _between_steps(self) -> None:
        """After a step that did not end the epoch: the periodic finite check and mid-epoch checkpoints."""
        config, progress = self.config, self.progress
        if progress.global_step % FINITE_CHECK_INTERVAL == 0:
            self.check_finite()
        if config.checkpoint_every and progress.global_step % config.checkpoint_every == 0:
            self.check_finite()
            self.save_last()

    def train_epoch(self, step: TrainStep, run_started: float, bar: Any) -> str | None:
        """Train from the current position to the epoch's end; returns why it stopped early, if it did."""
        progress = self.progress
        step.model.train()
        epoch_started = time.perf_counter() - progress.train_seconds
        cpu_started = time.process_time()  # this process's CPU time: load from others does not inflate it

        def after_step() -> str | None:
            if bar is not None:
                bar.update(1)
            if self.pace_from is not None and progress.global_step - self.pace_from[0] == PACE_STEPS:
                self._announce_pace()
            if progress.step_in_epoch == self.steps_per_epoch:
                return None  # the epoch's end: checks, checkpoint and stop decisions come after validation
            # The clock is saved before a possible mid-epoch checkpoint, so a resumed epoch keeps its time.
            progress.train_seconds = time.perf_counter() - epoch_started
            self._between_steps()
            return self.stop_after_step(run_started)

        context = functools.partial(BatchContext, self.target, self.noise_op, self.config.noise, self.runtime)
        stop_reason = train_steps(
            step,
            ((progress.epoch, b) for b in self.train_batches.epoch(progress.epoch, progress.step_in_epoch)),
            progress,
            target_batch=lambda batch, epoch: self.pipeline.target_batch(batch, context(epoch)),
            learning_rate=self._learning_rate,
            world_size=self.runtime.world_size,
            keep_loss=self.pipeline.keep_loss,
            after_step=after_step,
        )
        if stop_reason is None:
            self.runtime.synchronize()
            progress.train_seconds = time.perf_counter() - epoch_started
        self.epoch_cpu_seconds = time.process_time() - cpu_started
        return stop_reason

    def _announce_pace(self) -> None:
        """On a CPU, after the first steps: the measured pace and what it means for the whole run, when that
        is long (paper-sized networks take hours per epoch there). GPUs are not timed: their steps are
        asynchronous, and the loop never waits for them."""
        _, started = self.pace_from
        self.pace_from = None
        if self.runtime.device.type != "cpu":
            return
        per_step = (time.perf_counter() - started) / PACE_STEPS
        remaining = max(0, self.total_steps - self.progress.global_step)
        estimate = per_step * remaining
        if estimate < PACE_NOTE_SECONDS:
            return
        hours = estimate / 3600
        span = f"{hours:.1f} hours" if hours >= 1 else f"{estimate / 60:.0f} minutes"
        self.log.info(
            f"pace on this CPU: {per_step:.2f} s per step, so the remaining {remaining} steps take about "
            f"{span} (validation extra); a GPU, fewer epochs, smaller images or a base width of 8-16 "
            "shorten it"
        )

    def validate(self) -> dict[str, float]:
        return self.validation(self.evaluated_model())

    def _validate(self, model: torch.nn.Module) -> dict[str, float]:
        result = evaluate_batches(
            self.target.inference_model(model),
            self.val_batches,
            self.noise_op,
            self.runtime,
            noise_seed=self.config.noise.seed,
            loss_name=self.config.loss,
        )
        means = reduce_means(result)
        if self.selection == "released":
            means["selection_loss"] = released_validation_loss(
                self.evaluated_model(),
                self.val_batches,
                self.target,
                self.noise_op,
                self.config.noise,
                self.loss_fn,
                self.runtime,
            )
        return means

    def validate_noisy_input(self) -> dict[str, float]:
        """Metrics of the noisy validation input itself (the PSNR a denoiser has to beat), logged once."""
        config = self.config
        noisy = reduce_means(
            evaluate_batches(
                None,
                self.val_batches,
                self.noise_op,
                self.runtime,
                noise_seed=config.noise.seed,
                loss_name=config.loss,
            )
        )
        self.log.info(
            f"noisy input on {config.val_split} ({noisy['images']} images): PSNR {noisy['psnr']:.2f} dB, "
            f"SSIM {noisy['ssim']:.4f}"
        )
        return noisy

    def _epoch_record(self, finished: bool, val_seconds: float, val: dict, noisy: dict) -> dict[str, Any]:
        """The epoch's metrics.jsonl record; sums the ranks' losses and image counts (one all-reduce each)."""
        progress = self.progress
        cpu = torch.tensor(float(getattr(self, "epoch_cpu_seconds", 0.0)), dtype=torch.float64)
        totals = distributed.all_reduce_sum(
            torch.stack(
                [progress.loss_sum.double(), progress.seen.double().sum(), cpu.to(progress.seen.device)]
            )
        )
        coverage = distributed.all_reduce_sum(progress.seen.clone())
        loss_sum, images, cpu_seconds = totals.tolist()
        seconds = progress.train_seconds
        return {
            "epoch": progress.epoch + 1,
            "partial_epoch": not finished,
            "steps": progress.step_in_epoch,
            "global_step": progress.global_step,
            "lr": self._learning_rate(max(0, progress.global_step - 1)),
            "train_loss": loss_sum / max(1, progress.step_in_epoch) / self.runtime.world_size,
            "train_images": int(images),
            "train_images_each_once": bool(finished and bool((coverage == 1).all().item())),
            "val_loss": val["loss"],
            "val_psnr": val["psnr"],
            "val_ssim": val["ssim"],
            "noisy_val_psnr": noisy["psnr"],
            "noisy_val_ssim": noisy["ssim"],
            "val_images": val["images"],
            "selection": self.selection,
            "val_selection_loss": val.get("selection_loss", val["loss"]),
            "train_seconds": seconds,
            "cpu_seconds": cpu_seconds,  # process CPU time of the training loop, summed over ranks
            "load_average": load_average(),
            "val_seconds": val_seconds,
            "images_per_second": images / seconds if seconds > 0 else float("nan"),
            "peak_memory_mb": self.runtime.peak_memory_mb(),
            **self.setup.extras.record_fields(),
        }

    def end_epoch(
        self, stop_reason: str | None, val_seconds: float, val: dict[str, float], noisy: dict
    ) -> dict:
        """Record the epoch, update best / last checkpoints and the early-stopping counter."""
        progress = self.progress
        finished = stop_reason is None
        record = self._epoch_record(finished, val_seconds, val, noisy)
        improved = progress.record_validation(val.get("selection_loss", val["loss"]), finished)
        if finished:
            progress.epoch += 1
            progress.step_in_epoch = 0
            progress.start_epoch(len(self.train_batches), self.runtime.device)
        if self.runtime.is_main:
            self.history = [r for r in self.history if r["epoch"] != record["epoch"]] + [record]
            self.run_dir.write_metrics(self.history)
            if self.event_log is not None:
                self.event_log.epoch(record)
        self.save_last(best=(record["epoch"], val["loss"]) if improved else None)
        return record

    def run(self) -> str:
        """Train until --epochs, --max-steps, --time-limit or early stopping; returns the stop reason."""
        config, runtime, progress = self.config, self.runtime, self.progress
        if progress.loss_sum is None:
            progress.start_epoch(len(self.train_batches), runtime.device)
        step = self.setup.make_step(
            self.setup.wrap(self.model),
            self.optimizer,
            runtime,
            self.target,
            self.loss_fn,
            grad_clip=config.grad_clip,
            ema=self.ema,
        )
        noisy = self.validate_noisy_input()
        self.load_average_start = load_average()
        run_started = time.perf_counter()
        bar = self._progress_bar()
        stop_reason = self.stop_before_training()
        self.pace_from = (progress.global_step, time.perf_counter())
        try:
            while stop_reason is None:
                runtime.reset_peak_memory()
                cut_short = self.train_epoch(step, run_started, bar)
                self.check_finite()
                val_started = time.perf_counter()
                val = self.validate()
                val_seconds = time.perf_counter() - val_started
                epoch_shown = progress.epoch + 1
                record = self.end_epoch(cut_short, val_seconds, val, noisy)
                self.log.info(epoch_line(epoch_shown, config.epochs, record))
                stop_reason = self.stop_after_epoch(run_started, cut_short)
        finally:
            if bar is not None:
                bar.close()
            if self.event_log is not None:
                self.event_log.close()
        if stop_reason == "early_stopping":
            self.log.info(f"early stopping: no lower validation loss for {config.patience} epochs")
        self._write_summary(stop_reason, noisy)
        return stop_reason

    def _progress_bar(self) -> Any:
        if not self.runtime.is_main or self.config.quiet:
            return None
        from tqdm import tqdm

        total = min(self.total_steps, self.config.epochs * self.steps_per_epoch)
        return tqdm(
            total=total, initial=self.progress.global_step, unit="step", dynamic_ncols=True, leave=False
        )

    def _write_summary(self, reason: str, noisy: dict[str, float]) -> None:
        if not self.runtime.is_main:
            return
        row = summary_row(
            self.config,
            self.runtime,
            self.history,
            best_epoch=self.progress.best_epoch + 1,
            global_steps=self.progress.global_step,
            stop_reason=reason,
            noisy=noisy,
        )
        row["selection"] = self.selection
        row.update(self.setup.extras.summary_fields())
        # What a timing comparison needs to judge itself: other load on the machine and CPU time.
        row["cpu_seconds"] = sum(r.get("cpu_seconds") or 0.0 for r in self.history)
        row["load_average_start"] = getattr(self, "load_average_start", None)
        row["load_average_end"] = load_average()
        row["learning_warning"] = learning_warning(row.get("best_val_psnr"), noisy.get("psnr"), self.config)
        if row["learning_warning"]:
            self.log.warning(f"warning: {row['learning_warning']}")
        atomic_write_text(self.run_dir.summary_file, csv_text([row]))

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
        needed = placement.split_bytes(self.data, [(config.test_split, 0)])
        test_placement = placement.choose_placement(config.data_placement, needed, self.runtime.device)
        result = evaluate_split(
            model,
            self.data,
            config.test_split,
            self.noise_op,
            self.runtime,
            noise_seed=config.noise.seed,
            batch_size=config.val_batch_size,
            loss_name=config.loss,
            placement=test_placement.kind,
        )
        rows = test_metric_rows(result, self.data.records, config, self.runtime.strategy, config.test_split)
        path = self.run_dir.test_table_file
        write_per_image(path, rows)
        self.log.info(
            f"test ({len(rows)} images, best epoch {metadata.epoch}): "
            f"PSNR {float(result['psnr'].mean()):.2f} dB (noisy {float(result['noisy_psnr'].mean()):.2f}), "
            f"SSIM {float(result['ssim'].mean()):.4f} -> {path}"
        )
        return path


def steps_spent(config: TrainConfig, progress: Progress) -> str | None:
    return "max_steps" if config.max_steps and progress.global_step >= config.max_steps else None


def epochs_done(config: TrainConfig, progress: Progress) -> str | None:
    return "epochs" if progress.epoch >= config.epochs else None


def _is_out_of_memory(exc: BaseException) -> bool:
    out_of_memory_types = tuple(
        t
        for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
        if t
    )
    if out_of_memory_types and isinstance(exc, out_of_memory_types):
        return True
    if placement.is_host_out_of_memory(exc):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _build_trainer(config: TrainConfig, runtime: Runtime) -> Trainer:
    try:
        return Trainer(config, runtime)
    except Exception as exc:
        if _is_out_of_memory(exc):
            where = "host memory" if placement.is_host_out_of_memory(exc) else str(runtime.device)
            detail = f"{where}: {type(exc).__name__}: {str(exc)[:300]}"
            stream = (
                ""
                if config.data_placement == "stream"  # already streaming: that advice cannot help
                else "use data_placement stream (batches are read from disk as needed), "
            )
            raise MeddenoiseError(
                f"out of memory while placing the prepared images and the model on {runtime.device} "
                f"({detail}); {stream}fewer images (limit_train / limit_val), a smaller base_channels, "
                "or prepare smaller images",
                parameter="data_placement" if stream else "limit_train",
            ) from None
        raise


def _train(trainer: Trainer) -> str:
    try:
        return trainer.run()
    except Exception as exc:
        if placement.is_host_out_of_memory(exc):
            config = trainer.config
            streaming = getattr(trainer.placement, "kind", "") == "stream"
            # Already streaming, the images are not what fills memory: the batch and the network are.
            remedy = (
                f"the images are already streamed from disk, so use a smaller batch_size "
                f"({max(1, config.batch_size // 2)}) or val_batch_size "
                f"({max(1, config.val_batch_size // 2)}), or smaller images or network"
                if streaming
                else "use data_placement stream (batches are read from disk as needed) or fewer images "
                "(limit_train / limit_val)"
            )
            raise MeddenoiseError(
                f"out of host memory during training ({type(exc).__name__}: {str(exc)[:300]}); {remedy}",
                parameter="batch_size" if streaming else "data_placement",
            ) from None
        if _is_out_of_memory(exc):
            config = trainer.config
            raise MeddenoiseError(
                f"out of memory with batch_size {config.batch_size} on the training device; "
                f"try batch_size {max(1, config.batch_size // 2)} "
                f"(or val_batch_size {max(1, config.val_batch_size // 2)}, amp bf16)",
                parameter="batch_size",
            ) from None
        raise


def load_average() -> float | None:
    """The 1-minute load average of the machine (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def fit(config: TrainConfig) -> Path:
    """Train as configured and return the run folder (see docs/training.md for what it holds)."""
    set_cpu_threads_from_env()
    config = validate_config(dataclasses.replace(config).with_recipe())  # a config built in code: checked too
    # Absolute, so that evaluate, audits and reports find the data from any directory.
    config = dataclasses.replace(config, data=os.path.abspath(os.path.expanduser(config.data)))
    amp, channels_last = config.runtime_precision()
    runtime = build_runtime(
        strategy=config.strategy,
        device=config.device,
        amp=amp,
        channels_last=channels_last,
        compile=config.compile,
        sync_bn=config.sync_bn,
        dist_timeout=config.dist_timeout,
    )
    finished = False
    locked = contextlib.ExitStack()
    try:
        if runtime.is_main:  # only rank 0 writes the run folder
            run_folder = ensure_writable_dir(config.out, what="run folder", parameter="out")
            locked.enter_context(folder_lock(run_folder))
        trainer = _build_trainer(config, runtime)
        trainer.log.info(
            f"runtime: {runtime.describe()}; global batch {config.batch_size * runtime.data_parallel_width}; "
            f"data placement: {trainer.placement.reason}"
        )
        if config.init_from and not trainer.resuming:
            trainer.log.info(f"initial weights from {trainer.initialized_from}")
        for note in trainer.setup.extras.notes():
            (trainer.log.warning if note.startswith("warning:") else trainer.log.info)(note)
        trainer.write_run_files()
        if trainer.resuming:
            trainer.restore()
        with TerminationSignal() as termination:
            trainer.termination = termination
            reason = _train(trainer)
        if reason == "terminated":
            finished = True  # a clean stop: the process group is torn down normally
            progress = trainer.progress
            raise Terminated(
                f"terminated (SIGTERM) at step {progress.global_step}, epoch {progress.epoch + 1}; the last "
                f"checkpoint is in {trainer.out}: run the same command with resume to continue",
                parameter="resume",
            )
        trainer.log.info(f"training finished ({reason}); run folder {trainer.out}")
        distributed.barrier()
        trainer.evaluate_test()
        distributed.barrier()
        finished = True
        return trainer.out
    except Exception as exc:
        failure = distributed.explain_failure(exc) or ckpt.explain_write_failure(exc, config.out)
        if failure is None:
            raise
        raise failure from None
    finally:
        locked.close()
        distributed.teardown(clean=finished)
