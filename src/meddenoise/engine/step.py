"""One optimizer step, identical for single device, DataParallel and DDP (they differ only in the wrapper).

No host synchronisation happens here: the loss stays on the device (the loop sums it and reads it once per
epoch), and a non-finite loss is recorded on the device together with the step where it first happened.
DP-SGD's step (`PrivateStep`, with the DP-SGD setup) replaces `update` only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from meddenoise.engine.ema import WeightAverage
from meddenoise.engine.runtime import Runtime, unwrap
from meddenoise.engine.targets import TargetBatch, TrainingTarget
from meddenoise.registry import Registry

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TrainStep:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        runtime: Runtime,
        target: TrainingTarget,
        loss_fn: LossFn,
        *,
        grad_clip: float = 0.0,
        ema: WeightAverage | None = None,
    ) -> None:
        self.model = model  # the wrapped module the loop trains
        self.optimizer = optimizer
        self.runtime = runtime
        self.target = target
        self.loss_fn = loss_fn
        self.grad_clip = grad_clip
        self.ema = ema

    def __call__(self, batch: TargetBatch, share: float, lr: float) -> torch.Tensor:
        """Train on `batch`; `share` = this rank's images / mean images per rank in the global batch.

        Returns the unweighted loss (a 0-d tensor on the device, detached)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.update(batch, share)
        if self.ema is not None:
            self.ema.update(unwrap(self.model))
        return loss.detach().float()

    def update(self, batch: TargetBatch, share: float) -> torch.Tensor:
        """Forward, backward and the optimizer's step; returns the loss.

        DDP averages gradients over ranks; weighting each rank's mean loss by its share makes that average
        equal the gradient of the mean loss over the global batch even when the last batch splits unevenly.
        """
        with self.runtime.autocast():
            loss = self.target.loss(self.model, batch, self.loss_fn)
        scaler = self.runtime.scaler
        scaler.scale(loss * share if share != 1.0 else loss).backward()
        if self.grad_clip > 0:
            scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        scaler.step(self.optimizer)
        scaler.update()
        return loss


# The optimizers `optimizer` names; TrainConfig's choices are kept equal to it (tests/unit/test_registry.py).
OPTIMIZERS: Registry[type[torch.optim.Optimizer]] = Registry("optimizer", parameter="optimizer")
OPTIMIZERS.add("adam", torch.optim.Adam)
OPTIMIZERS.add("adamw", torch.optim.AdamW)


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    device: torch.device,
    *,
    fused: bool = True,
) -> torch.optim.Optimizer:
    """Adam (the paper) or AdamW; the fused CUDA kernel on GPUs (one launch for all parameters) unless
    `fused` is False: DP-SGD's optimizer writes contiguous gradients for channels_last parameters, which the
    fused kernel refuses ("same dtype, device, and layout"); the foreach kernel accepts them."""
    options = {"lr": lr, "weight_decay": weight_decay}
    if device.type == "cuda" and fused:
        options["fused"] = True
    return OPTIMIZERS.get(name)(model.parameters(), **options)
