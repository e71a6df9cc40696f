"""AlexNet's convolutional trunk, laid out exactly like torchvision's `alexnet().features`.

The layer indices inside `features` match torchvision's, so the `features.*` entries of torchvision's ImageNet
checkpoint (`alexnet-owt-7be5be79.pth`) load by name; the classifier entries of that file are ignored. We keep
our own copy because torchvision is not a dependency of meddenoise.
"""

from __future__ import annotations

import torch
from torch import nn

# Indices in `features` after which LPIPS taps the activations (relu1 .. relu5), and their channel counts.
RELU_TAP_INDICES = (1, 4, 7, 9, 11)
TAP_CHANNELS = (64, 192, 384, 256, 256)


class AlexNetFeatures(nn.Module):
    """(B, 3, H, W) -> five activations: relu1 (B, 64, H/4, W/4) ... relu5 (B, 256, H/16, W/16), roughly."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),  # 0
            nn.ReLU(),  # 1: relu1
            nn.MaxPool2d(kernel_size=3, stride=2),  # 2
            nn.Conv2d(64, 192, kernel_size=5, padding=2),  # 3
            nn.ReLU(),  # 4: relu2
            nn.MaxPool2d(kernel_size=3, stride=2),  # 5
            nn.Conv2d(192, 384, kernel_size=3, padding=1),  # 6
            nn.ReLU(),  # 7: relu3
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # 8
            nn.ReLU(),  # 9: relu4
            nn.Conv2d(256, 256, kernel_size=3, padding=1),  # 10
            nn.ReLU(),  # 11: relu5
            # torchvision's index 12 (a final max-pool) is never used by LPIPS and holds no weights.
        )

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        activations = images
        for index, layer in enumerate(self.features):
            activations = layer(activations)
            if index in RELU_TAP_INDICES:
                taps.append(activations)
        return taps

    def load_torchvision_state(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load the `features.*` tensors of a torchvision AlexNet state dict; raise ValueError if any is
        wrong."""
        own = self.state_dict()
        missing = [key for key in own if key not in state]
        if missing:
            raise ValueError(
                f"{source} is not a torchvision AlexNet checkpoint: missing {', '.join(missing)}"
            )
        wrong = [key for key in own if tuple(state[key].shape) != tuple(own[key].shape)]
        if wrong:
            shapes = ", ".join(f"{key} {tuple(state[key].shape)}" for key in wrong)
            raise ValueError(f"{source} has AlexNet tensors of unexpected shape: {shapes}")
        self.load_state_dict({key: state[key] for key in own})
