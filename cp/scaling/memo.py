"""`resolve` once per distinct input: planning a study resolves the same (table, base scale,
scale, HPs, factors, groups) for every seed and every run that differs only in what resolve
does not read, so a sweep of 10,000 runs has a few hundred distinct resolutions.

The key is exact: two inputs share an entry only when resolve would see the same values.
HPs and Factors are mutable dataclasses holding dicts, so the key is a snapshot of their
values taken at each call (a later change to the object makes a new key, never a stale hit):
their repr, which is exact (`exact_key`) -- -0.0 and 0.0 resolve to different settings and
stay apart, and dicts keep their order (a group's own entry beats a group set's by order,
`HPs.value`). Rule tables hold dicts too and are compared by
identity (`cp.config` builds each distinct table once): the entry keeps its table alive, so
its id is never reused while the entry exists.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

from .resolve import Factors, GroupSettings, HPs, Scale, resolve
from .rules import RuleTable

MAX_ENTRIES = 65_536
"""Distinct resolutions kept (a few kB each); the cache starts afresh beyond that."""

_cache: dict[Hashable, tuple[RuleTable, tuple[GroupSettings, ...]]] = {}


def exact_key(*values: Any) -> str:
    """A key equal for two sets of values exactly when they are the same values: their repr.
    A dataclass's repr lists every field (none of HPs, Factors or Scale hides one) in order;
    a float's repr is the shortest text that reads back as that float (-0.0 is not 0.0, 1 is
    not 1.0, a NaN equals itself); dicts keep their order, strings their quotes."""
    return repr(values)


def resolve_once(table: RuleTable, base_scale: Scale, scale: Scale, base_hps: HPs,
                 factors: Factors | None = None, groups: Iterable[str] | None = None
                 ) -> list[GroupSettings]:
    """`resolve` with the result of an earlier call on the same values (a fresh list: callers
    may change it; the settings themselves are frozen)."""
    group_list = None if groups is None else tuple(groups)
    key = (id(table), exact_key(base_scale, scale, base_hps, factors, group_list))
    hit = _cache.get(key)
    if hit is not None and hit[0] is table:
        return list(hit[1])
    settings = resolve(table, base_scale, scale, base_hps, factors, group_list)
    if len(_cache) >= MAX_ENTRIES:
        _cache.clear()
    _cache[key] = (table, tuple(settings))
    return settings


def clear() -> None:
    """Forget every cached resolution."""
    _cache.clear()
