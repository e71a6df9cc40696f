"""The step loop: every training strategy, DP-SGD and every federated site train through `train_steps`.

A step's loss and its non-finite flag stay on the device (`Progress.record_step`); callers read them where
they choose (the trainer at checkpoints and epoch ends, a federated site once per round).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from meddenoise.data.loader import CleanBatch
from meddenoise.engine.progress import Progress
from meddenoise.engine.step import TrainStep
from meddenoise.engine.targets import TargetBatch


def train_steps(
    step: TrainStep,
    batches: Iterable[tuple[int, CleanBatch]],
    progress: Progress,
    *,
    target_batch: Callable[[CleanBatch, int], TargetBatch],
    learning_rate: Callable[[int], float],
    world_size: int = 1,
    keep_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    after_step: Callable[[], str | None] | None = None,
) -> str | None:
    """One optimizer step per (epoch, clean batch), each recorded in `progress`.

    `target_batch(batch, epoch)` makes the step's input, `learning_rate(global step)` its rate; `keep_loss`
    is what the progress sums (the reference pipeline reads the loss on the host); `after_step` may return
    a reason to stop, which ends the loop and is returned (None when `batches` ran out).
    """
    for epoch, batch in batches:
        share = batch.clean.shape[0] * world_size / batch.global_size
        loss = step(target_batch(batch, epoch), share, learning_rate(progress.global_step))
        progress.record_step(keep_loss(loss) if keep_loss is not None else loss, batch.positions)
        if after_step is not None and (reason := after_step()):
            return reason
    return None
