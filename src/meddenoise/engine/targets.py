"""What the model learns to output: the clean image (the paper) or, in clean-free modes, another noisy view.

The engine makes `copies` independently obfuscated copies of each clean batch with the noise operator
(copy c uses `NoiseSpec.copy_seed(c)`) and hands the target a `TargetBatch`. When the target says
`needs_clean = False` the engine builds that batch with `clean=None`, so a clean-free method cannot peek at
clean pixels even by mistake. Clean-free targets live in `meddenoise.privacy.targets` and register with
the decorator here.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from meddenoise.errors import ConfigError
from meddenoise.noise.spec import NoiseSpec
from meddenoise.registry import Registry

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PLUGIN_MODULES = ("meddenoise.privacy.targets",)


@dataclasses.dataclass
class TargetBatch:
    """One training batch as a target sees it: `noisy[c]` is copy c (B, 1, H, W); `clean` is None when the
    target trains without clean images; `image_keys` (B,) int64 identify the images."""

    noisy: list[torch.Tensor]
    clean: torch.Tensor | None
    image_keys: torch.Tensor


class TrainingTarget:
    """Base class: `loss(model, batch, loss_fn)` returns a scalar to minimise.

    `copies` is how many independently obfuscated copies of each image the releasing site publishes;
    `needs_clean` says whether the receiving site needs clean pixels (only supervised training does).
    """

    name: str = ""
    needs_clean: bool = True
    copies: int = 1
    rank: int = 0  # the DDP rank (set by the trainer): random targets draw per-rank numbers

    def __init__(self, noise_op: Any, **options: Any) -> None:
        if options:
            raise ConfigError(f"unknown option(s) for target {self.name!r}: {', '.join(sorted(options))}")
        self.noise_op = noise_op

    def loss(self, model: nn.Module, batch: TargetBatch, loss_fn: LossFn) -> torch.Tensor:
        raise NotImplementedError

    def inference_model(self, model: nn.Module) -> nn.Module:
        """What denoises at test time: the model itself, unless the method prescribes more (R2R averages
        over re-corruptions)."""
        return model

    @contextlib.contextmanager
    def held_out_draws(self) -> Iterator[None]:
        """Within this block the target's random draws come from a stream fixed across epochs (for a
        validation loss every epoch can be compared on), without moving the training stream."""
        yield

    def state_dict(self) -> dict[str, Any]:
        """Random state to checkpoint (targets that draw random numbers override this for exact resume)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"target {self.name!r} keeps no state but the checkpoint has {sorted(state)}")


TARGETS: Registry[type[TrainingTarget]] = Registry(
    "training target", parameter="target", plugins=PLUGIN_MODULES
)


def register_target(name: str) -> Callable[[type[TrainingTarget]], type[TrainingTarget]]:
    """Class decorator: make a `TrainingTarget` subclass available as `--target NAME`."""

    def decorator(cls: type[TrainingTarget]) -> type[TrainingTarget]:
        if not (isinstance(cls, type) and issubclass(cls, TrainingTarget)):
            raise TypeError(f"target {name!r} must subclass TrainingTarget")
        TARGETS.add(name, cls)
        cls.name = name
        return cls

    return decorator


def list_targets() -> list[str]:
    return TARGETS.names()


def build_target(name: str, noise_op: Any, **options: Any) -> TrainingTarget:
    """Build a registered target, e.g. `build_target("noise2noise", noise_op, seed=0)`."""
    return TARGETS.get(name)(noise_op, **options)


@register_target("clean")
class CleanTarget(TrainingTarget):
    """Supervised (the paper): the model maps the obfuscated copy to the clean image."""

    needs_clean = True
    copies = 1

    def __init__(self, noise_op: Any, *, seed: int = 0, **options: Any) -> None:
        super().__init__(noise_op, **options)  # `seed` is accepted for a uniform call; nothing here is random

    def loss(self, model: nn.Module, batch: TargetBatch, loss_fn: LossFn) -> torch.Tensor:
        if batch.clean is None:
            raise ValueError("the 'clean' target needs clean images but the batch has none")
        output = model(batch.noisy[0])
        heads = [output] if isinstance(output, torch.Tensor) else list(output)
        # U-Net++ with deep supervision returns one output per head: every head is trained, equally weighted.
        return torch.stack([loss_fn(head, batch.clean) for head in heads]).mean()


def make_target_batch(
    target: TrainingTarget,
    clean: torch.Tensor,
    image_keys: torch.Tensor,
    noise_op: Any,
    noise: NoiseSpec,
    *,
    epoch: int,
) -> TargetBatch:
    """Obfuscate a clean batch into the target's copies (`noise` says the seeds and mode); clean pixels
    dropped unless needed."""
    noisy = [
        noise_op(clean, image_keys, seed=noise.copy_seed(copy), epoch=epoch, mode=noise.mode)
        for copy in range(target.copies)
    ]
    if not target.needs_clean:
        return TargetBatch(noisy=noisy, clean=None, image_keys=image_keys)
    return TargetBatch(noisy=noisy, clean=clean, image_keys=image_keys)
