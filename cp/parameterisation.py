"""`cp.parameterise`: a rule table applied to any PyTorch model, without rewriting it.

    p = cp.parameterise(model, "completed_p", roles="llama",
                        base={"width": 256, "depth": 4, "batch": 32, "tokens": 10**8},
                        scale={"width": 1024, "depth": 8, "batch": 64, "tokens": 4 * 10**8},
                        hps={"lr": 3e-3})
    p.init_()                                   # every matched parameter from the table's init
    opt = torch.optim.AdamW(p.param_groups())   # one group per (group, layer): "mlp_down[3]"

The settings come from `cp.scaling.resolve`, exactly as a run of our own GPT gets them: a
(group, layer) has the same lr, eps, weight decay, betas and init std in a user's model as in
ours at the same scales. A role map (`cp.roles`) says which (group, layer) each parameter is.

Forward multipliers (each residual branch x m_L^-alpha, any per-module multiplier) are forward
hooks that scale the output of the module owning the group's parameter; `remove()` takes them
off. Nothing is stored on tensors or modules: the hooks live in the module's hook table, the
settings in this object, so the parameterisation survives ``load_state_dict``, and applies
again (`Parameterisation.apply`) to the model after FSDP wrapping or ``torch.compile`` -- the
prefixes those wrappers add to parameter names are ignored when matching roles.
`Parameterised.save` writes the whole parameterisation (table, scales, base HPs, factors,
roles) as a small JSON file; `load_parameterisation` applies it to a model again and gives the
same param groups.

Tied embeddings (GPT-2; Llama/Qwen2 with ``tie_word_embeddings``): one tensor is both the
embedding and the unembedding. It takes the *embedding's* lr, eps, weight decay, betas and
init (a token's row is updated by the embedding's gradient too, and the embedding's rule keeps
that update width-independent), and the unembedding's module (``lm_head``) gets a forward
multiplier ``m = multiplier_unembedding * init_std_unembedding / init_std_embedding`` on the
logits: 1/m_N under completed_p and muP, MuReadout's form of the readout's width scaling.
Exact: the logits at initialisation have the size an untied readout drawn with the
unembedding's init std gives, at every width. An approximation: the readout's update is the
multiplier times the embedding's Adam update, which equals the table's unembedding lr only
when the two groups' base lr agree and the table scales them so (it does for completed_p and
muP); eps, weight decay and betas are the embedding's, and one Adam state serves both uses.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from .optim import Tagged, param_groups
from .roles import Role, RoleError, RoleMap
from .scaling import (
    AXES,
    Factors,
    GroupSettings,
    HPs,
    RuleTable,
    Scale,
    build_table,
    resolve,
    settings_index,
)

FORMAT = "cp.parameterisation/1"
"""The ``format`` of a saved parameterisation."""

ScaleLike = Union[Scale, Mapping[str, int]]


class ParameterisationError(ValueError):
    """A parameterisation that does not fit the model it is applied to."""


def as_scale(value: ScaleLike, other: Optional[ScaleLike] = None, what: str = "scale") -> Scale:
    """A `Scale` from a mapping with the keys ``cpt describe --json`` uses (width, depth,
    batch, tokens; seq_len optional: default ``other``'s, since m_B compares batches in
    tokens and equal sequence lengths cancel)."""
    if isinstance(value, Scale):
        return value
    allowed = (*AXES, "seq_len")
    unknown = set(value) - set(allowed)
    missing = set(AXES) - set(value)
    if unknown or missing:
        raise ParameterisationError(
            f"{what}: " + "; ".join(
                ([f"unknown key(s) {sorted(unknown)}"] if unknown else []) +
                ([f"missing key(s) {sorted(missing)}"] if missing else [])) +
            f" (keys: {', '.join(allowed)})")
    seq_len = value.get("seq_len")
    if seq_len is None and other is not None:
        seq_len = other.seq_len if isinstance(other, Scale) else other.get("seq_len")
    fields = {k: int(value[k]) for k in AXES}
    scale = Scale(**fields) if seq_len is None else Scale(**fields, seq_len=int(seq_len))
    problems: list[str] = []
    scale.check(what, lambda key, message, allowed="": problems.append(f"{key}: {message}"))
    if problems:
        raise ParameterisationError("; ".join(problems))
    return scale


def _hps(value: Union[HPs, Mapping[str, Any], None]) -> HPs:
    if value is None:
        return HPs()
    if isinstance(value, HPs):
        return value
    known = {f.name for f in dataclasses.fields(HPs)}
    unknown = set(value) - known
    if unknown:
        raise ParameterisationError(f"hps: unknown key(s) {sorted(unknown)} (keys: "
                                    f"{', '.join(sorted(known))})")
    groups = {**HPs().groups, **value.get("groups", {})}
    return HPs(**{**value, "groups": groups})


def _factors(value: Union[Factors, Mapping[str, Any], None]) -> Factors:
    if value is None:
        return Factors()
    if isinstance(value, Factors):
        return value
    unknown = set(value) - {"per_type", "per_layer"}
    if unknown:
        raise ParameterisationError(f"factors: unknown key(s) {sorted(unknown)} (keys: "
                                    "per_type, per_layer)")
    return Factors(per_type=dict(value.get("per_type", {})),
                   per_layer=dict(value.get("per_layer", {})))


def _check_values(hps: HPs, factors: Factors) -> None:
    problems: list[str] = []

    def flag(key: str, message: str, allowed: str = "") -> None:
        problems.append(f"{key}: {message}" + (f" (allowed: {allowed})" if allowed else ""))

    hps.check("hps", flag)
    factors.check("factors", flag)
    if problems:
        raise ParameterisationError("; ".join(problems))


@dataclasses.dataclass(frozen=True)
class Parameterisation:
    """What determines every setting, independent of any model instance: table, scales, base
    HPs, per-module factors and roles. `apply` binds it to a model; `save`/`load` keep it."""

    table: RuleTable
    base: Scale
    scale: Scale
    roles: RoleMap
    hps: HPs = dataclasses.field(default_factory=HPs)
    factors: Factors = dataclasses.field(default_factory=Factors)
    width: Optional[int] = None
    """The model's width when given instead of read from its embedding."""
    depth: Optional[int] = None
    """The model's depth when given instead of counted from its block layers."""

    def settings(self, groups: Optional[Iterable[str]] = None) -> list[GroupSettings]:
        """The resolved settings of every (group, layer) at ``scale`` (of ``groups`` only)."""
        return resolve(self.table, self.base, self.scale, self.hps, self.factors, groups=groups)

    def apply(self, model: nn.Module) -> Parameterised:
        """Bind to ``model``: match its parameters to roles, check its width and depth against
        ``scale``, and register the forward-multiplier hooks."""
        return Parameterised(self, model)

    def to_dict(self) -> dict[str, Any]:
        def scale(s: Scale) -> dict[str, int]:
            return {k: getattr(s, k) for k in (*AXES, "seq_len")}

        return {"format": FORMAT, "table": self.table.to_dict(), "base": scale(self.base),
                "scale": scale(self.scale), "roles": self.roles.to_dict(),
                "hps": dataclasses.asdict(self.hps), "factors": dataclasses.asdict(self.factors),
                "width": self.width, "depth": self.depth}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Parameterisation:
        if d.get("format") != FORMAT:
            raise ParameterisationError(f"not a saved parameterisation (format "
                                        f"{d.get('format')!r}, expected {FORMAT!r})")
        return cls(table=RuleTable.from_dict(d["table"]), base=Scale(**d["base"]),
                   scale=Scale(**d["scale"]), roles=RoleMap.from_dict(d["roles"]),
                   hps=HPs(**d["hps"]), factors=Factors(**d["factors"]), width=d.get("width"),
                   depth=d.get("depth"))

    def save(self, path: Union[str, Path]) -> Path:
        """Write this parameterisation as JSON (a few kilobytes)."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> Parameterisation:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _owner(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    prefix = name.rpartition(".")[0]
    return prefix, model.get_submodule(prefix) if prefix else model


def _scale_output(multiplier: float) -> Callable[[nn.Module, Any, Any], Any]:
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"cp: a forward multiplier needs a module that returns a tensor; "
                            f"{type(module).__name__} returned {type(output).__name__}")
        return output * multiplier
    return hook


class Parameterised:
    """A `Parameterisation` bound to a model: its param groups, its init, its hooks."""

    def __init__(self, spec: Parameterisation, model: nn.Module):
        self.spec = spec
        self.model = model
        names: dict[int, list[str]] = {}
        tensors: dict[int, nn.Parameter] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            names.setdefault(id(p), []).append(name)
            tensors[id(p)] = p
        self.roles: dict[str, Role] = spec.roles.assign(n for ns in names.values() for n in ns)
        self.tied: Optional[tuple[str, str]] = None
        """(embedding name, unembedding name) of a tensor that plays both."""
        self.tagged: list[Tagged] = []
        for key, ns in names.items():
            roles = {self.roles[n] for n in ns}
            if len(roles) == 1:
                role = roles.pop()
                self.tagged.append((role.group, role.layer, ns[0], tensors[key]))
                continue
            groups = {r.group: n for n in ns for r in [self.roles[n]]}
            if set(groups) != {"embedding", "unembedding"} or len(roles) != 2 or self.tied:
                raise RoleError("one tensor has several roles: " + ", ".join(
                    f"{n} ({self.roles[n].label})" for n in ns) + " (only an embedding tied "
                    "to the unembedding may share a tensor)")
            self.tied = (groups["embedding"], groups["unembedding"])
            self.tagged.append(("embedding", None, groups["embedding"], tensors[key]))
        self.width, self.depth = self._shape()
        present = {g for g, *_ in self.tagged} | ({"unembedding"} if self.tied else set())
        self.settings: list[GroupSettings] = spec.settings(present)
        self._by_key = settings_index(self.settings)
        self.multipliers = self._module_multipliers()
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        for prefix, mult in self.multipliers.items():
            if mult != 1.0:
                module = model.get_submodule(prefix)
                self.handles.append(module.register_forward_hook(_scale_output(mult)))

    # -- reading the model --------------------------------------------------------------------
    def _shape(self) -> tuple[int, int]:
        spec = self.spec
        width = spec.width
        if width is None:
            widths = {p.shape[-1] for g, _, _, p in self.tagged if g == "embedding"}
            if len(widths) != 1:
                raise ParameterisationError(
                    f"cannot read the width from the embedding (its tensors' last dims: "
                    f"{sorted(widths)}); give it: parameterise(..., width=N)")
            width = widths.pop()
        layers = sorted({layer for _, layer, _, _ in self.tagged if layer is not None})
        depth = spec.depth
        if depth is None:
            if layers != list(range(len(layers))):
                raise ParameterisationError(f"the block layers found are {layers}, not 0..L-1; "
                                            "give the depth: parameterise(..., depth=L)")
            depth = len(layers)
        if (width, depth) != (spec.scale.width, spec.scale.depth):
            raise ParameterisationError(
                f"the model has width {width} and depth {depth}, but scale says width "
                f"{spec.scale.width} and depth {spec.scale.depth}")
        if layers and layers[-1] >= depth:
            raise ParameterisationError(f"a block layer {layers[-1]} is beyond depth {depth}")
        return width, depth

    def _module_multipliers(self) -> dict[str, float]:
        """The forward multiplier of every module that owns a matched, non-bias parameter
        (module name -> multiplier); the tied readout's module gets the readout multiplier."""
        per_module: dict[str, set[tuple[str, Optional[int]]]] = {}
        for name, role in self.roles.items():
            if role.is_bias or (self.tied and name == self.tied[1]):
                continue
            per_module.setdefault(_owner(self.model, name)[0], set()).add((role.group,
                                                                           role.layer))
        out: dict[str, float] = {}
        for prefix, keys in per_module.items():
            if len(keys) > 1:
                raise RoleError(f"module {prefix or '<model>'} owns parameters of several "
                                f"groups ({', '.join(sorted(str(k) for k in keys))}): its "
                                "forward multiplier is ambiguous")
            (key,) = keys
            out[prefix] = self._by_key[key].multiplier
        if self.tied:
            out[_owner(self.model, self.tied[1])[0]] = self.readout_multiplier()
        for prefix, mult in out.items():
            if prefix == "" and mult != 1.0:
                raise ParameterisationError(
                    f"a forward multiplier of {mult:g} for a parameter the model's top module "
                    "owns (its output is not that parameter's activation): put the parameter "
                    "in a submodule, or keep that group's multiplier at 1")
        return out

    def readout_multiplier(self) -> float:
        """The forward multiplier on the logits of a tied readout (1 when untied: the
        unembedding's own multiplier then acts through its module)."""
        if not self.tied:
            return 1.0
        emb, unemb = self._by_key["embedding", None], self._by_key["unembedding", None]
        assert emb.init_std and unemb.init_std is not None  # neither is a gain group
        return unemb.multiplier * unemb.init_std / emb.init_std

    # -- what a trainer uses ------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """One dict per (group, layer) that ``torch.optim.AdamW`` accepts: ``params``, ``lr``,
        ``eps``, ``betas``, ``weight_decay``, ``name`` (``mlp_down[3]``) and ``resolved_lr``
        (see `cp.optim.set_lr_factor`), in the table's order."""
        groups = param_groups(self.tagged, self.settings, merge=False)
        for g in groups:
            del g["cp_members"]
        return groups

    def init_(self, generator: Optional[torch.Generator] = None) -> None:
        """Re-initialise every matched parameter: N(0, init_std^2) with its (group, layer)'s
        resolved init std, ones for norm gains, zeros for biases (a tied tensor: the
        embedding's)."""
        with torch.no_grad():
            for group, layer, name, p in self.tagged:
                init = self.roles[name].init
                if init == "ones":
                    p.fill_(1.0)
                elif init == "zeros":
                    p.zero_()
                else:
                    std = self._by_key[group, layer].init_std
                    assert std is not None  # a role with a normal init is not a gain group
                    p.normal_(0.0, std, generator=generator)

    def remove(self) -> None:
        """Take the forward-multiplier hooks off: the model computes as it did before."""
        for h in self.handles:
            h.remove()
        self.handles = []

    def tagged_modules(self) -> list[tuple[str, Optional[int], nn.Module]]:
        """(group, layer, module) for every module whose output is a group's activation (the
        modules owning non-bias parameters other than the embedding; the tied readout's)."""
        out: dict[str, tuple[str, Optional[int], nn.Module]] = {}
        for name, role in self.roles.items():
            if role.is_bias or role.group == "embedding":
                continue
            prefix, module = _owner(self.model, name)
            if prefix:
                out.setdefault(prefix, (role.group, role.layer, module))
        return list(out.values())

    def describe(self) -> dict[str, Any]:
        """The resolved settings in the format of ``cpt describe --json``."""
        def scale(s: Scale) -> dict[str, int]:
            return {k: getattr(s, k) for k in (*AXES, "seq_len")}

        out: dict[str, Any] = {
            "parameterisation": self.spec.table.name, "alpha": self.spec.table.alpha,
            "scale": scale(self.spec.scale), "base_scale": scale(self.spec.base),
            "groups": [s.as_dict() for s in self.settings]}
        if self.tied:
            out["tied_readout"] = {"embedding": self.tied[0], "unembedding": self.tied[1],
                                   "multiplier": self.readout_multiplier()}
        return out

    def save(self, path: Union[str, Path]) -> Path:
        """Write the parameterisation (not the model) as JSON; `load_parameterisation` applies
        it to a model again."""
        return self.spec.save(path)

    def __repr__(self) -> str:
        return (f"Parameterised({self.spec.table.name}, width {self.width}, depth "
                f"{self.depth}, {len(self.tagged)} tensors, {len(self.handles)} hooks)")


def parameterise(model: nn.Module, table: Union[str, RuleTable], *, base: ScaleLike,
                 scale: ScaleLike, roles: Union[str, Mapping[str, Any], RoleMap],
                 hps: Union[HPs, Mapping[str, Any], None] = None,
                 factors: Union[Factors, Mapping[str, Any], None] = None,
                 width: Optional[int] = None, depth: Optional[int] = None,
                 multipliers: Union[Factors, Mapping[str, Any], None] = None) -> Parameterised:
    """Apply rule table ``table`` (a name, or a `RuleTable` from `cp.scaling.build_table`) to
    ``model`` at ``scale``, with base HPs ``hps`` given at ``base``.

    ``base``/``scale``: mappings with width, depth, batch (sequences per step) and tokens (the
    horizon), optionally seq_len, as ``cpt describe --json`` writes them. ``roles``: a preset
    (``llama``, ``gpt2``, ``cp``) or a map of parameter-name patterns to groups (`cp.roles`).
    ``hps``: the base HPs (`cp.scaling.HPs` or its fields as a mapping). ``factors``: tuned
    per-module factors (`cp.scaling.Factors`, e.g. the search stage's ``best.json``; per-layer
    factors are interpolated to the model's depth); ``multipliers`` is their old name.
    ``width``/``depth``: the model's, when they cannot be read from it (the embedding's last
    dim; the number of block layers). Raises `cp.roles.RoleError` when a parameter has no
    role or two, and `ParameterisationError` when the model's width or depth is not
    ``scale``'s.
    """
    if multipliers is not None:
        if factors is not None:
            raise ParameterisationError("give the per-module factors once: factors= "
                                        "(multipliers= is its old name)")
        factors = multipliers
    if isinstance(table, str):
        table = build_table(table)
    base_scale = as_scale(base, scale, "base")
    spec = Parameterisation(table=table, base=base_scale, scale=as_scale(scale, base, "scale"),
                            roles=RoleMap.of(roles), hps=_hps(hps), factors=_factors(factors),
                            width=width, depth=depth)
    _check_values(spec.hps, spec.factors)
    return spec.apply(model)


def load_parameterisation(path: Union[str, Path], model: nn.Module) -> Parameterised:
    """A parameterisation saved with `Parameterised.save`, applied to ``model``."""
    return Parameterisation.load(path).apply(model)

