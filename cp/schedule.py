"""The learning-rate schedule, as fractions of the run.

Warmup and decay are fractions of the total steps, so they stretch with the horizon when HPs
transfer to a longer run (the duration rule keeps the schedule's shape) [I; as Marin does].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .schema import Problems


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: linear warmup, then an optional stable phase, then decay."""

    warmup: float = 0.05
    """Fraction of the steps spent warming up linearly from 0 to the peak."""
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    """Shape of the decay to ``final_lr``."""
    decay_fraction: float = 1.0
    """Fraction of the post-warmup steps spent decaying (1 = decay straight after warmup;
    0.2 = warmup-stable-decay with the last 20% decaying)."""
    final_lr: float = 0.1
    """Learning rate at the last step, as a fraction of the peak."""

    def check(self, at: str, problems: Problems) -> None:
        problems.range(f"{at}.warmup", self.warmup, 0 <= self.warmup < 1, "0 <= warmup < 1")
        problems.range(f"{at}.decay_fraction", self.decay_fraction,
                       0 <= self.decay_fraction <= 1, "0 <= decay_fraction <= 1")
        problems.range(f"{at}.final_lr", self.final_lr, 0 <= self.final_lr <= 1,
                       "0 <= final_lr <= 1")


def lr_factor(step: int, total_steps: int, sched: ScheduleConfig) -> float:
    """Multiplier of every group's peak lr for the update made at ``step`` (0-based)."""
    warmup_steps = round(sched.warmup * total_steps)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if sched.decay == "constant":
        return 1.0
    decay_steps = round(sched.decay_fraction * (total_steps - warmup_steps))
    start = total_steps - decay_steps
    if step < start or decay_steps <= 1:
        return 1.0
    progress = min((step - start) / (decay_steps - 1), 1.0)
    if sched.decay == "cosine":
        shape = 0.5 * (1 + math.cos(math.pi * progress))
    else:
        shape = 1 - progress
    return sched.final_lr + (1 - sched.final_lr) * shape
