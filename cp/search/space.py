"""The per-module search space, factorised as in the paper: for each HP kind,

    log2 factor(group, layer) = x[kind, group] + x[kind, layer]

so a kind has |groups| + |layers| free values instead of |groups| x |layers|. Points are vectors
of log2 factors; 0 everywhere is the global optimum (all factors 1). Per-layer values sit
at the base model's layers and are interpolated over relative depth for other depths
(`cp.scaling.layer_factors`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

from ..scaling import BLOCK_GROUPS, Factors, expand_groups


@dataclass(frozen=True)
class Dim:
    """One coordinate: a kind's factor for one group (``scope="type"``) or one layer."""

    kind: str
    scope: str  # "type" | "layer"
    key: str    # group name, or the layer index as a string

    @property
    def name(self) -> str:
        return f"{self.kind}.{self.key}" if self.scope == "type" else \
            f"{self.kind}.layer{self.key}"


@dataclass(frozen=True)
class SearchSpace:
    dims: tuple[Dim, ...]
    radius: float
    """Every coordinate lies in [-radius, radius] (log2)."""

    @classmethod
    def build(cls, kinds: Sequence[str], groups: Sequence[str], depth: int, per_layer: bool,
              radius: float, groups_per_kind: Optional[Mapping[str, Sequence[str]]] = None,
              exclude: Iterable[tuple[str, str]] = ()) -> SearchSpace:
        """The space for ``kinds`` x ``groups`` (group sets expanded; ``groups_per_kind``
        replaces the groups of some kinds; ``exclude`` drops (kind, group) pairs that cannot
        act), plus ``depth`` per-layer factors per kind when ``per_layer`` and the kind has
        a block group."""
        excluded = set(exclude)
        dims = []
        for kind in kinds:
            mine = expand_groups((groups_per_kind or {}).get(kind, groups))
            mine = [g for g in mine if (kind, g) not in excluded]
            dims += [Dim(kind, "type", g) for g in mine]
            if per_layer and any(g in BLOCK_GROUPS for g in mine):
                dims += [Dim(kind, "layer", str(i)) for i in range(depth)]
        return cls(tuple(dims), float(radius))

    @property
    def dim(self) -> int:
        return len(self.dims)

    def center(self) -> list[float]:
        return [0.0] * self.dim

    def clip(self, x: Iterable[float]) -> list[float]:
        return [min(max(float(v), -self.radius), self.radius) for v in x]

    def contains(self, x: Sequence[float]) -> bool:
        return len(x) == self.dim and all(-self.radius - 1e-12 <= v <= self.radius + 1e-12
                                          for v in x)

    def factors(self, x: Sequence[float]) -> Factors:
        """The per-module factors of point ``x``."""
        if len(x) != self.dim:
            raise ValueError(f"point has {len(x)} coordinates, the space {self.dim}")
        per_type: dict[str, dict[str, float]] = {}
        per_layer: dict[str, list[float]] = {}
        for d, v in zip(self.dims, x, strict=True):
            if d.scope == "type":
                per_type.setdefault(d.kind, {})[d.key] = 2.0 ** v
            else:
                per_layer.setdefault(d.kind, []).append(2.0 ** v)
        # A layer factor multiplies every block group of its kind, searched or not; a kind's
        # layer factors only exist when it has block groups.
        return Factors(per_type=per_type, per_layer=per_layer)

    def to_dict(self) -> dict:
        return {"radius": self.radius, "dims": [d.name for d in self.dims]}

    def counts(self) -> dict[str, dict[str, int]]:
        """Free values per kind: {kind: {"type": n, "layer": n}}."""
        out: dict[str, dict[str, int]] = {}
        for d in self.dims:
            out.setdefault(d.kind, {"type": 0, "layer": 0})[d.scope] += 1
        return out
