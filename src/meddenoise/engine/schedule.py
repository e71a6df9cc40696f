"""Learning rate as a pure function of the optimizer step, so a resumed run needs no scheduler state.

- `none`: constant (after an optional linear warm-up).
- `cosine`: linear warm-up from 0, then half a cosine down to 0 at the last step.
- `onecycle`: like torch's OneCycleLR with cosine annealing: from lr/25 up to lr over the warm-up (30% of
  the steps unless --warmup-steps is given), then down to lr/1e4.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from meddenoise.registry import Registry

# (step, base_lr, total_steps >= 1, warmup_steps) -> learning rate
Schedule = Callable[[int, float, int, int], float]
SCHEDULES: Registry[Schedule] = Registry("learning-rate schedule", parameter="lr_schedule")
ONECYCLE_START_DIVISOR = 25.0
ONECYCLE_END_DIVISOR = 1e4
ONECYCLE_DEFAULT_WARMUP = 0.3


def _cosine(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(max(fraction, 0.0), 1.0)))


def _warmup(step: int, base_lr: float, warmup_steps: int) -> float | None:
    return base_lr * (step + 1) / warmup_steps if step < warmup_steps else None


@SCHEDULES.register("none")
def constant(step: int, base_lr: float, total_steps: int, warmup_steps: int) -> float:
    warming = _warmup(step, base_lr, warmup_steps)
    return base_lr if warming is None else warming


@SCHEDULES.register("cosine")
def cosine(step: int, base_lr: float, total_steps: int, warmup_steps: int) -> float:
    warming = _warmup(step, base_lr, warmup_steps)
    if warming is not None:
        return warming
    return _cosine(base_lr, 0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))


@SCHEDULES.register("onecycle")
def onecycle(step: int, base_lr: float, total_steps: int, warmup_steps: int) -> float:
    warmup = warmup_steps or max(1, int(ONECYCLE_DEFAULT_WARMUP * total_steps))
    low, high = base_lr / ONECYCLE_START_DIVISOR, base_lr
    if step < warmup:
        return _cosine(low, high, step / warmup)
    return _cosine(high, base_lr / ONECYCLE_END_DIVISOR, (step - warmup) / max(1, total_steps - warmup))


def learning_rate(step: int, *, base_lr: float, kind: str, total_steps: int, warmup_steps: int = 0) -> float:
    """The learning rate for optimizer step `step` (0-based) of `total_steps`."""
    return SCHEDULES.get(kind)(step, base_lr, max(1, total_steps), warmup_steps)
