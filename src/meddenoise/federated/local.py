"""A site's own work, without Flower: load only its images, train the global model on them for one round
through the engine's step loop (`engine.loop.train_steps`), and score a model on its validation or test
images.

Everything a site is told comes in a *recipe* (the server's local-training settings, the same fields as
`meddenoise train`); everything it sends back is weights and aggregates (means and counts), never an image
or a per-image value. Flower's messages are built around this in `meddenoise.federated.client`.

Data order and noise follow the centralized engine: a site's k-th local step overall is step k of its own
epoch stream (epoch order drawn from (seed, epoch), obfuscation noise from the noise seed), so one site
training one local epoch per round walks exactly the batches `meddenoise train` would.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from meddenoise.data.loader import CleanBatch, DeviceBatches
from meddenoise.engine.config import TrainConfig
from meddenoise.errors import DataError, MeddenoiseError
from meddenoise.federated.sites import Site, site_rows

# Seeds of a random target's draws in round r are seed + stride * (r - 1): fresh per round, reproducible.
ROUND_SEED_STRIDE = 1_000_003


def recipe_train_config(recipe: dict[str, Any], site: Site) -> TrainConfig:
    from meddenoise.config import config_from_mapping

    values = dict(recipe["train"])
    values.update(data=site.data, out="(federated site)", evaluate_test=False, quiet=True)
    return config_from_mapping(TrainConfig, values, source="the server's recipe")


class ProximalTarget:
    """FedProx: the wrapped target's loss plus mu/2 ||w - w_global||^2 (w_global: the round's start)."""

    def __init__(self, inner: Any, model: nn.Module, mu: float) -> None:
        self.inner, self.mu = inner, mu
        self.needs_clean, self.copies = inner.needs_clean, inner.copies
        self.anchor = [p.detach().clone() for p in model.parameters()]

    def loss(self, model: nn.Module, batch: Any, loss_fn: Any) -> torch.Tensor:
        loss = self.inner.loss(model, batch, loss_fn)
        distance = sum(
            (p.float() - a.float()).square().sum() for p, a in zip(model.parameters(), self.anchor)
        )
        return loss + 0.5 * self.mu * distance


class LocalSite:
    """One site's images (read once, only its own rows), model and training pieces."""

    def __init__(self, site: Site, recipe: dict[str, Any]) -> None:
        from meddenoise.data.cache import load_prepared
        from meddenoise.engine.losses import build_loss
        from meddenoise.engine.runtime import build_runtime, set_cpu_threads_from_env

        set_cpu_threads_from_env()
        self.site, self.recipe = site, recipe
        self.config = config = recipe_train_config(recipe, site)
        self.runtime = build_runtime(
            strategy="single", device=config.device, amp=config.amp, channels_last=config.channels_last
        )
        self.data = load_prepared(site.data)
        limits = {"train": config.limit_train, "val": config.limit_val, "test": 0}
        self.rows = {}
        for split, limit in limits.items():
            rows = site_rows(site, self.data.records, self.data.splits, split)
            self.rows[split] = rows[:limit] if limit else rows
        self.noise = config.noise.build()
        self.loss_fn = build_loss(config.loss)
        self.model = self.runtime.place(config.model_spec().build())
        self._batches: dict[str, DeviceBatches] = {}

    # -- data -----------------------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return {split: int(len(rows)) for split, rows in self.rows.items()}

    def batches(self, split: str) -> DeviceBatches:
        """The site's images of `split` on its device (read from disk the first time only)."""
        if split not in self._batches:
            rows = self.rows[split]
            if len(rows) == 0:
                raise DataError(f"site {self.site.name} has no {split} images in {self.site.data}")
            config = self.config
            training = split == "train"
            self._batches[split] = DeviceBatches.from_rows(
                self.data,
                rows,
                self.runtime.device,
                config.batch_size if training else config.val_batch_size,
                seed=config.seed,
                shuffle=training,
            )
        return self._batches[split]

    def steps_per_round(self) -> int:
        local_steps = int(self.recipe["local_steps"])
        if local_steps:
            return local_steps
        return int(self.recipe["local_epochs"]) * self.batches("train").steps_per_epoch()

    def _stream(self, start: int, count: int) -> Iterator[tuple[int, CleanBatch]]:
        """(epoch, batch) for the site's local steps start .. start + count - 1, across epoch ends."""
        batches = self.batches("train")
        epoch, step = divmod(start, batches.steps_per_epoch())
        produced = 0
        while produced < count:
            for batch in batches.epoch(epoch, step):
                yield epoch, batch
                produced += 1
                if produced == count:
                    return
            epoch, step = epoch + 1, 0

    # -- weights --------------------------------------------------------------------------------------------
    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        from meddenoise.engine.checkpoint import load_state_into

        load_state_into(self.model, state, f"the global model sent to site {self.site.name}")

    def weights(self) -> dict[str, torch.Tensor]:
        from meddenoise.engine.checkpoint import plain_state_dict

        return plain_state_dict(self.model)

    # -- one round ------------------------------------------------------------------------------------------
    def train_round(
        self, server_round: int, *, proximal_mu: float = 0.0, optimizer_state: dict | None = None
    ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """Train the loaded weights for one round.

        `optimizer_state` (from `flatten_optimizer_state`) continues the site's optimizer from its last round;
        returns (aggregate metrics, the optimizer state flattened)."""
        from meddenoise.engine.config import parse_options
        from meddenoise.engine.loop import train_steps
        from meddenoise.engine.progress import Progress
        from meddenoise.engine.schedule import learning_rate
        from meddenoise.engine.step import TrainStep, build_optimizer
        from meddenoise.engine.targets import build_target, make_target_batch

        config, runtime = self.config, self.runtime
        steps = self.steps_per_round()
        first_step = (server_round - 1) * steps
        total_steps = int(self.recipe["rounds"]) * steps
        target = build_target(
            config.target,
            self.noise,
            seed=config.seed + ROUND_SEED_STRIDE * (server_round - 1),
            **parse_options(config.target_options),
        )
        if proximal_mu > 0:
            target = ProximalTarget(target, self.model, proximal_mu)
        optimizer = build_optimizer(
            self.model, config.optimizer, config.lr, config.weight_decay, runtime.device
        )
        if optimizer_state:
            optimizer.load_state_dict(unflatten_optimizer_state(optimizer_state, optimizer.state_dict()))
        step = TrainStep(self.model, optimizer, runtime, target, self.loss_fn, grad_clip=config.grad_clip)
        self.model.train()
        # The round's position continues the site's step count, so the schedule runs over all rounds.
        progress = Progress(global_step=first_step)
        progress.start_epoch(len(self.batches("train")), runtime.device)
        started = time.perf_counter()
        train_steps(
            step,
            self._stream(first_step, steps),
            progress,
            target_batch=lambda batch, epoch: make_target_batch(
                target,
                runtime.to_device_batch(batch.clean),
                batch.image_keys,
                self.noise,
                config.noise,
                epoch=epoch,
            ),
            learning_rate=lambda global_step: learning_rate(
                global_step,
                base_lr=config.lr,
                kind=config.lr_schedule,
                total_steps=total_steps,
                warmup_steps=config.warmup_steps,
            ),
        )
        runtime.synchronize()
        seconds = time.perf_counter() - started
        # The round's one host read of the loss and of the non-finite flag.
        train_loss = float(progress.loss_sum.item()) / steps
        images = int(progress.seen.sum().item())
        if progress.first_non_finite_step() is not None or not np.isfinite(train_loss):
            raise MeddenoiseError(
                f"site {self.site.name}: the training loss became NaN or infinite in round {server_round}; "
                "try a lower lr or grad_clip 1.0",
                parameter="lr",
            )
        metrics = {
            "train_loss": train_loss,
            "train_images": float(images),
            "steps": float(steps),
            "train_seconds": seconds,
        }
        return metrics, flatten_optimizer_state(optimizer.state_dict())

    @torch.no_grad()
    def evaluate(self, split: str, *, noisy_input: bool = False) -> dict[str, float]:
        """Mean loss / PSNR / SSIM of the loaded model (or of the noisy input) on the site's `split`."""
        from meddenoise.engine.validation import evaluate_batches, reduce_means

        started = time.perf_counter()
        result = evaluate_batches(
            None if noisy_input else self.model,
            self.batches(split),
            self.noise,
            self.runtime,
            noise_seed=self.config.noise.seed,
            loss_name=self.config.loss,
        )
        means = reduce_means(result)
        means["seconds"] = time.perf_counter() - started
        return means


def flatten_optimizer_state(state: dict) -> dict[str, torch.Tensor]:
    """An optimizer's per-parameter tensors as a flat name -> tensor map (hyper-parameters are rebuilt)."""
    flat = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            flat[f"{index}.{name}"] = tensor.detach().cpu()
    return flat


def unflatten_optimizer_state(flat: dict[str, torch.Tensor], template: dict) -> dict:
    """The inverse of `flatten_optimizer_state`, with `template`'s (a fresh optimizer's) param groups."""
    per_parameter: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        index, name = key.split(".", 1)
        per_parameter.setdefault(int(index), {})[name] = tensor
    return {"state": per_parameter, "param_groups": template["param_groups"]}
