"""AdamW param groups from resolved settings, driven by the schedule of `cp.schedule`.

Each (group, layer) gets the lr, eps, betas and weight decay that `cp.scaling.resolve` gave
it. Parameters whose settings coincide share one torch param group, so a model with dozens of
(group, layer) pairs costs the optimiser no more than it must.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from .scaling import GroupSettings
from .schedule import ScheduleConfig, lr_factor

if TYPE_CHECKING:
    from .model import GPT


def param_groups(model: GPT, settings: Iterable[GroupSettings]) -> list[dict]:
    """torch param groups: parameters with equal (lr, eps, betas, weight decay) share one.

    Each group also records its members as ``cp_members`` [(group, layer, name), ...].
    """
    by_key = {(s.group, s.layer): s for s in settings}
    merged: dict[tuple, dict] = {}
    for group, layer, name, p in model.tagged_parameters():
        s = by_key[group, layer]
        key = (s.lr, s.eps, s.beta1, s.beta2, s.weight_decay)
        g = merged.setdefault(key, {"params": [], "lr": s.lr, "eps": s.eps,
                                    "betas": (s.beta1, s.beta2), "weight_decay": s.weight_decay,
                                    "cp_members": []})
        g["params"].append(p)
        g["cp_members"].append((group, layer, name))
    return list(merged.values())


def build_optimizer(model: GPT, settings: Iterable[GroupSettings],
                    schedule: ScheduleConfig, total_steps: int
                    ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the model's per-group settings and its LambdaLR schedule."""
    groups = param_groups(model, settings)
    device = next(model.parameters()).device
    # The fused kernel is one launch per step on GPU; on CPU foreach is as fast and portable.
    opt = torch.optim.AdamW(groups, fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, total_steps, schedule)
    )
    return opt, sched
