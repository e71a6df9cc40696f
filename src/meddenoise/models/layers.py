"""Building blocks shared by the denoisers: norm choice, the double 3x3 conv block, padding and the base
class.

`Denoiser` owns everything that is the same for every model: any input size (reflect-pad to a multiple of the
model's down-sampling factor, crop back), residual output (predict the noise, subtract it) and clamping to
[0, 1] in eval mode only (clamping in training would zero the gradient wherever the prediction leaves [0,
1]). All branching here is on shapes and Python flags, never on tensor values, so
`torch.compile(fullgraph=True)` traces it without graph breaks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "group")

# GroupNorm with 32 groups is the usual default (Wu & He, 2018); fewer when the channel count does not allow
# it.
MAX_GROUPS = 32


def make_norm(kind: str, channels: int) -> nn.Module:
    """BatchNorm (the paper) or GroupNorm (per-sample statistics, needed under differential privacy)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(MAX_GROUPS, channels), channels)
    raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {kind!r}")


class DoubleConv(nn.Sequential):
    """Two (3x3 conv -> norm -> ReLU): the VGG-style block of U-Net and U-Net++. (B, C_in, H, W) -> (B,
    C_out, H, W).

    The convolutions keep their bias as in the paper's code, although the norm that follows makes it
    redundant: this keeps parameter counts comparable with the published figures.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch") -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            make_norm(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            make_norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the bottom and right of (B, C, H, W) so H and W are multiples of `multiple`.

    Reflect padding continues the anatomy instead of adding a dark frame; it needs the pad to be smaller than
    the side, so tiny inputs fall back to replicate padding. Padding only at the bottom/right keeps the
    original pixels at the same coordinates, so cropping back is a plain slice.
    """
    height, width = image.shape[-2], image.shape[-1]
    pad_bottom = (-height) % multiple
    pad_right = (-width) % multiple
    if pad_bottom == 0 and pad_right == 0:
        return image
    mode = "reflect" if pad_bottom < height and pad_right < width else "replicate"
    return F.pad(image, (0, pad_right, 0, pad_bottom), mode=mode)


def crop_to(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Undo `pad_to_multiple`: keep the top-left `height` x `width` pixels."""
    return image[..., :height, :width]


class Denoiser(nn.Module):
    """Base class: (B, 1, H, W) in [0, 1] -> (B, 1, H, W), any H and W.

    Subclasses implement `predict(padded)`, which sees inputs whose sides are multiples of `size_multiple` and
    returns the raw network output (an image, or the noise when `residual` is set).
    """

    # Whether a training forward touches every parameter; DDP needs find_unused_parameters=True when not.
    trains_all_parameters: bool = True

    def __init__(self, *, size_multiple: int, residual: bool, clamp_output: bool) -> None:
        super().__init__()
        self.size_multiple = int(size_multiple)
        self.residual = bool(residual)
        self.clamp_output = bool(clamp_output)

    def predict(self, padded: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def finish(self, noisy: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """Crop the raw output back to the input size, subtract predicted noise, clamp at inference."""
        raw = crop_to(raw, noisy.shape[-2], noisy.shape[-1])
        output = noisy - raw if self.residual else raw
        if self.clamp_output and not self.training:
            output = output.clamp(0.0, 1.0)
        return output

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        # (B, 1, H, W) -> (B, 1, H', W') with H', W' multiples of size_multiple -> crop -> (B, 1, H, W)
        return self.finish(noisy, self.predict(pad_to_multiple(noisy, self.size_multiple)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
