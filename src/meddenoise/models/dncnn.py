"""DnCNN (Zhang et al., 2017): a plain stack of 3x3 convolutions that predicts the noise (residual learning).

Layer 1 is conv + ReLU, layers 2 .. L-1 are conv + norm + ReLU (no conv bias: the norm's shift replaces it),
layer L is a conv back to one channel. Fully convolutional with no down-sampling, so any H and W work without
padding. 17 layers at 64 channels: 556,097 parameters.

The final conv keeps its bias: the obfuscation noise here has mean 0.1, so the predicted noise needs that
offset.
"""

from __future__ import annotations

import torch
from torch import nn

from meddenoise.models.layers import Denoiser, make_norm
from meddenoise.models.registry import register_model

MAX_LAYERS = 1000  # 20 in the DnCNN paper; 1000 layers at 64 channels are 37M weights


@register_model("dncnn")
class DnCNN(Denoiser):
    """DnCNN: 3x3 conv + norm + ReLU stack predicting the noise (the learned baseline of Table VI)."""

    def __init__(
        self,
        base_channels: int = 64,
        num_layers: int = 17,
        norm: str = "batch",
        residual: bool = True,
        clamp_output: bool = False,
    ) -> None:
        if not 3 <= num_layers <= MAX_LAYERS:
            # Checked before building: 100000 layers took minutes to construct before failing elsewhere.
            raise ValueError(
                f"DnCNN needs at least 3 layers and at most {MAX_LAYERS} (num_layers); got {num_layers}"
            )
        super().__init__(size_multiple=1, residual=residual, clamp_output=clamp_output)
        layers: list[nn.Module] = [nn.Conv2d(1, base_channels, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(num_layers - 2):
            layers += [
                nn.Conv2d(base_channels, base_channels, 3, padding=1, bias=False),
                make_norm(norm, base_channels),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(base_channels, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def predict(self, padded: torch.Tensor) -> torch.Tensor:
        return self.body(padded)  # (B, 1, H, W) -> (B, C, H, W) -> ... -> (B, 1, H, W)
