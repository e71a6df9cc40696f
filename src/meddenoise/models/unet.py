"""U-Net (Ronneberger et al., 2015) as the paper uses it: `depth` levels of double 3x3 conv blocks, max-pool
down, 2x2 transposed-conv up, concatenated skips and a 1x1 output conv. 31,042,369 parameters at base 64,
depth 5.
"""

from __future__ import annotations

import torch
from torch import nn

from meddenoise.models.layers import Denoiser, DoubleConv
from meddenoise.models.registry import register_model


@register_model("unet")
class UNet(Denoiser):
    """U-Net (paper): double 3x3 conv blocks, max-pool down, 2x2 transposed-conv up, concatenated skips."""

    def __init__(
        self,
        base_channels: int = 64,
        depth: int = 5,
        norm: str = "batch",
        residual: bool = False,
        clamp_output: bool = False,
    ) -> None:
        if depth < 2:
            raise ValueError(f"U-Net depth must be at least 2 levels; got {depth}")
        super().__init__(size_multiple=2 ** (depth - 1), residual=residual, clamp_output=clamp_output)
        channels = [base_channels * 2**level for level in range(depth)]
        self.encoder = nn.ModuleList(
            DoubleConv(1 if level == 0 else channels[level - 1], channels[level], norm)
            for level in range(depth)
        )
        self.pool = nn.MaxPool2d(2)
        # Decoder stages run from the deepest level up: index k joins level depth-2-k.
        decoder_levels = range(depth - 2, -1, -1)
        self.upsample = nn.ModuleList(
            nn.ConvTranspose2d(channels[level + 1], channels[level], kernel_size=2, stride=2)
            for level in decoder_levels
        )
        self.decoder = nn.ModuleList(
            DoubleConv(2 * channels[level], channels[level], norm) for level in decoder_levels
        )
        self.output = nn.Conv2d(channels[0], 1, kernel_size=1)

    def predict(self, padded: torch.Tensor) -> torch.Tensor:
        skips = []
        features = padded
        for level, block in enumerate(self.encoder):
            if level > 0:
                features = self.pool(features)  # (B, C, H, W) -> (B, C, H/2, W/2)
            features = block(features)
            skips.append(features)
        features = skips.pop()  # the bottleneck is not a skip
        for upsample, block in zip(self.upsample, self.decoder):
            # (B, 2C, H/2, W/2) -> (B, C, H, W), then concat the skip -> (B, 2C, H, W) -> (B, C, H, W)
            features = block(torch.cat([skips.pop(), upsample(features)], dim=1))
        return self.output(features)  # (B, base, H, W) -> (B, 1, H, W)
