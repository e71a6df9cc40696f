"""Parameter counts and forward FLOPs of a registered model, without allocating it.

The model is built on the meta device (shapes only, no memory, no arithmetic), so a 36 M-parameter U-Net++ at
256x256 is summarised in well under a second on any machine. FLOPs come from
`torch.utils.flop_counter.FlopCounterMode`, which counts 2 FLOPs per multiply-accumulate of convolutions and
matrix products and ignores biases, norms, activations, pooling and interpolation (a few percent at most
here).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from meddenoise.models.layers import count_parameters
from meddenoise.models.registry import build_model, get_model_entry

FLOP_CONVENTION = (
    "FLOPs = 2 x multiply-accumulates of conv/matmul (FlopCounterMode); bias, norm, ReLU, pool not counted"
)


def count_flops(model: nn.Module, image: torch.Tensor) -> int:
    """Forward FLOPs of `model(image)` (2 per multiply-accumulate), on any device including meta."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(image)
    return int(counter.get_total_flops())


def count_active_parameters(model: nn.Module, image: torch.Tensor) -> int:
    """Parameters of the modules a forward calls (a pruned U-Net++ head skips part of the network)."""
    called: set[int] = set()
    handles = [
        module.register_forward_hook(lambda mod, _inputs, _output: called.add(id(mod)))
        for module in model.modules()
        if any(True for _ in module.parameters(recurse=False))
    ]
    try:
        with torch.no_grad():
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    return sum(
        parameter.numel()
        for module in model.modules()
        if id(module) in called
        for parameter in module.parameters(recurse=False)
    )


def model_summary(name: str, size: int = 256, base_channels: int = 64, **options: Any) -> dict[str, Any]:
    """Parameters and forward FLOPs for one `size` x `size` image of model `name` in eval mode.

    Returns {"model", "options" (all options, defaults filled in), "image_size", "parameters",
    "active_parameters", "flops", "gflops", "flop_convention"}.
    """
    entry = get_model_entry(name)
    with torch.device("meta"):
        model = build_model(name, base_channels=base_channels, **options).eval()
    image = torch.zeros(1, 1, size, size, device="meta")
    flops = count_flops(model, image)
    return {
        "model": name,
        "options": {**entry.defaults, "base_channels": base_channels, **options},
        "image_size": size,
        "parameters": count_parameters(model),
        "active_parameters": count_active_parameters(model, image),
        "flops": flops,
        "gflops": flops / 1e9,
        "flop_convention": FLOP_CONVENTION,
    }
