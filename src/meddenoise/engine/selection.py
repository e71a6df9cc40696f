"""Choosing the checkpoint without clean images: the loss a receiving site can compute from released data.

Supervised training selects by the clean validation loss. A clean-free run should not: the receiving site
has no clean images. `released_validation_loss` scores a model on the held-out patients' *released* copies
only, with the training target's own self-supervised loss (noise2noise: one released copy predicts the other;
neighbor2neighbor: one sub-image predicts its neighbour; r2r: the re-corrupted pair), with the target's
random swaps / masks / re-corruptions drawn from a stream fixed across epochs so epochs compare fairly.
For these losses the expected value is the clean loss plus a term that does not depend on the model (the
noise is independent of the input), so its minimum marks the same model, up to sampling noise.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from meddenoise.data.loader import DeviceBatches
from meddenoise.engine import distributed
from meddenoise.engine.runtime import Runtime
from meddenoise.engine.targets import TrainingTarget, make_target_batch
from meddenoise.noise.spec import NoiseSpec

RULES = ("auto", "clean", "released")


def resolve_rule(rule: str, target: TrainingTarget) -> str:
    """`auto`: released data for clean-free targets, the clean validation loss for supervised training."""
    if rule == "auto":
        return "clean" if target.needs_clean else "released"
    return rule


@torch.no_grad()
def released_validation_loss(
    model: nn.Module,
    batches: DeviceBatches,
    target: TrainingTarget,
    noise_op: Any,
    noise: NoiseSpec,
    loss_fn: Any,
    runtime: Runtime,
) -> float:
    """Mean of the target's loss over this rank's shard of held-out released copies, summed over ranks.

    The copies are the released ones (`fixed` mode, the run's noise seed and copy rule); clean pixels are
    dropped before the target sees the batch (`needs_clean` is false for every clean-free target)."""
    model.eval()
    released = NoiseSpec.from_dict({**noise.to_dict(), "mode": "fixed"})
    total = torch.zeros((), dtype=torch.float64, device=batches.device)
    count = torch.zeros((), dtype=torch.float64, device=batches.device)
    with target.held_out_draws():
        for batch in batches.shard():
            target_batch = make_target_batch(
                target, batch.clean, batch.image_keys, noise_op, released, epoch=0
            )
            with runtime.autocast():
                loss = target.loss(model, target_batch, loss_fn)
            size = batch.clean.shape[0]
            total += loss.double() * size
            count += size
    totals = distributed.all_reduce_sum(torch.stack([total, count])).tolist()
    return totals[0] / totals[1] if totals[1] else float("nan")
