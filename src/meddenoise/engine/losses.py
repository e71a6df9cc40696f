"""Pixel losses. The paper trains with L1 ("preserved image texture better than L2"); L2 is the other."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from meddenoise.errors import ConfigError

LOSSES = ("l1", "l2")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def l1_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Losses in fp32 even under autocast: a bf16 mean over 10^5 pixels loses the small differences.
    return F.l1_loss(prediction.float(), target.float())


def l2_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(prediction.float(), target.float())


def build_loss(name: str) -> LossFn:
    if name == "l1":
        return l1_loss
    if name == "l2":
        return l2_loss
    raise ConfigError(f"--loss must be one of {', '.join(LOSSES)}; got {name!r}")


def per_image_loss(name: str, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) x 2 -> (B,): the loss of each image, so sharded validation can be summed exactly."""
    difference = prediction.float() - target.float()
    values = difference.abs() if name == "l1" else difference.square()
    return values.flatten(1).mean(dim=1)
