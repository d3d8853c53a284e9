"""The vocabulary of a parameterisation: module groups, HP kinds, exponents, rule tables.

A parameterisation is data. For every parameter group and every HP kind a `Rule` gives four
exponents; the HP at a new scale is the base value times

    m_N ** width  *  m_L ** depth  *  m_B ** batch  *  m_D ** tokens

with m_N, m_L, m_B, m_D the width, depth, batch and tokens ratios of a model to the base model
(`cp.scaling.scale_ratios`: m_B compares the batches in tokens, batch x seq_len; m_D the
training horizons in tokens). The SDE rules are usually written in rho = m_B / m_D:
``Rule(rho=0.5)`` is shorthand for ``batch=0.5, tokens=-0.5``. Exponents may be numbers or
expressions in ``alpha``, the residual-branch exponent ("alpha - 1", "-alpha").
"""

from __future__ import annotations

import ast
import functools
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import InitVar, dataclass, replace
from typing import Literal, Union

# Module groups (the paper's "module types"). Block groups exist once per layer.
EMBEDDING_GROUPS = ("embedding",)
ATTN_GROUPS = ("attn_norm", "attn_q", "attn_k", "attn_v", "qk_norm_q", "qk_norm_k", "attn_out")
MLP_GROUPS = ("mlp_norm", "mlp_up", "mlp_gate", "mlp_down")
HEAD_GROUPS = ("final_norm", "unembedding")
BLOCK_GROUPS = ATTN_GROUPS + MLP_GROUPS
GROUPS = EMBEDDING_GROUPS + BLOCK_GROUPS + HEAD_GROUPS

# Names a user can write instead of listing groups one by one (in rule overrides, HP groups,
# per-module factors).
GROUP_SETS: dict[str, tuple[str, ...]] = {
    "hidden": ("attn_q", "attn_k", "attn_v", "attn_out", "mlp_up", "mlp_gate", "mlp_down"),
    "branch_out": ("attn_out", "mlp_down"),
    "block_norms": ("attn_norm", "mlp_norm"),
    "qk_norms": ("qk_norm_q", "qk_norm_k"),
    "gains": ("attn_norm", "mlp_norm", "qk_norm_q", "qk_norm_k", "final_norm"),
    "all": GROUPS,
}
GAIN_GROUPS = frozenset(GROUP_SETS["gains"])  # vectors initialised to 1, not drawn from N(0, std)

# HP kinds. ``multiplier`` is a module's forward multiplier (its output is scaled by it). For
# beta1/beta2 the rule and the per-module factors act on (1 - beta).
HP_KINDS = ("init_std", "multiplier", "lr", "eps", "weight_decay", "beta1", "beta2")
Kind = Literal["init_std", "multiplier", "lr", "eps", "weight_decay", "beta1", "beta2"]

Exponent = Union[float, str]
#: The transfer axes, named as the model fields they compare (`Scale`).
AXES = ("width", "depth", "batch", "tokens")
#: What a rule override may name: an axis, or ``rho`` (batch and tokens together).
RULE_AXES = (*AXES, "rho")

# Allowed base value of each HP kind, in one place: (test, what the message says).
_HP_RANGES = {
    "beta1": (lambda v: 0 < v < 1, "0 < beta < 1"),
    "beta2": (lambda v: 0 < v < 1, "0 < beta < 1"),
    "lr": (lambda v: v > 0, "> 0"),
    "eps": (lambda v: v > 0, "> 0"),
    "multiplier": (lambda v: v > 0, "> 0"),
    "init_std": (lambda v: v >= 0, ">= 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
}


def hp_value_allowed(kind: str, value: float) -> str | None:
    """None when ``value`` is an allowed base value of HP ``kind``, else what is allowed."""
    ok, allowed = _HP_RANGES[kind]
    return None if math.isfinite(value) and ok(value) else allowed


def expand_groups(names: Iterable[str]) -> list[str]:
    """Group names with group sets (``hidden``, ``gains``...) expanded, order kept, no repeats."""
    out: list[str] = []
    for name in names:
        for g in GROUP_SETS.get(name, (name,)):
            if g not in out:
                out.append(g)
    return out


_BINOPS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {
    ast.USub: operator.neg, ast.UAdd: operator.pos}


def eval_exponent(expr: Exponent, alpha: float) -> float:
    """Value of an exponent: a number, or arithmetic on numbers and ``alpha``.

    >>> eval_exponent("alpha - 1", alpha=0.5)
    -0.5
    """
    if isinstance(expr, (int, float)):
        if not math.isfinite(expr):
            raise ValueError(f"exponent {expr!r} is not a finite number")
        return float(expr)
    return _eval_expression(str(expr), float(alpha))


@functools.lru_cache(maxsize=4096)
def _eval_expression(expr: str, alpha: float) -> float:
    # Cached: planning a large study evaluates the same few expressions millions of times.
    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.Name) and node.id == "alpha":
            return float(alpha)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        raise ValueError(
            f"exponent {expr!r}: only numbers, 'alpha', + - * / and parentheses are allowed"
        )

    if len(expr) > 200:
        raise ValueError(f"exponent {expr[:40]!r}... is longer than 200 characters")
    try:
        tree = ast.parse(str(expr), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"exponent {expr!r} is not an arithmetic expression") from e
    try:
        value = ev(tree)
    except (ZeroDivisionError, OverflowError) as e:
        raise ValueError(f"exponent {expr!r} cannot be evaluated ({e})") from None
    if not math.isfinite(value):
        raise ValueError(f"exponent {expr!r} is not a finite number")
    return value


def _add(a: Exponent, b: Exponent) -> Exponent:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a + b
    if a == 0:
        return b
    if b == 0:
        return a
    return f"({a}) + ({b})"


def _neg(a: Exponent) -> Exponent:
    return -a if isinstance(a, (int, float)) else f"-({a})"


@dataclass(frozen=True)
class Rule:
    """Exponents of the scale ratios for one (group, HP kind).

    ``rho`` is a shorthand: it adds ``rho`` to the batch exponent and ``-rho`` to the tokens
    exponent, since the SDE rules depend on m_B / m_D only.
    """

    width: Exponent = 0
    depth: Exponent = 0
    batch: Exponent = 0
    tokens: Exponent = 0
    rho: InitVar[Exponent] = 0

    def __post_init__(self, rho: Exponent) -> None:
        if rho != 0:
            object.__setattr__(self, "batch", _add(self.batch, rho))
            object.__setattr__(self, "tokens", _add(self.tokens, _neg(rho)))

    def __add__(self, other: Rule) -> Rule:
        return Rule(*(_add(getattr(self, a), getattr(other, a)) for a in AXES))

    def values(self, alpha: float) -> dict[str, float]:
        """The four exponents as numbers."""
        return {a: eval_exponent(getattr(self, a), alpha) for a in AXES}

    def factor(self, ratios: Mapping[str, float], alpha: float) -> float:
        """The product of the scale ratios raised to this rule's exponents."""
        f = 1.0
        for axis, e in self.values(alpha).items():
            if e:
                f *= ratios[axis] ** e
        return f

    def describe(self, alpha: float) -> str:
        """Compact text like ``m_N^-1 m_L^(alpha-1) rho^1/2`` (``1`` when all are zero)."""
        v = self.values(alpha)
        parts = [f"m_N^{_fmt(v['width'])}" if v["width"] else "",
                 f"m_L^{_fmt(v['depth'])}" if v["depth"] else ""]
        if v["batch"] and v["batch"] == -v["tokens"]:
            parts.append(f"rho^{_fmt(v['batch'])}")
        else:
            parts += [f"m_B^{_fmt(v['batch'])}" if v["batch"] else "",
                      f"m_D^{_fmt(v['tokens'])}" if v["tokens"] else ""]
        return " ".join(p for p in parts if p) or "1"




def _fmt(x: float) -> str:
    for den in (1, 2, 3, 4):
        if abs(x * den - round(x * den)) < 1e-9:
            num = round(x * den)
            return str(num) if den == 1 else f"{num}/{den}"
    return f"{x:.3g}"


Row = dict[str, Rule]  # HP kind -> rule; missing kinds scale with exponent 0


def row(**rules: Rule) -> Row:
    """One row of a rule table: HP kind -> Rule."""
    unknown = set(rules) - set(HP_KINDS)
    if unknown:
        raise ValueError(f"unknown HP kind(s) {sorted(unknown)}; allowed: {list(HP_KINDS)}")
    return dict(rules)


def add_rows(*rows: Row) -> Row:
    """Sum of rows: exponents add kind by kind (e.g. a width/depth row plus the SDE row)."""
    out: Row = {}
    for r in rows:
        for kind, rule in r.items():
            out[kind] = out[kind] + rule if kind in out else rule
    return out


BetaForm = Literal["linear", "power"]


@dataclass(frozen=True)
class RuleTable:
    """A parameterisation: per group, per HP kind, the exponents of the scale ratios.

    Attributes:
        name: the parameterisation's name (``completed_p``...).
        alpha: residual-branch exponent; exponents written in ``alpha`` are evaluated with it.
        rows: group -> HP kind -> Rule. A missing (group, kind) does not scale.
        beta_form: how a factor f on (1 - beta) is applied. ``linear``: beta' = 1 - f (1 - beta)
            (the SDE rule as written); ``power``: beta' = beta ** f (same to first order, always
            inside (0, 1)).
        beta_bounds: betas are clipped into this closed interval, inside (0, 1).
        doc: what the table is and which of its rules are inferred.
    """

    name: str
    alpha: float
    rows: Mapping[str, Row]
    beta_form: BetaForm = "linear"
    beta_bounds: tuple[float, float] = (0.01, 0.99999)
    doc: str = ""

    def rule(self, group: str, kind: str) -> Rule:
        return self.rows.get(group, {}).get(kind, Rule())

    @functools.cached_property
    def _exponents(self) -> dict[tuple[str, str], tuple[tuple[str, float], ...]]:
        # Numeric, non-zero exponents per (group, kind), evaluated once per table.
        return {(g, k): tuple((a, e) for a, e in self.rule(g, k).values(self.alpha).items()
                              if e) for g in GROUPS for k in HP_KINDS}

    def factor(self, group: str, kind: str, ratios: Mapping[str, float]) -> float:
        """The transfer factor of (group, kind) for scale ratios ``ratios``."""
        f = 1.0
        for axis, e in self._exponents[group, kind]:
            f *= ratios[axis] ** e
        return f

    def to_dict(self) -> dict:
        """The table as plain data (JSON): `RuleTable.from_dict` gives it back."""
        return {"name": self.name, "alpha": self.alpha, "beta_form": self.beta_form,
                "beta_bounds": list(self.beta_bounds),
                "rows": {g: {k: {a: getattr(r, a) for a in AXES if getattr(r, a) != 0}
                             for k, r in row.items()} for g, row in self.rows.items()}}

    @classmethod
    def from_dict(cls, d: Mapping) -> RuleTable:
        rows = {g: {k: Rule(**axes) for k, axes in row.items()} for g, row in d["rows"].items()}
        lo, hi = d["beta_bounds"]
        return cls(name=d["name"], alpha=float(d["alpha"]), rows=rows,
                   beta_form=d["beta_form"], beta_bounds=(float(lo), float(hi)))

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Mapping[str, Exponent]]],
                       *, name: str | None = None, alpha: float | None = None) -> RuleTable:
        """A copy with some exponents replaced: ``{group or group set: {kind: {axis: value}}}``.

        Axes are ``width``, ``depth``, ``batch``, ``tokens`` and ``rho`` (which sets batch to
        rho and tokens to -rho). Axes not named keep their value.
        """
        rows = {g: dict(r) for g, r in self.rows.items()}
        for gname, kinds in overrides.items():
            groups = expand_groups([gname])
            bad = [g for g in groups if g not in GROUPS]
            if bad:
                raise ValueError(f"unknown group {gname!r}")
            for kind, axes in kinds.items():
                if kind not in HP_KINDS:
                    raise ValueError(f"unknown HP kind {kind!r}")
                for g in groups:
                    old = rows.setdefault(g, {}).get(kind, Rule())
                    new = {a: getattr(old, a) for a in AXES}
                    for axis, value in axes.items():
                        if axis == "rho":
                            new["batch"], new["tokens"] = value, _neg(value)
                        elif axis in AXES:
                            new[axis] = value
                        else:
                            raise ValueError(f"unknown axis {axis!r}")
                    rows[g][kind] = Rule(**new)
        return replace(self, rows=rows, name=name or self.name,
                       alpha=self.alpha if alpha is None else alpha)
