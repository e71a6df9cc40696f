"""`Progress`: where a run is and what its unfinished epoch has accumulated.

All of it goes into the checkpoint, so a resumed run continues mid-epoch with the same sums (under DDP,
every rank's sums: see `to_state`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from meddenoise.engine import distributed


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

    def first_non_finite_step(self) -> int | None:
        """The first global step whose loss was NaN or infinite on any rank, or None: a host read, and a
        collective under DDP (every rank calls it)."""
        first = int(distributed.all_reduce_max(self.bad_steps.clone()).item())
        return first - 1 if first else None

    def record_validation(self, val_loss: float, finished: bool) -> bool:
        """Update best / early-stopping counters; True when `val_loss` is the lowest so far."""
        improved = val_loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_epoch = val_loss, self.epoch
            self.epochs_without_improvement = 0
        elif finished:
            self.epochs_without_improvement += 1
        return improved

    def to_state(self, rank: int = 0, world_size: int = 1) -> dict[str, Any]:
        """The checkpointed position and sums; under DDP a collective (every rank calls it, rank 0 saves it).

        Each rank's loss sum is kept separately, so a resumed rank goes on adding to its own sum and the
        epoch's all-reduced total is bitwise the uninterrupted one. Coverage counts are integers and summed
        over ranks (exact in any order); rank 0 restores the sum, the other ranks start from zero.
        """
        state = dataclasses.asdict(self)
        if self.loss_sum is not None:
            rank_sums = torch.zeros(world_size, dtype=torch.float64, device=self.loss_sum.device)
            rank_sums[rank] = self.loss_sum  # adding exact zeros: the all-reduce copies each rank's sum
            state["rank_loss_sums"] = distributed.all_reduce_sum(rank_sums)
            state["seen"] = distributed.all_reduce_sum(self.seen.clone())
            state["bad_steps"] = distributed.all_reduce_max(self.bad_steps.clone())
        return {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}

    @classmethod
    def from_state(
        cls, state: dict[str, Any], device: torch.device, rank: int = 0, world_size: int = 1
    ) -> Progress:
        state = dict(state)
        rank_sums = state.pop("rank_loss_sums", None)
        if rank_sums is not None and len(rank_sums) == world_size:
            state["loss_sum"] = rank_sums[rank].clone()
            if rank != 0 and state.get("seen") is not None:
                state["seen"] = torch.zeros_like(state["seen"])  # rank 0 carries the summed coverage
        values = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
        return cls(**values)
