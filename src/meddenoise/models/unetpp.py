"""U-Net++ (Zhou et al., 2018) as the paper uses it: nested dense skip pathways, bilinear upsampling and one
1x1 output head on each of X^{0,1} .. X^{0,depth-1}.

Node X^{i,j} (level i, column j) is a double 3x3 conv block. Column 0 is the encoder (X^{i,0} =
block(pool(X^{i-1,0}))); for j >= 1, X^{i,j} = block(concat(X^{i,0}, ..., X^{i,j-1}, up(X^{i+1,j-1}))). Head
k reads X^{0,k}. 36,628,676 parameters at base 64, depth 5 (all four heads built).

Training: with `deep_supervision=True`, forward in train mode returns the list of head outputs [head 1, ...,
head `head`], each (B, 1, H, W); the engine averages the loss over that list (`mean_loss_over_heads`). With
the default (False, as the paper's code) only head `head` is returned and trained; the other heads exist, so
a checkpoint has the same keys either way, but they get no gradient (`trains_all_parameters` is False: DDP
then needs `find_unused_parameters=True`).

Inference from head k < depth-1 computes only the nodes with i + j <= k: a pruned, cheaper network
(Zhou et al.'s "model pruning"); its output equals head k of the full network exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from meddenoise.models.layers import Denoiser, DoubleConv, pad_to_multiple
from meddenoise.models.registry import register_model


def node_name(level: int, column: int) -> str:
    return f"x{level}_{column}"


@register_model("unetpp", variants=tuple((f"head={k}", {"head": k}) for k in (1, 2, 3)))
class UNetPlusPlus(Denoiser):
    """U-Net++ (paper): nested dense skips, bilinear up, heads on X^{0,1..4}; head=k runs a pruned network."""

    def __init__(
        self,
        base_channels: int = 64,
        depth: int = 5,
        norm: str = "batch",
        residual: bool = False,
        clamp_output: bool = False,
        deep_supervision: bool = False,
        head: int | None = None,
    ) -> None:
        if depth < 2:
            raise ValueError(f"U-Net++ depth must be at least 2 levels; got {depth}")
        head = depth - 1 if head is None else int(head)
        if not 1 <= head <= depth - 1:
            raise ValueError(f"U-Net++ head must be between 1 and {depth - 1} (depth - 1); got {head}")
        super().__init__(size_multiple=2 ** (depth - 1), residual=residual, clamp_output=clamp_output)
        self.depth = depth
        self.head = head
        self.deep_supervision = bool(deep_supervision)
        channels = [base_channels * 2**level for level in range(depth)]
        self.nodes = nn.ModuleDict()
        for level in range(depth):
            in_channels = 1 if level == 0 else channels[level - 1]
            self.nodes[node_name(level, 0)] = DoubleConv(in_channels, channels[level], norm)
        for column in range(1, depth):
            for level in range(depth - column):
                in_channels = column * channels[level] + channels[level + 1]
                self.nodes[node_name(level, column)] = DoubleConv(in_channels, channels[level], norm)
        self.heads = nn.ModuleList(nn.Conv2d(channels[0], 1, kernel_size=1) for _ in range(depth - 1))
        self.pool = nn.MaxPool2d(2)

    @property
    def trains_all_parameters(self) -> bool:
        """Whether a training forward touches every parameter (DDP needs to know)."""
        return self.deep_supervision and self.head == self.depth - 1

    def top_row(self, padded: torch.Tensor, upto: int) -> list[torch.Tensor]:
        """[X^{0,1}, ..., X^{0,upto}], computing only the nodes with level + column <= upto."""
        grid: dict[tuple[int, int], torch.Tensor] = {}
        for column in range(upto + 1):
            for level in range(upto + 1 - column):
                block = self.nodes[node_name(level, column)]
                if column == 0:
                    # (B, C_{i-1}, H, W) -> (B, C_{i-1}, H/2, W/2) -> (B, C_i, H/2, W/2)
                    source = padded if level == 0 else self.pool(grid[(level - 1, 0)])
                    grid[(level, 0)] = block(source)
                    continue
                # align_corners=False keeps the network translation-equivariant (tiles agree with whole
                # images); the paper's code used True, which ties the sampling grid to the input size.
                below = F.interpolate(
                    grid[(level + 1, column - 1)], scale_factor=2.0, mode="bilinear", align_corners=False
                )
                same_level = [grid[(level, k)] for k in range(column)]
                grid[(level, column)] = block(torch.cat([*same_level, below], dim=1))
        return [grid[(0, column)] for column in range(1, upto + 1)]

    def forward_heads(self, noisy: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of heads 1 .. `head`, each (B, 1, H, W), all post-processed like `forward`."""
        padded = pad_to_multiple(noisy, self.size_multiple)
        features = self.top_row(padded, self.head)
        return [self.finish(noisy, self.heads[k](features[k])) for k in range(self.head)]

    def predict(self, padded: torch.Tensor) -> torch.Tensor:
        features = self.top_row(padded, self.head)
        return self.heads[self.head - 1](features[-1])

    def forward(self, noisy: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:  # type: ignore[override]
        if self.training and self.deep_supervision:
            return self.forward_heads(noisy)
        return super().forward(noisy)


def mean_loss_over_heads(
    output: torch.Tensor | Sequence[torch.Tensor],
    target: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """The training loss for any model output: a tensor as is, a list of heads (deep supervision) averaged."""
    if isinstance(output, torch.Tensor):
        return loss_fn(output, target)
    losses = [loss_fn(head_output, target) for head_output in output]
    return torch.stack(losses).mean()
