"""Learning rate as a pure function of the optimizer step, so a resumed run needs no scheduler state.

- `none`: constant (after an optional linear warm-up).
- `cosine`: linear warm-up from 0, then half a cosine down to 0 at the last step.
- `onecycle`: like torch's OneCycleLR with cosine annealing: from lr/25 up to lr over the warm-up (30% of
  the steps unless --warmup-steps is given), then down to lr/1e4.
"""

from __future__ import annotations

import math

SCHEDULES = ("none", "cosine", "onecycle")
ONECYCLE_START_DIVISOR = 25.0
ONECYCLE_END_DIVISOR = 1e4
ONECYCLE_DEFAULT_WARMUP = 0.3


def _cosine(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(max(fraction, 0.0), 1.0)))


def learning_rate(step: int, *, base_lr: float, kind: str, total_steps: int, warmup_steps: int = 0) -> float:
    """The learning rate for optimizer step `step` (0-based) of `total_steps`."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; use one of {', '.join(SCHEDULES)}")
    total_steps = max(1, total_steps)
    if kind == "onecycle":
        warmup = warmup_steps or max(1, int(ONECYCLE_DEFAULT_WARMUP * total_steps))
        low, high = base_lr / ONECYCLE_START_DIVISOR, base_lr
        if step < warmup:
            return _cosine(low, high, step / warmup)
        return _cosine(high, base_lr / ONECYCLE_END_DIVISOR, (step - warmup) / max(1, total_steps - warmup))
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if kind == "cosine":
        return _cosine(base_lr, 0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base_lr
