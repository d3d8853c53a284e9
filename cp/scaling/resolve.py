"""From a rule table, a base scale and base HPs to the settings of every (group, layer).

    value(group, layer, kind) = base_hps[group, kind]
                                * per_type[kind][group] * per_layer[kind][layer]   (tuned factors)
                                * table.rule(group, kind).factor(m_N, m_L, m_B, m_D)  (transfer)

For beta1/beta2 the product acts on (1 - beta). This is the only place where HPs are scaled.

The spec sections defined here (`Scale` for ``models``, `HPs`, `Factors`) check themselves;
their ``check`` methods report through a callable ``flag(key, message, allowed)``, since this
package imports nothing outside itself.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from .rules import (
    BLOCK_GROUPS,
    GAIN_GROUPS,
    GROUP_SETS,
    GROUPS,
    HP_KINDS,
    RuleTable,
    expand_groups,
    hp_value_allowed,
)

Flag = Callable[..., None]
"""Reports one spec problem: ``flag(key, message, allowed="")``."""


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class Scale:
    """Where a model sits on the four transfer axes (plus its sequence length)."""

    width: int
    """Model width d_model (a multiple of arch.head_dim)."""
    depth: int
    """Number of transformer blocks."""
    batch: int
    """The batch: sequences per optimiser step (global, over all data-parallel ranks)."""
    tokens: int
    """Training tokens (the horizon); steps = tokens / (batch * seq_len)."""
    seq_len: int = 128
    """Tokens per sequence."""

    @property
    def tokens_per_step(self) -> int:
        """The batch in tokens."""
        return self.batch * self.seq_len

    @property
    def steps(self) -> int:
        """Optimiser steps in the run: the horizon over tokens per step, rounded down."""
        return self.tokens // self.tokens_per_step

    def check(self, at: str, flag: Flag) -> None:
        for k in ("width", "depth", "batch", "tokens", "seq_len"):
            v = getattr(self, k)
            if not _positive_int(v):
                flag(f"{at}.{k}", f"{v!r} is out of range", "a positive integer")
        if _positive_int(self.tokens) and _positive_int(self.batch) and \
                _positive_int(self.seq_len) and self.steps < 1:
            flag(f"{at}.tokens", f"{self.tokens} tokens make no optimiser step of "
                 f"{self.batch} x {self.seq_len} tokens", f">= batch * seq_len = "
                 f"{self.tokens_per_step}")


def scale_ratios(base: Scale, scale: Scale) -> dict[str, float]:
    """m_N, m_L, m_B and m_D of ``scale`` relative to ``base``, keyed by axis: the width,
    depth, batch (compared in tokens: batch x seq_len) and training-token ratios."""
    return {
        "width": scale.width / base.width,
        "depth": scale.depth / base.depth,
        "batch": scale.tokens_per_step / base.tokens_per_step,
        "tokens": scale.tokens / base.tokens,
    }


def check_group(flag: Flag, key: str, name: str) -> bool:
    """Whether ``name`` is a group or group set; a problem naming the allowed ones if not."""
    known = [*GROUPS, *GROUP_SETS]
    if name in known:
        return True
    flag(key, f"unknown group {name!r}" + _did_you_mean(name, known), ", ".join(known))
    return False


def check_kind(flag: Flag, key: str, name: str) -> bool:
    if name in HP_KINDS:
        return True
    flag(key, f"unknown HP kind {name!r}" + _did_you_mean(name, HP_KINDS), ", ".join(HP_KINDS))
    return False


def check_hp_value(flag: Flag, key: str, kind: str, value: object) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        allowed = hp_value_allowed(kind, float(value))
        if allowed:
            flag(key, f"{value!r} is out of range", allowed)


def _did_you_mean(bad: str, allowed: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(bad, list(allowed), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _default_group_hps() -> dict[str, dict[str, float]]:
    # Norm gains are not decayed (towards 0 would switch the layer off) [C].
    return {g: {"weight_decay": 0.0} for g in sorted(GAIN_GROUPS)}


@dataclass
class HPs:
    """Base hyperparameters: their values at the base scale, before any transfer rule."""

    lr: float = 3e-3
    """Adam learning rate (peak of the schedule)."""
    eps: float = 1e-8
    """Adam epsilon."""
    weight_decay: float = 0.1
    """AdamW weight decay, PyTorch convention (per-step shrink lr * weight_decay)."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.95
    """Adam beta2."""
    init_std: float = 0.02
    """Standard deviation of the normal init of every matrix (gains start at 1)."""
    multiplier: float = 1.0
    """Forward multiplier on every module's output."""
    groups: dict[str, dict[str, float]] = field(default_factory=_default_group_hps)
    """Per-group base values that differ from the global ones: group or group set -> kind ->
    value. Default: no weight decay on norm gains."""

    def check(self, at: str, flag: Flag) -> None:
        for kind in HP_KINDS:
            check_hp_value(flag, f"{at}.{kind}", kind, getattr(self, kind))
        for g, kinds in self.groups.items():
            if not check_group(flag, f"{at}.groups.{g}", g):
                continue
            for kind, value in (kinds or {}).items():
                if check_kind(flag, f"{at}.groups.{g}.{kind}", kind):
                    check_hp_value(flag, f"{at}.groups.{g}.{kind}", kind, value)

    def with_values(self, values: Mapping[str, float]) -> HPs:
        """These HPs with some base values replaced: ``kind`` (``lr``) sets the global value,
        ``group.kind`` (``qk_norms.eps``; a group or group set) that group's own, as a grid
        point or a selected optimum names them."""
        plain: dict[str, float] = {}
        groups = {g: dict(kinds) for g, kinds in self.groups.items()}
        for key, v in values.items():
            group, kind = split_hp_key(key)
            if group is None:
                plain[kind] = float(v)
            else:  # per group, so that it beats any per-group default (no decay on gains)
                for g in expand_groups([group]):
                    groups.setdefault(g, {})[kind] = float(v)
        return replace(self, groups=groups, **plain)

    def get(self, key: str) -> float:
        """The base value a grid key names (for a group set: its first group's)."""
        group, kind = split_hp_key(key)
        return self.value(expand_groups([group])[0], kind) if group else getattr(self, kind)

    def value(self, group: str, kind: str) -> float:
        """The base value of ``kind`` for ``group`` (a group entry beats a group-set entry)."""
        found = None
        for key, kinds in self.groups.items():
            if kind in kinds and group in expand_groups([key]):
                if key == group:
                    return float(kinds[kind])
                found = float(kinds[kind])
        return found if found is not None else float(getattr(self, kind))


def split_hp_key(key: str) -> tuple[str | None, str]:
    """``"qk_norms.eps"`` -> (``"qk_norms"``, ``"eps"``); ``"lr"`` -> (None, ``"lr"``)."""
    group, _, kind = key.rpartition(".")
    return (group or None), kind


def layer_factors(factors: Sequence[float], depth: int) -> list[float]:
    """Per-layer factors given on any number of layers, mapped onto ``depth`` layers.

    Factors sit at relative depths 0..1 (first and last layer at the ends) and are linearly
    interpolated in log space, so the first and last layers keep their factors at any depth.
    """
    n = len(factors)
    if n == 0:
        return [1.0] * depth
    if any(f <= 0 for f in factors):
        raise ValueError(f"per-layer factors must be positive, got {list(factors)}")
    logs = [math.log(f) for f in factors]
    if n == 1:
        return [float(factors[0])] * depth
    if depth == 1:  # a single block is both first and last: the geometric mean
        return [math.exp(sum(logs) / n)]
    out = []
    for i in range(depth):
        x = i / (depth - 1) * (n - 1)
        lo = min(math.floor(x), n - 2)
        t = x - lo
        out.append(math.exp((1 - t) * logs[lo] + t * logs[lo + 1]))
    return out


@dataclass
class Factors:
    """Tuned per-module factors on top of the base HPs, in the paper's type x depth
    factorisation: factor(group, layer, kind) = per_type[kind][group] * per_layer[kind][layer].
    The per-module search finds them; all 1 is the global optimum."""

    per_type: dict[str, dict[str, float]] = field(default_factory=dict)
    """HP kind -> group (or group set) -> factor. Missing entries are 1."""
    per_layer: dict[str, list[float]] = field(default_factory=dict)
    """HP kind -> factors over relative depth (first to last block), shared by all block
    groups; interpolated (log-linearly) to the model's depth."""

    def check(self, at: str, flag: Flag) -> None:
        for kind, groups in self.per_type.items():
            if not check_kind(flag, f"{at}.per_type.{kind}", kind):
                continue
            for g, v in (groups or {}).items():
                key = f"{at}.per_type.{kind}.{g}"
                if check_group(flag, key, g) and not (math.isfinite(v) and v > 0):
                    flag(key, f"{v!r} is out of range", "> 0")
        for kind, factors in self.per_layer.items():
            key = f"{at}.per_layer.{kind}"
            if not check_kind(flag, key, kind):
                continue
            if not factors:
                flag(key, "empty list", "one or more factors > 0")
            for i, v in enumerate(factors):
                if not (math.isfinite(v) and v > 0):
                    flag(f"{key}[{i}]", f"{v!r} is out of range", "> 0")

    def type_factor(self, kind: str, group: str) -> float:
        f = 1.0
        for key, value in self.per_type.get(kind, {}).items():
            if group in expand_groups([key]):
                f = float(value)
                if key == group:
                    break
        return f

    def layer_factors(self, kind: str, depth: int) -> list[float]:
        return layer_factors(self.per_layer.get(kind, []), depth)


@dataclass(frozen=True)
class GroupSettings:
    """Resolved settings of one parameter group at one layer (layer None outside blocks)."""

    group: str
    layer: int | None
    init_std: float | None
    multiplier: float
    lr: float
    eps: float
    weight_decay: float
    beta1: float
    beta2: float

    def as_dict(self) -> dict:
        # By hand: dataclasses.asdict deep-copies, and run ids hash thousands of these.
        return {"group": self.group, "layer": self.layer, "init_std": self.init_std,
                "multiplier": self.multiplier, "lr": self.lr, "eps": self.eps,
                "weight_decay": self.weight_decay, "beta1": self.beta1, "beta2": self.beta2}

    @functools.cached_property
    def json_text(self) -> str:
        """``as_dict()`` as JSON with sorted keys, made once per object: a run id hashes the
        settings of every (group, layer), and resolved settings are shared between the runs
        of a plan (`cp.scaling.memo`)."""
        return json.dumps(self.as_dict(), sort_keys=True, default=repr)


def _scaled_beta(beta: float, factor: float, table: RuleTable) -> float:
    lo, hi = table.beta_bounds
    if table.beta_form == "power":
        b = beta ** factor
    else:
        b = 1.0 - factor * (1.0 - beta)
    return min(max(b, lo), hi)


def resolve(
    table: RuleTable,
    base_scale: Scale,
    scale: Scale,
    base_hps: HPs,
    factors: Factors | None = None,
    groups: Iterable[str] | None = None,
) -> list[GroupSettings]:
    """Settings of every (group, layer) of a model at ``scale``.

    ``groups`` restricts the output to the groups a model has (default: all groups); block
    groups get one entry per layer, in layer order, between the embedding and the head.
    """
    factors = factors or Factors()
    wanted = list(GROUPS) if groups is None else [g for g in GROUPS if g in set(groups)]
    unknown = set(groups or ()) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown group(s) {sorted(unknown)}; known: {list(GROUPS)}")
    ratios = scale_ratios(base_scale, scale)
    per_layer = {k: factors.layer_factors(k, scale.depth) for k in HP_KINDS}
    # Everything but the per-layer factor is the same for every layer of a group.
    group_factor = {(g, k): factors.type_factor(k, g) * table.factor(g, k, ratios)
                    for g in wanted for k in HP_KINDS}
    base = {(g, k): base_hps.value(g, k) for g in wanted for k in HP_KINDS}

    def settings(group: str, layer: int | None) -> GroupSettings:
        values: dict[str, float | None] = {}
        for kind in HP_KINDS:
            factor = group_factor[group, kind]
            if layer is not None:
                factor *= per_layer[kind][layer]
            if kind in ("beta1", "beta2"):
                values[kind] = _scaled_beta(base[group, kind], factor, table)
            elif kind == "init_std" and group in GAIN_GROUPS:
                values[kind] = None
            else:
                values[kind] = base[group, kind] * factor
        return GroupSettings(group=group, layer=layer, **values)  # type: ignore[arg-type]

    out = [settings(g, None) for g in wanted if g == "embedding"]
    for layer in range(scale.depth):
        out += [settings(g, layer) for g in wanted if g in BLOCK_GROUPS]
    out += [settings(g, None) for g in wanted if g in ("final_norm", "unembedding")]
    return out


def settings_index(settings: Iterable[GroupSettings]) -> Mapping[tuple[str, int | None],
                                                                 GroupSettings]:
    """Settings keyed by (group, layer)."""
    return {(s.group, s.layer): s for s in settings}
