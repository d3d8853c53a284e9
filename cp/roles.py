"""Role maps: which group of the rule table, and which layer, each parameter of a model plays.

A role map is an ordered list of regular expressions over parameter names, each naming a group
of the rule table (`cp.scaling.GROUPS`). A pattern must match the whole name; a block group's
pattern captures the layer index (the group named ``layer``, else the first group), a pattern
of the embedding, the final norm or the unembedding captures none. Every parameter must match
exactly one pattern: a name matched by none or by two is an error that lists the names.

A role also says how its parameter starts: ``normal`` (drawn from N(0, init_std^2) with the
group's resolved init_std; the default for matrices), ``ones`` (the default for norm gains) or
``zeros``. A ``zeros`` role is a bias: it takes the lr, eps, weight decay and betas of the group
it names and does not set the forward multiplier of the module that owns it. The presets map
a bias to the gain group of its block's norm (``attn_norm``, ``mlp_norm``, ``final_norm``):
CompleteP's rule for biases is the rule for norm gains (lr x m_L^(alpha-1), no width factor,
eps x m_N^-1 m_L^-alpha, no weight decay), which is what the tables give those groups.

Presets, by name:

- ``llama``: Hugging Face ``LlamaForCausalLM``; the same names fit ``Qwen2ForCausalLM`` (whose
  q/k/v biases are attention biases) and ``MistralForCausalLM``.
- ``gpt2``: Hugging Face ``GPT2LMHeadModel``. Its attention projects q, k and v with one fused
  matrix (``c_attn``): that tensor takes ``attn_q``'s settings (q, k and v follow the same
  rule in every table; per-module factors of ``attn_k`` and ``attn_v`` do not reach it). The
  position embedding is an embedding. Its readout is tied to the token embedding: see
  `cp.parameterisation` for what applies to a tied tensor.
- ``cp``: our own GPT (`cp.model.GPT`); the names below are the ones its modules have.

Pure Python: a spec's roles are checked without torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Optional

from .scaling import BLOCK_GROUPS, GAIN_GROUPS, GROUPS

Init = Literal["normal", "ones", "zeros"]
INITS: tuple[str, ...] = ("normal", "ones", "zeros")

#: Our GPT's parameter names inside a block (``blocks.<layer>.``) and at the top, by group.
#: `cp.model.GPT.tagged_parameters` reads these tables, and the ``cp`` preset is built from
#: them, so the two cannot drift apart.
CP_BLOCK_PARAMS = {
    "attn_norm.gain": "attn_norm", "attn.q.weight": "attn_q", "attn.k.weight": "attn_k",
    "attn.v.weight": "attn_v", "attn.qkv.weight": "attn_q",  # arch.fused_qkv
    "attn.q_norm.gain": "qk_norm_q", "attn.k_norm.gain": "qk_norm_k",
    "attn.out.weight": "attn_out", "mlp_norm.gain": "mlp_norm", "mlp.up.weight": "mlp_up",
    "mlp.gate.weight": "mlp_gate", "mlp.down.weight": "mlp_down",
}
CP_TOP_PARAMS = {"embedding": "embedding", "pos_embedding": "embedding",
                 "final_norm.gain": "final_norm", "unembedding.weight": "unembedding"}

#: Prefixes that wrappers put in front of parameter names (torch.compile, DDP, FSDP1,
#: activation checkpointing); they are taken off before matching, so a role map written for a
#: model also fits it wrapped.
WRAPPER_PREFIXES = ("_orig_mod.", "module.", "_fsdp_wrapped_module.",
                    "_checkpoint_wrapped_module.")

_LAYER = r"(\d+)"


def _llama() -> dict[str, Any]:
    block = r"model\.layers\." + _LAYER + r"\."
    bias = {"group": "attn_norm", "init": "zeros"}
    return {
        r"model\.embed_tokens\.weight": "embedding",
        block + r"input_layernorm\.weight": "attn_norm",
        block + r"self_attn\.q_proj\.weight": "attn_q",
        block + r"self_attn\.k_proj\.weight": "attn_k",
        block + r"self_attn\.v_proj\.weight": "attn_v",
        block + r"self_attn\.[qkv]_proj\.bias": bias,  # Qwen2
        block + r"self_attn\.o_proj\.weight": "attn_out",
        block + r"post_attention_layernorm\.weight": "mlp_norm",
        block + r"mlp\.gate_proj\.weight": "mlp_gate",
        block + r"mlp\.up_proj\.weight": "mlp_up",
        block + r"mlp\.down_proj\.weight": "mlp_down",
        r"model\.norm\.weight": "final_norm",
        r"lm_head\.weight": "unembedding",
    }


def _gpt2() -> dict[str, Any]:
    block = r"transformer\.h\." + _LAYER + r"\."
    return {
        r"transformer\.wte\.weight": "embedding",
        r"transformer\.wpe\.weight": "embedding",
        block + r"ln_1\.weight": "attn_norm",
        block + r"(?:ln_1|attn\.c_attn|attn\.c_proj)\.bias": {"group": "attn_norm",
                                                              "init": "zeros"},
        block + r"attn\.c_attn\.weight": "attn_q",
        block + r"attn\.c_proj\.weight": "attn_out",
        block + r"ln_2\.weight": "mlp_norm",
        block + r"(?:ln_2|mlp\.c_fc|mlp\.c_proj)\.bias": {"group": "mlp_norm", "init": "zeros"},
        block + r"mlp\.c_fc\.weight": "mlp_up",
        block + r"mlp\.c_proj\.weight": "mlp_down",
        r"transformer\.ln_f\.weight": "final_norm",
        r"transformer\.ln_f\.bias": {"group": "final_norm", "init": "zeros"},
        r"lm_head\.weight": "unembedding",
    }


def _cp() -> dict[str, Any]:
    out: dict[str, Any] = {re.escape(name): group for name, group in CP_TOP_PARAMS.items()}
    for name, group in CP_BLOCK_PARAMS.items():
        out[r"blocks\." + _LAYER + r"\." + re.escape(name)] = group
    return out


PRESETS: dict[str, dict[str, Any]] = {"llama": _llama(), "gpt2": _gpt2(), "cp": _cp()}


class RoleError(ValueError):
    """A role map that is malformed, or that does not fit a model's parameters."""


@dataclass(frozen=True)
class Role:
    """What one parameter is: its group, its layer (None outside blocks) and how it starts."""

    group: str
    layer: Optional[int]
    init: str

    @property
    def is_bias(self) -> bool:
        """A bias takes its group's optimiser settings but sets no forward multiplier."""
        return self.init == "zeros"

    @property
    def label(self) -> str:
        """``mlp_down[3]``, or the group alone outside blocks."""
        return self.group if self.layer is None else f"{self.group}[{self.layer}]"


@dataclass(frozen=True)
class _Entry:
    pattern: str
    group: str
    init: str
    regex: re.Pattern


def strip_wrappers(name: str) -> str:
    """A parameter name without the prefixes wrappers add (``_orig_mod.``, ``module.``...).
    Wrappers whose names start with an underscore also nest inside names (FSDP1 wraps each
    block); DDP's ``module.`` is taken off the front only."""
    for prefix in WRAPPER_PREFIXES:
        if prefix.startswith("_"):
            name = name.replace("." + prefix, ".")
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


class RoleMap:
    """An ordered map of name patterns to roles; `RoleMap.of` reads a preset name or a map."""

    def __init__(self, entries: Mapping[str, Any], name: Optional[str] = None):
        self.name = name
        self.entries: list[_Entry] = []
        problems: list[str] = []
        for pattern, value in entries.items():
            entry, problem = _entry(str(pattern), value)
            if problem:
                problems.append(problem)
            elif entry is not None:
                self.entries.append(entry)
        if problems:
            raise RoleError("; ".join(problems))
        if not self.entries:
            raise RoleError("the role map is empty")

    @classmethod
    def of(cls, roles: str | Mapping[str, Any] | RoleMap) -> RoleMap:
        """A role map from a preset name (``llama``, ``gpt2``, ``cp``) or a mapping of
        patterns to a group name or to ``{group: ..., init: normal | ones | zeros}``."""
        if isinstance(roles, RoleMap):
            return roles
        if isinstance(roles, str):
            if roles not in PRESETS:
                raise RoleError(f"unknown role preset {roles!r}; presets: "
                                f"{', '.join(PRESETS)} (or a map of name patterns to groups)")
            return cls(PRESETS[roles], name=roles)
        if isinstance(roles, Mapping):
            return cls(roles)
        raise RoleError(f"roles must be a preset name ({', '.join(PRESETS)}) or a mapping of "
                        f"name patterns to groups, got {roles!r}")

    def to_dict(self) -> dict[str, Any]:
        """The map as a preset name or its entries (what `RoleMap.of` reads back)."""
        if self.name is not None:
            return {"preset": self.name}
        return {"entries": {e.pattern: {"group": e.group, "init": e.init}
                            for e in self.entries}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RoleMap:
        return cls.of(d["preset"]) if "preset" in d else cls(d["entries"])

    def groups(self) -> list[str]:
        """The groups this map can assign, in the rule table's order."""
        named = {e.group for e in self.entries}
        return [g for g in GROUPS if g in named]

    def match(self, name: str) -> list[Role]:
        """The roles of every pattern that matches ``name`` (wrapper prefixes taken off)."""
        bare = strip_wrappers(name)
        out = []
        for e in self.entries:
            m = e.regex.fullmatch(bare)
            if m is None:
                continue
            layer = None
            if e.group in BLOCK_GROUPS:
                layer = int(m.group("layer") if "layer" in e.regex.groupindex else m.group(1))
            out.append(Role(e.group, layer, e.init))
        return out

    def assign(self, names: Iterable[str]) -> dict[str, Role]:
        """The role of every name; `RoleError` listing the names matched by no pattern and
        those matched by more than one."""
        out: dict[str, Role] = {}
        unmatched: list[str] = []
        double: list[str] = []
        for name in names:
            roles = self.match(name)
            if not roles:
                unmatched.append(name)
            elif len(roles) > 1:
                double.append(f"{name} ({', '.join(r.label for r in roles)})")
            else:
                out[name] = roles[0]
        if unmatched or double:
            what = f"role map {self.name!r}" if self.name else "the role map"
            parts = []
            if unmatched:
                parts.append(f"{len(unmatched)} parameter(s) matched by no role of {what}: "
                             + ", ".join(unmatched))
            if double:
                parts.append(f"{len(double)} parameter(s) matched by two roles: "
                             + ", ".join(double))
            raise RoleError("; ".join(parts))
        return out

    def __repr__(self) -> str:
        return f"RoleMap({self.name!r})" if self.name else f"RoleMap({len(self.entries)} roles)"


def _entry(pattern: str, value: Any) -> tuple[Optional[_Entry], Optional[str]]:
    """One entry of a map, or what is wrong with it."""
    if isinstance(value, str):
        group, init = value, None
    elif isinstance(value, Mapping) and set(value) <= {"group", "init"} and "group" in value:
        group, init = value["group"], value.get("init")
    else:
        return None, (f"role {pattern!r}: {value!r} is neither a group name nor a mapping "
                      "{group: ..., init: normal | ones | zeros}")
    if group not in GROUPS:
        return None, f"role {pattern!r}: unknown group {group!r} (groups: {', '.join(GROUPS)})"
    if init is None:
        init = "ones" if group in GAIN_GROUPS else "normal"
    if init not in INITS:
        return None, f"role {pattern!r}: unknown init {init!r} (allowed: {', '.join(INITS)})"
    if init == "normal" and group in GAIN_GROUPS:
        return None, (f"role {pattern!r}: the gain group {group!r} has no init std; its "
                      "parameters start at ones (or zeros, for a bias)")
    try:
        regex = re.compile(pattern)
    except re.error as e:
        return None, f"role {pattern!r}: not a regular expression ({e})"
    captures = regex.groups
    if group in BLOCK_GROUPS and captures == 0:
        return None, (f"role {pattern!r}: the block group {group!r} needs the layer index "
                      r"captured, e.g. 'layers\.(\d+)\.'")
    if group not in BLOCK_GROUPS and captures:
        return None, (f"role {pattern!r}: {group!r} is outside the blocks and has no layer; "
                      "use (?:...) for groups that capture nothing")
    return _Entry(pattern, group, init, regex), None


def check_roles(roles: Any) -> Optional[str]:
    """None when ``roles`` is a preset name or a valid map, else what is wrong."""
    try:
        RoleMap.of(roles)
    except RoleError as e:
        return str(e)
    return None
