"""Pixel losses. The paper trains with L1 ("preserved image texture better than L2"); L2 is the other."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F

from meddenoise.registry import Registry

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class PixelLoss:
    batch: LossFn  # the training loss: a mean over every pixel of the batch
    # of (prediction - target), per pixel: per-image means of it sum exactly across validation shards
    per_pixel: Callable[[torch.Tensor], torch.Tensor]


LOSSES: Registry[PixelLoss] = Registry("loss", parameter="loss")


def l1_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Losses in fp32 even under autocast: a bf16 mean over 10^5 pixels loses the small differences.
    return F.l1_loss(prediction.float(), target.float())


def l2_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(prediction.float(), target.float())


LOSSES.add("l1", PixelLoss(l1_loss, torch.abs))
LOSSES.add("l2", PixelLoss(l2_loss, torch.square))


def build_loss(name: str) -> LossFn:
    return LOSSES.get(name).batch


def per_image_loss(name: str, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) x 2 -> (B,): the loss of each image, so sharded validation can be summed exactly."""
    values = LOSSES.get(name).per_pixel(prediction.float() - target.float())
    return values.flatten(1).mean(dim=1)
