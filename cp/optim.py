"""AdamW param groups from resolved settings, driven by the schedule of `cp.schedule`.

Each (group, layer) gets the lr, eps, betas and weight decay that `cp.scaling.resolve` gave
it. In training, parameters whose settings coincide share one torch param group, so a model
with dozens of (group, layer) pairs costs the optimiser no more than it must; the library API
(`cp.parameterise`) keeps one torch group per (group, layer), named like ``mlp_down[3]``.

Every group also carries ``resolved_lr``, the lr the table resolved for it (the schedule's
peak). A schedule that multiplies every group's lr by the same factor (``LambdaLR``, cosine
annealing to 0) keeps the table's ratios between groups; `set_lr_factor` is for training loops
that compute an absolute lr themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

import torch

from .scaling import GroupSettings
from .schedule import ScheduleConfig, lr_factor

Tagged = tuple[str, Optional[int], str, torch.nn.Parameter]
"""(group, layer, name, parameter): a parameter and its place in the rule table."""


def group_label(group: str, layer: Optional[int]) -> str:
    """``mlp_down[3]``, or the group alone outside blocks."""
    return group if layer is None else f"{group}[{layer}]"


def param_groups(tagged: Iterable[Tagged], settings: Iterable[GroupSettings],
                 merge: bool = True) -> list[dict]:
    """torch param groups. ``merge``: parameters with equal (lr, eps, betas, weight decay)
    share one group, in the parameters' order; otherwise one group per (group, layer), in the
    order of ``settings``.

    Each group records its members as ``cp_members`` [(group, layer, name), ...], its
    ``name`` (its first member's label, with ``+`` when merged) and ``resolved_lr``.
    """
    ordered = list(settings)
    by_key = {(s.group, s.layer): s for s in ordered}
    rank = {(s.group, s.layer): i for i, s in enumerate(ordered)}
    merged: dict[tuple, dict] = {}
    # Merged groups keep the parameters' order (a checkpoint's optimiser state follows it);
    # per-(group, layer) groups follow the settings: embedding, blocks in order, head.
    items = list(tagged) if merge else sorted(tagged, key=lambda t: rank[t[0], t[1]])
    for group, layer, name, p in items:
        s = by_key[group, layer]
        key: tuple = (s.lr, s.eps, s.beta1, s.beta2, s.weight_decay) if merge else (group, layer)
        g = merged.get(key)
        if g is None:
            g = merged[key] = {"params": [], "lr": s.lr, "eps": s.eps,
                               "betas": (s.beta1, s.beta2), "weight_decay": s.weight_decay,
                               "name": group_label(group, layer), "resolved_lr": s.lr,
                               "cp_members": []}
        elif (group, layer) not in {(m[0], m[1]) for m in g["cp_members"]}:
            g["name"] = g["name"].rstrip("+") + "+"
        g["params"].append(p)
        g["cp_members"].append((group, layer, name))
    return list(merged.values())


def set_lr_factor(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Set every group's lr to its ``resolved_lr`` times ``factor``: for a training loop whose
    schedule gives an absolute lr ``lr(step)`` for a peak ``peak``, call it with
    ``lr(step) / peak``; the ratios of the table between groups stay."""
    for g in optimizer.param_groups:
        if "resolved_lr" not in g:
            raise KeyError("a param group without 'resolved_lr': build the optimizer from "
                           "cp's param groups")
        g["lr"] = g["resolved_lr"] * factor


def build_optimizer(tagged: Iterable[Tagged], settings: Iterable[GroupSettings],
                    schedule: ScheduleConfig, total_steps: int
                    ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the parameters' per-group settings and its LambdaLR schedule."""
    groups = param_groups(tagged, settings)
    device = groups[0]["params"][0].device
    # The fused kernel is one launch per step on GPU. On CPU torch's default is the per-tensor
    # loop, which at our sizes measured faster than foreach (2.8 vs 4.1 ms a step, width 128).
    opt = torch.optim.AdamW(groups, fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, total_steps, schedule)
    )
    return opt, sched
