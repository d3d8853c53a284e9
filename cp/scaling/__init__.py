"""Parameterisations as data: rule tables, and `resolve` to turn base HPs into per-group settings.

Pure Python (no torch), so the CLI and the pipeline can plan and describe runs cheaply.
"""

from .resolve import (
    Factors,
    Flag,
    GroupSettings,
    HPs,
    Scale,
    check_group,
    check_hp_value,
    check_kind,
    layer_factors,
    resolve,
    scale_ratios,
    settings_index,
    split_hp_key,
)
from .rules import (
    AXES,
    BLOCK_GROUPS,
    GAIN_GROUPS,
    GROUP_SETS,
    GROUPS,
    HP_KINDS,
    RULE_AXES,
    Rule,
    RuleTable,
    eval_exponent,
    expand_groups,
    hp_value_allowed,
)
from .tables import ALPHA_TABLES, TABLES

__all__ = [
    "ALPHA_TABLES", "AXES", "BLOCK_GROUPS", "GAIN_GROUPS", "GROUPS", "GROUP_SETS", "HP_KINDS",
    "RULE_AXES", "TABLES", "Factors", "Flag", "GroupSettings", "HPs", "Rule", "RuleTable",
    "Scale", "build_table", "check_group", "check_hp_value", "check_kind", "eval_exponent",
    "expand_groups", "hp_value_allowed", "layer_factors", "resolve", "scale_ratios",
    "settings_index", "split_hp_key",
]


def build_table(name: str, alpha: float | None = None, base: str | None = None,
                rules: dict | None = None) -> RuleTable:
    """A rule table by name, optionally derived from another table with exponents overridden.

    ``base`` names the built-in table to start from (default: ``name`` itself, which must then
    be built in); ``rules`` is ``{group: {kind: {axis: exponent}}}`` as in the spec.
    """
    start = base or name
    if start not in TABLES:
        raise ValueError(f"unknown parameterisation {start!r}; built in: {sorted(TABLES)}")
    builder = TABLES[start]
    table = builder(alpha=alpha) if (alpha is not None and start in ALPHA_TABLES) else builder()
    if alpha is not None and start not in ALPHA_TABLES:
        table = table.with_overrides({}, alpha=alpha)
    return table.with_overrides(rules or {}, name=name)
