"""`Progress`: where a run is and what its unfinished epoch has accumulated.

All of it goes into the checkpoint, so a resumed run continues mid-epoch with the same sums.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch


@dataclasses.dataclass
class Progress:
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    train_seconds: float = 0.0  # of the unfinished epoch
    loss_sum: torch.Tensor | None = None  # device scalar, sum of step losses in the epoch
    bad_steps: torch.Tensor | None = None  # device scalar: 1 + first global step with a non-finite loss, or 0
    seen: torch.Tensor | None = None  # (n_train,) int32: how often each training image was used this epoch

    def start_epoch(self, train_count: int, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.bad_steps = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = torch.zeros(train_count, dtype=torch.int32, device=device)
        self.train_seconds = 0.0

    def record_step(self, loss: torch.Tensor, positions: torch.Tensor) -> None:
        """Add one step's loss and images, on the device (no host read): a non-finite loss marks the step."""
        self.loss_sum += loss
        bad_here = (~torch.isfinite(loss)) & (self.bad_steps == 0)
        self.bad_steps = torch.where(bad_here, self.global_step + 1, self.bad_steps)
        self.seen.index_add_(0, positions, torch.ones_like(positions, dtype=torch.int32))
        self.global_step += 1
        self.step_in_epoch += 1

    def record_validation(self, val_loss: float, finished: bool) -> bool:
        """Update best / early-stopping counters; True when `val_loss` is the lowest so far."""
        improved = val_loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_epoch = val_loss, self.epoch
            self.epochs_without_improvement = 0
        elif finished:
            self.epochs_without_improvement += 1
        return improved

    def to_state(self) -> dict[str, Any]:
        state = dataclasses.asdict(self)
        return {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> Progress:
        values = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
        return cls(**values)
