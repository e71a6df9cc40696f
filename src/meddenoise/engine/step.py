"""One optimizer step, identical for single device, DataParallel and DDP (they differ only in the wrapper).

No host synchronisation happens here: the loss stays on the device (the loop sums it and reads it once per
epoch), and a non-finite loss is recorded on the device together with the step where it first happened.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from meddenoise.engine.ema import WeightAverage
from meddenoise.engine.private import PrivateTraining
from meddenoise.engine.runtime import Runtime, unwrap
from meddenoise.engine.targets import TargetBatch, TrainingTarget

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
        private: PrivateTraining | None = None,
    ) -> None:
        self.model = model  # the wrapped module the loop trains
        self.optimizer = optimizer
        self.runtime = runtime
        self.target = target
        self.loss_fn = loss_fn
        self.grad_clip = grad_clip
        self.ema = ema
        self.private = private  # DP-SGD: per-unit gradients and a noisy step (engine/private.py)

    def __call__(self, batch: TargetBatch, share: float, lr: float) -> torch.Tensor:
        """Train on `batch`; `share` = this rank's images / mean images per rank in the global batch.

        DDP averages gradients over ranks; weighting each rank's mean loss by its share makes that average
        equal the gradient of the mean loss over the global batch even when the last batch splits unevenly.
        Returns the unweighted loss (a 0-d tensor on the device, detached).
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        if self.private is not None:
            return self._private_step(batch)
        with self.runtime.autocast():
            loss = self.target.loss(self.model, batch, self.loss_fn)
        scaler = self.runtime.scaler
        scaler.scale(loss * share if share != 1.0 else loss).backward()
        if self.grad_clip > 0:
            scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        scaler.step(self.optimizer)
        scaler.update()
        if self.ema is not None:
            self.ema.update(unwrap(self.model))
        return loss.detach().float()

    def _private_step(self, batch: TargetBatch) -> torch.Tensor:
        """DP-SGD: per-image gradients of the mean loss (Opacus rescales them), summed per unit, clipped and
        noised by the DP optimizer; no share weighting (the optimizer divides by the expected batch)."""
        if batch.noisy[0].shape[0] == 0:
            self.private.empty_batch(self.model)
            loss = torch.zeros((), device=batch.noisy[0].device)
        else:
            with self.runtime.autocast():
                loss = self.target.loss(self.model, batch, self.loss_fn)
            loss.backward()
            self.private.before_step(self.model)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(unwrap(self.model))
        return loss.detach().float()


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    device: torch.device,
    *,
    fused: bool = True,
):
    """Adam (the paper) or AdamW; the fused CUDA kernel on GPUs (one launch for all parameters) unless
    `fused` is False: DP-SGD's optimizer writes contiguous gradients for channels_last parameters, which the
    fused kernel refuses ("same dtype, device, and layout"); the foreach kernel accepts them."""
    options = {"lr": lr, "weight_decay": weight_decay}
    if device.type == "cuda" and fused:
        options["fused"] = True
    optimizer_class = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return optimizer_class(model.parameters(), **options)
