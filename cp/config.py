"""Typed configs of a training run, and its result. Torch-free: planning and describing runs
(CLI, Snakemake rules, SLURM submission) imports this without paying for torch.

A `RunConfig` is everything that determines a run's numbers; its id is a hash of the run as
resolved (model shape, every group's settings, schedule, data, seed), so two specs that resolve
to the same run share it and a finished run is never trained again. `RuntimeConfig` (device,
compile, checkpoint cadence) changes how a run executes, not what it computes, and is not hashed;
nor is `ParallelConfig` (how a run spreads over the ranks of its job: DDP or FSDP2, micro-batches,
activation checkpointing), which each model of a spec carries (`ModelSpec`).

`RunSettings` holds the fields a study's spec and each of its runs share (architecture,
parameterisation, HPs, factors, schedule, data, training, seed, runtime): `cp.spec.Spec` and
`RunConfig` both extend it, so each of those fields is declared and documented once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal, Optional, Union, get_args

from .data import DataConfig
from .scaling import (
    ALPHA_TABLES,
    RULE_AXES,
    TABLES,
    Factors,
    Flag,
    GroupSettings,
    HPs,
    RuleTable,
    Scale,
    build_table,
    check_group,
    check_kind,
    eval_exponent,
)
from .scaling.memo import resolve_once
from .schedule import ScheduleConfig
from .schema import Problems, suggest


@dataclass
class ArchConfig:
    """Architecture choices that stay fixed across the scales of a study: our GPT's, or a
    model of your own (``factory`` and ``roles``)."""

    head_dim: int = 32
    """Dimension of one attention head; the number of heads is width / head_dim."""
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    """MLP type: SwiGLU (gate, up, down) or GELU (up, down)."""
    mlp_ratio: float = 3.0
    """MLP hidden size as a multiple of the width."""
    qk_norm: bool = True
    """Per-head norm (of the ``norm`` kind) on queries and keys (one head_dim-sized gain
    shared by all heads)."""
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    """The blocks' norms, the final norm and the QK-norms: RMSNorm, or LayerNorm without a
    bias (GPT-2's, less its biases). Both have one gain per feature, in the same groups of the
    rule table."""
    norm_eps: float = 1e-6
    """Epsilon inside the norms."""
    fused_qkv: bool = False
    """One (3 width, width) projection for queries, keys and values (GPT-2's ``c_attn``)
    instead of three: one matmul instead of three each way, but one parameter, which takes
    ``attn_q``'s settings. The model then has no ``attn_k`` or ``attn_v`` group, so no
    per-module factor or search can tell q, k and v apart (every table gives the three the
    same rule)."""
    positions: Literal["rope", "learned"] = "rope"
    """How the model knows where a token is: RoPE on the queries and keys, or a learned
    (seq_len, width) table added to the token embedding (GPT-2's). The table is an input
    weight like the token embedding and takes the ``embedding`` group's settings, as the
    ``gpt2`` preset's position embedding does."""
    rope_base: float = 10000.0
    """RoPE base frequency (``positions: rope``)."""
    z_loss: float = 0.0
    """Coefficient of the z-loss (mean squared log-partition function); 0 turns it off.
    Applies to a factory's model too: the loss is computed from its logits."""
    factory: Optional[str] = None
    """Train your own model instead of our GPT: ``"package.module:function"``, called as
    function(width, depth, vocab_size, seq_len) and returning a ``torch.nn.Module`` whose
    forward(idx) returns the logits (a tensor, or an object with ``.logits`` as Hugging Face
    models return); cp computes the cross-entropy (and the z-loss) from them. Every stage
    trains it, parameterised through ``roles`` (`cp.parameterise`): cp re-initialises it
    from the table's init stds and adds forward hooks for the multipliers. The module is
    imported from the Python path, else from the working directory. Importing it runs your
    code, as Snakemake runs a Snakefile's: the spec check (``cpt spec check``, and each
    stage that builds models, before it builds one) imports it and builds every model of
    the spec on torch's meta device to match the parameters to their roles. The other ``arch`` keys
    except ``z_loss`` describe our GPT and do not apply."""
    roles: Any = None
    """With ``factory``: which group of the rule table (and which layer) each parameter of
    the model is. A preset -- ``llama`` (Hugging Face LlamaForCausalLM; Qwen2 and Mistral
    names too), ``gpt2`` (GPT2LMHeadModel, tied embeddings), ``cp`` (our GPT) -- or a map of
    regular expressions over parameter names to a group (block groups capture the layer
    index: ``'model\\.layers\\.(\\d+)\\.mlp\\.down_proj\\.weight': mlp_down``) or to
    ``{group: ..., init: normal | ones | zeros}`` (zeros: a bias). A parameter matched by no
    pattern or by two is an error."""

    def check(self, at: str, problems: Problems) -> None:
        if self.positions == "rope":
            problems.range(f"{at}.head_dim", self.head_dim, self.head_dim > 0 and
                           self.head_dim % 2 == 0, "a positive even integer (RoPE rotates pairs)")
        else:
            problems.positive(f"{at}.head_dim", self.head_dim)
        problems.positive(f"{at}.mlp_ratio", self.mlp_ratio)
        problems.at_least(f"{at}.z_loss", self.z_loss, 0)
        problems.positive(f"{at}.norm_eps", self.norm_eps)
        problems.positive(f"{at}.rope_base", self.rope_base)
        self.check_factory(at, problems)

    def check_factory(self, at: str, problems: Problems) -> None:
        """The factory's form and module, and the roles (without importing anything)."""
        from .roles import PRESETS, check_roles

        if self.factory is None:
            if self.roles is not None:
                problems(f"{at}.roles", "roles without a factory: our GPT has its own",
                         "leave roles out, or set arch.factory")
            return
        problem = factory_problem(self.factory)
        if problem:
            problems(f"{at}.factory", problem, '"package.module:function", importable from '
                     "the Python path or the working directory")
        if self.roles is None:
            problems(f"{at}.roles", "a factory's model needs a role map",
                     f"a preset ({', '.join(PRESETS)}) or a map of name patterns to groups")
            return
        problem = check_roles(self.roles)
        if problem:
            problems(f"{at}.roles", problem,
                     f"a preset ({', '.join(PRESETS)}) or a map of name patterns to groups")

    def fingerprint(self) -> dict[str, Any]:
        """The fields hashed into run ids; the keys added after run ids existed
        (`_ADDED_ARCH_KEYS`) only when not at their defaults (so runs keep the ids they had
        before these keys existed)."""
        out = _flat(self)
        for k, before in _ADDED_ARCH_KEYS.items():
            if out[k] == before:
                del out[k]
        return out

    def check_width(self, key: str, width: int, problems: Problems) -> None:
        """A width this architecture can have: a multiple of the head dimension (for our GPT;
        a factory's model is checked by building it)."""
        if self.factory is None and self.head_dim > 0 and width % self.head_dim:
            problems(key, f"{width} is not a multiple of arch.head_dim ({self.head_dim})",
                     f"a positive multiple of {self.head_dim}")


#: Arch keys added after run ids existed, with the value every earlier run had.
_ADDED_ARCH_KEYS: dict[str, Any] = {"factory": None, "roles": None, "norm": "rmsnorm",
                                    "fused_qkv": False, "positions": "rope"}


@dataclass
class ModelConfig:
    """Everything needed to build one model."""

    width: int
    depth: int
    seq_len: int
    vocab_size: int = 256
    arch: ArchConfig = field(default_factory=ArchConfig)

    @property
    def n_heads(self) -> int:
        return self.width // self.arch.head_dim

    @property
    def mlp_hidden(self) -> int:
        return round(self.arch.mlp_ratio * self.width)


def factory_problem(factory: str) -> Optional[str]:
    """None when ``factory`` is ``package.module:function`` with a module Python can find
    (looked up, not imported), else what is wrong."""
    import importlib.util
    import os
    import sys

    module, _, function = factory.partition(":")
    if not (module and function.isidentifier() and
            all(part.isidentifier() for part in module.split("."))):
        return f"{factory!r} is not of the form package.module:function"
    added = os.getcwd() not in sys.path
    if added:
        sys.path.append(os.getcwd())
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError) as e:
        return f"module {module!r} cannot be found: {e}"
    finally:
        if added:
            sys.path.remove(os.getcwd())
    return None if found else f"no module {module!r} on the Python path or in the working " \
        "directory"


def model_groups(arch: ArchConfig) -> list[str]:
    """The parameter groups a model with this architecture has (a factory's model: the groups
    its role map names)."""
    from .scaling import GROUPS

    if arch.factory is not None and arch.roles is not None:
        from .roles import RoleMap

        return RoleMap.of(arch.roles).groups()
    skip = set()
    if arch.mlp != "swiglu":
        skip.add("mlp_gate")
    if not arch.qk_norm:
        skip |= {"qk_norm_q", "qk_norm_k"}
    if arch.fused_qkv:
        skip |= {"attn_k", "attn_v"}
    return [g for g in GROUPS if g not in skip]


def count_params(cfg: ModelConfig) -> int:
    """Parameter count without building the model."""
    d, h, v = cfg.width, cfg.mlp_hidden, cfg.vocab_size
    n_mlp_in = 2 if cfg.arch.mlp == "swiglu" else 1
    block = 4 * d * d + (n_mlp_in + 1) * d * h + 2 * d
    block += 2 * cfg.arch.head_dim if cfg.arch.qk_norm else 0
    return 2 * v * d + cfg.depth * block + d + position_params(cfg)


def position_params(cfg: ModelConfig) -> int:
    """The learned position table's size (none with RoPE)."""
    return cfg.seq_len * cfg.width if cfg.arch.positions == "learned" else 0


#: Parameters above which `cpt spec check` and `cpt plan` warn, by the kind of device a run uses
#: (``runtime.device``; ``auto`` and ``cuda`` count as a GPU): about what trains in hours there.
#: ``runtime.warn_params`` replaces it for a study.
WARN_PARAMS = {"cpu": 20_000_000, "gpu": 20_000_000_000}
#: A model with more parameters than this is refused: no study of this tool trains one (its fp32
#: weights, gradients and Adam moments alone would need 16 bytes a parameter, 160 TB).
MAX_PARAMS = 10**13


def device_kind(device: str) -> str:
    """``cpu`` or ``gpu``: the key of `WARN_PARAMS` for a ``runtime.device``."""
    return "cpu" if device == "cpu" else "gpu"


def flops_per_token(cfg: ModelConfig) -> float:
    """Training FLOPs per token: 6 per matmul parameter plus attention (as nanoGPT counts)."""
    # Embedding lookups (tokens and learned positions) are not matmuls.
    n = count_params(cfg) - cfg.vocab_size * cfg.width - position_params(cfg)
    return 6 * n + 12 * cfg.depth * cfg.width * cfg.seq_len


Exponent = Union[float, str]


def _flat(obj: Any) -> dict[str, Any]:
    """Fields of a flat dataclass (cheaper than dataclasses.asdict, which deep-copies)."""
    names = _FIELD_NAMES.get(type(obj))
    if names is None:
        names = _FIELD_NAMES[type(obj)] = tuple(f.name for f in fields(obj))
    return {n: getattr(obj, n) for n in names}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


@functools.lru_cache(maxsize=256)
def _build_table_cached(key: str) -> RuleTable:
    # Tables are immutable; planning builds the same few for thousands of runs.
    name, alpha, base, rules = json.loads(key)
    return build_table(name, alpha=alpha, base=base, rules=rules)


@dataclass
class ParamConfig:
    """Which parameterisation (rule table) scales the HPs, and any exponents overridden."""

    name: str = "completed_p"
    """A built-in table (sp, mup, depth_mup, completep, completed_p) or a new name together
    with ``base``."""
    alpha: Optional[float] = None
    """Residual-branch exponent (in [0.5, 1]); default: the table's own (1 for completep and
    completed_p, 1/2 for depth_mup)."""
    base: Optional[str] = None
    """Built-in table to start from when ``name`` is a new table."""
    rules: dict[str, dict[str, dict[str, Exponent]]] = field(default_factory=dict)
    """Exponent overrides: group or group set -> HP kind -> axis (width, depth, batch, tokens,
    rho) -> exponent (a number or an expression in alpha such as "alpha - 1"). ``horizon``,
    the old name of ``tokens``, is still read, with a note."""

    def build(self) -> RuleTable:
        key = json.dumps([self.name, self.alpha, self.base, self.rules], sort_keys=True,
                         default=str)
        return _build_table_cached(key)

    def check(self, at: str, problems: Problems) -> None:
        """Table names, alpha and exponent overrides."""
        start = self.base or self.name
        if self.base is not None:
            problems.choice(f"{at}.base", self.base, TABLES, "parameterisation")
        elif self.name not in TABLES:
            problems(f"{at}.name", f"unknown parameterisation {self.name!r}" +
                     suggest(self.name, TABLES) + " (a new table needs a base)",
                     ", ".join(TABLES))
        if self.alpha is not None:
            problems.range(f"{at}.alpha", self.alpha, 0.5 <= self.alpha <= 1.0,
                           "0.5 <= alpha <= 1")
            if start in TABLES and start not in ALPHA_TABLES:
                problems(f"{at}.alpha", f"table {start!r} has no residual scaling, so alpha "
                         "has no effect", ", ".join(sorted(ALPHA_TABLES)))
        for group, kinds in self.rules.items():
            gkey = f"{at}.rules.{group}"
            if not check_group(problems, gkey, group):
                continue
            for kind, axes in kinds.items():
                rkey = f"{gkey}.{kind}"
                if not check_kind(problems, rkey, kind):
                    continue
                for axis, expr in axes.items():
                    if not problems.choice(f"{rkey}.{axis}", axis, RULE_AXES, "axis"):
                        continue
                    try:  # at the alpha the table will use, not just any
                        eval_exponent(expr, self._alpha(start))
                    except ValueError as e:
                        problems(f"{rkey}.{axis}", str(e), "a number or an expression in alpha")

    def _alpha(self, start: str) -> float:
        """The residual exponent the table built from ``start`` uses."""
        if self.alpha is not None:
            return self.alpha
        if start in TABLES:
            return build_table(start).alpha
        return 1.0


@dataclass
class TrainConfig:
    """How a run trains and is measured (these change its numbers, so they are hashed)."""

    evals: int = 20
    """Number of validation evaluations, evenly spaced; the last one is at the final step."""
    eval_sequences: int = 64
    """Validation sequences per evaluation (the same ones for every run of a study)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """fp32, or bf16 autocast (for GPUs; parameters and Adam state stay fp32)."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    divergence_margin: float = 3.0
    """A run has diverged when its smoothed train loss rises this many nats above its best (or
    a loss is NaN/inf); it then stops and reports diverged=True."""
    log_every: int = 10
    """Steps between reads of the train loss (each read syncs a GPU)."""

    def check(self, at: str, problems: Problems) -> None:
        for k in ("evals", "eval_sequences", "log_every"):
            problems.at_least(f"{at}.{k}", getattr(self, k), 1, "an integer >= 1")
        problems.positive(f"{at}.divergence_margin", self.divergence_margin)
        problems.at_least(f"{at}.grad_clip", self.grad_clip, 0)


@dataclass
class RuntimeConfig:
    """How a run executes; does not change its numbers (not part of its id)."""

    device: str = "auto"
    """``auto`` (cuda when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    compile: bool = False
    """torch.compile the model (worth it on GPUs only)."""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default."""
    checkpoint_every: int = 0
    """Save a checkpoint every this many steps (0: time-based only)."""
    checkpoint_seconds: float = 600.0
    """Save a checkpoint when this much wall time passed since the last one (0: never)."""
    keep_checkpoint: bool = False
    """Keep the final checkpoint (the trained weights) after a run completes."""
    warn_params: Optional[int] = None
    """`cpt spec check` and `cpt plan` warn about any model with more parameters than this.
    Unset: 20M when ``device`` is ``cpu``, 20B otherwise (what trains in hours there)."""

    def check(self, at: str, problems: Problems) -> None:
        for k in ("threads", "checkpoint_every", "checkpoint_seconds"):
            problems.at_least(f"{at}.{k}", getattr(self, k), 0)
        if self.warn_params is not None:
            problems.at_least(f"{at}.warn_params", self.warn_params, 1, "a positive integer")

    def params_warning_at(self) -> int:
        """The parameter count above which a model is worth a warning on this device."""
        return self.warn_params or WARN_PARAMS[device_kind(self.device)]


@dataclass(frozen=True)
class ParallelConfig:
    """How a model's runs spread over the ranks of their job (one rank per SLURM task):
    execution only, not part of a run's id. Every strategy trains the spec's global batch each
    step (rank r of W takes rows r, r+W, ... and accumulates their gradients over its
    micro-batches), so the transfer rules, which scale with the batch, see the same run on one
    GPU, 8 DDP ranks or 64 FSDP shards (up to the order of float sums). Mixed precision follows
    ``train.precision``, which is part of the id because it changes the numbers: with bf16,
    fsdp gathers parameters in bf16 and computes in bf16, reduces gradients in fp32 and keeps
    fp32 sharded parameters (the master weights) and fp32 AdamW state
    (``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``); ddp runs bf16 autocast
    over fp32 parameters."""

    strategy: Literal["ddp", "fsdp"] = "ddp"
    """``ddp``: every rank holds the whole model, its gradients and its AdamW state
    (DistributedDataParallel); ``fsdp``: all three sharded over the ranks (FSDP2
    ``fully_shard`` on each block, then on the root), checkpoints written by every rank with
    torch.distributed.checkpoint, which resume on any number of ranks (resharded). One rank
    runs unsharded either way. A run stopped under one strategy resumes under the same one."""
    reshard_after_forward: bool = True
    """fsdp: free a block's gathered parameters after its forward and gather them again for
    its backward (less memory, one more all-gather per block); false keeps them gathered
    from forward to backward."""
    activation_checkpointing: bool = False
    """Keep only each block's input in the forward and recompute the block in the backward
    (any strategy): activations shrink to about one block's worth, for about a third more
    compute."""
    micro_batch: int = 0
    """Sequences per forward/backward on each rank: a rank accumulates the gradients of its
    share of the batch (batch / ranks) over micro-batches of this size, which must divide the
    share; 0: the whole share at once."""

    def check(self, at: str, flag: Flag) -> None:
        if not isinstance(self.micro_batch, int) or self.micro_batch < 0:
            flag(f"{at}.micro_batch", f"{self.micro_batch!r} is out of range",
                 "an integer >= 0 (0: a rank's whole share of the batch)")

    def micro_batches(self, rows: int) -> list[int]:
        """The micro-batch sizes of a rank with ``rows`` sequences of the batch; ValueError
        when ``micro_batch`` does not divide them."""
        if not self.micro_batch or self.micro_batch == rows:
            return [rows]
        if rows % self.micro_batch:
            raise ValueError(self.share_problem(rows))
        return [self.micro_batch] * (rows // self.micro_batch)

    def share_problem(self, rows: int) -> str:
        return (f"parallel.micro_batch {self.micro_batch} does not divide a rank's share of "
                f"the batch ({rows} sequences)")


def rank_shares(batch: int, ranks: int) -> list[int]:
    """The rows of the batch each of ``ranks`` data-parallel ranks trains (r, r+W, ...)."""
    return [len(range(r, batch, ranks)) for r in range(ranks)]


@dataclass(frozen=True)
class ModelSpec(Scale):
    """A model of the study: where it sits on the transfer axes (the `Scale` fields, hashed
    into its runs' ids) and how its runs execute (``parallel``, not hashed)."""

    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Data-parallel strategy, micro-batches and activation checkpointing of this model's runs
    (a proxy on one GPU, a target sharded over many)."""

    @property
    def scale(self) -> Scale:
        """The point on the transfer axes alone."""
        return plain_scale(self)

    def check(self, at: str, flag: Flag) -> None:
        super().check(at, flag)
        self.parallel.check(f"{at}.parallel", flag)


def plain_scale(scale: Scale) -> Scale:
    """``scale`` as a plain `Scale` (a `ModelSpec`'s execution settings dropped)."""
    if type(scale) is Scale:
        return scale
    return Scale(**{f.name: getattr(scale, f.name) for f in fields(Scale)})


@dataclass(kw_only=True)
class RunSettings:
    """What a study and each of its runs share: everything but where a run sits on the axes."""

    data: DataConfig = field(default_factory=DataConfig)
    """Training data."""
    arch: ArchConfig = field(default_factory=ArchConfig)
    """Architecture shared by every model of the study."""
    parameterisation: ParamConfig = field(default_factory=ParamConfig)
    """The rule table that transfers HPs from the base to other scales."""
    hps: HPs = field(default_factory=HPs)
    """Base HPs at the base model's scale."""
    factors: Factors = field(default_factory=Factors)
    """Per-module factors (type x depth) on top of the base HPs."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Learning-rate schedule (fractions of the run)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Evaluation, precision, divergence detection."""
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    """Device, compile, checkpoint cadence (not part of run ids)."""
    seed: int = 0
    """Seed of initialisation and data order."""

    RENAMED: ClassVar[dict[str, str]] = {"multipliers": "factors"}

    def check_settings(self, problems: Problems) -> None:
        self.data.check("data", problems)
        self.arch.check("arch", problems)
        self.parameterisation.check("parameterisation", problems)
        self.hps.check("hps", problems)
        self.factors.check("factors", problems)
        self.schedule.check("schedule", problems)
        self.train.check("train", problems)
        self.runtime.check("runtime", problems)


Stream = Literal["choose", "judge"]
#: What a run's result is used for, and so the data stream its batches are drawn from: runs
#: that choose (sweeps that select an optimum, search trials) and runs that judge
#: (re-evaluations, target arms, speedups) never share a batch order, nor (by the spec's
#: check) a seed.
STREAMS: dict[str, int] = {"choose": 0, "judge": 1}


@dataclass(kw_only=True)
class RunConfig(RunSettings):
    """One training run: a model at one scale, with HPs transferred from the base scale."""

    scale: Scale
    """Width, depth, batch, tokens and seq_len of this run."""
    base_scale: Scale
    """The scale at which ``hps`` and ``factors`` are given (the proxy)."""
    stream: Stream = "choose"
    """``choose`` (its result selects something: an optimum, a search's next point) or
    ``judge`` (its result measures something chosen): the stream its batches come from."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """How the run spreads over the ranks of its job (not part of its id)."""

    def __post_init__(self) -> None:
        # A spec's ModelSpec carries execution settings that must not enter the run's id.
        self.scale, self.base_scale = plain_scale(self.scale), plain_scale(self.base_scale)

    def table(self) -> RuleTable:
        return self.parameterisation.build()

    def settings(self) -> list[GroupSettings]:
        """Resolved settings of every (group, layer) of this run's model (resolved once per
        distinct input: `cp.scaling.memo`)."""
        return resolve_once(self.table(), self.base_scale, self.scale, self.hps, self.factors,
                            groups=model_groups(self.arch))

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(width=self.scale.width, depth=self.scale.depth,
                           seq_len=self.scale.seq_len, vocab_size=vocab_size, arch=self.arch)

    def resolved(self, settings: Optional[list[GroupSettings]] = None) -> dict[str, Any]:
        """What determines this run's numbers, fully resolved (hashed into the run id).
        ``settings``: this run's `settings()`, when the caller has them already."""
        settings = self.settings() if settings is None else settings
        return {
            "scale": _flat(self.scale),
            "arch": self.arch.fingerprint(),
            "settings": [s.as_dict() for s in settings],
            "schedule": _flat(self.schedule),
            "data": self.data.fingerprint(),
            "train": _flat(self.train),
            "seed": self.seed,
            "stream": self.stream,
        }

    def describe(self, settings: Optional[list[GroupSettings]] = None) -> dict[str, Any]:
        """The resolved settings in the stable format of ``cpt describe --json``."""
        def scale(s: Scale) -> dict[str, int]:
            return {k: getattr(s, k) for k in ("width", "depth", "batch", "tokens", "seq_len")}

        table = self.table()
        settings = self.settings() if settings is None else settings
        return {"parameterisation": table.name, "alpha": table.alpha,
                "scale": scale(self.scale), "base_scale": scale(self.base_scale),
                "groups": [s.as_dict() for s in settings]}

    def run_id(self, settings: Optional[list[GroupSettings]] = None) -> str:
        """`run_id_of` ``resolved()``, made faster with the same text: each group's settings
        are serialised once per plan (`GroupSettings.json_text`), and the rest as json.dumps
        (sort_keys=True, default separators) writes a dict of str keys."""
        settings = self.settings() if settings is None else settings
        texts = {k: _json(v) for k, v in self.resolved([]).items()}
        texts["settings"] = "[" + ", ".join(s.json_text for s in settings) + "]"
        return _digest("{" + ", ".join(f"{_json(k)}: {texts[k]}" for k in sorted(texts)) + "}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        from omegaconf import OmegaConf

        if "multipliers" in d and "factors" not in d:  # written before the rename
            d = {**{k: v for k, v in d.items() if k != "multipliers"},
                 "factors": d["multipliers"]}
        merged = OmegaConf.merge(OmegaConf.structured(cls), d)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]


_ENCODER = json.JSONEncoder(sort_keys=True, default=repr)  # as json.dumps(obj, **these)


def _json(obj: Any) -> str:
    return _ENCODER.encode(obj)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_id_of(resolved: dict[str, Any]) -> str:
    """The id of a run from its `RunConfig.resolved` form."""
    return _digest(_json(resolved))


class PlannedRun:
    """A run a stage wants: its config and the tags that say why it exists (stage, axis,
    arm...). Its id is computed once. Runs with other tags can share an id; they are trained
    once."""

    def __init__(self, config: RunConfig, tags: Optional[dict[str, Any]] = None):
        self.config = config
        self.tags: dict[str, Any] = dict(tags or {})

    @functools.cached_property
    def run_id(self) -> str:
        return self.config.run_id()

    @property
    def tokens(self) -> int:
        return self.config.scale.steps * self.config.scale.tokens_per_step

    def __repr__(self) -> str:
        return f"PlannedRun({self.run_id}, {self.tags})"


Status = Literal["completed", "diverged", "failed", "stopped"]


@dataclass
class RunResult:
    """What a run produced. A diverged or failed run is a result too."""

    run_id: str
    status: Status
    """completed, diverged (stopped early on NaN/blow-up), failed (crashed), or stopped
    (interrupted on request; resumable from its checkpoint)."""
    diverged: bool
    reason: Optional[str]
    """Why a run diverged or failed."""
    steps: int
    """Steps done."""
    total_steps: int
    tokens: int
    """Training tokens seen."""
    final_val_loss: float
    """Validation loss at the last evaluation (NaN if the run diverged or failed)."""
    eval_curve: list[dict[str, float]] = field(default_factory=list)
    """[{step, tokens, val_loss}] at every evaluation."""
    train_curve: list[list[float]] = field(default_factory=list)
    """[[step, mean train loss over the last log interval]]."""
    tokens_per_s: float = 0.0
    """Training throughput (evaluation and checkpoint time excluded)."""
    wall_s: float = 0.0
    n_params: int = 0
    config_hash: Optional[str] = None
    """Hash of the run's config.json when the result was written (`cp.study.RunFolder`): a
    result beside another config is corrupt."""

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    def best_val_loss(self) -> float:
        losses = [e["val_loss"] for e in self.eval_curve if math.isfinite(e["val_loss"])]
        return min(losses) if losses else math.nan

    def loss_or_inf(self) -> float:
        """The final validation loss, +inf if the run did not complete: a failed or diverged
        run loses every comparison and never enters a fit."""
        if self.status != "completed" or not math.isfinite(self.final_val_loss):
            return math.inf
        return float(self.final_val_loss)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> RunResult:
        """A result from its JSON form; ValueError naming what is missing or of the wrong type
        (unknown keys, from a newer version, are left out)."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, found {type(d).__name__}")
        known = {f.name: f for f in fields(cls)}
        missing = [n for n, f in known.items() if n not in d and f.default is MISSING
                   and f.default_factory is MISSING]
        if missing:
            raise ValueError(f"missing field(s) {', '.join(missing)}")
        result = cls(**{k: v for k, v in d.items() if k in known})
        number = (int, float)
        wrong = [name for name, ok in (
            ("run_id", isinstance(result.run_id, str)),
            ("status", result.status in get_args(Status)),
            ("diverged", isinstance(result.diverged, bool)),
            ("steps", isinstance(result.steps, int)),
            ("total_steps", isinstance(result.total_steps, int)),
            ("tokens", isinstance(result.tokens, int)),
            ("final_val_loss", isinstance(result.final_val_loss, number)),
            ("eval_curve", isinstance(result.eval_curve, list) and all(
                isinstance(e, dict) and isinstance(e.get("val_loss"), number)
                and isinstance(e.get("step"), int) for e in result.eval_curve)),
            ("train_curve", isinstance(result.train_curve, list)),
            ("config_hash", result.config_hash is None or isinstance(result.config_hash, str)),
        ) if not ok]
        if wrong:
            raise ValueError(f"field(s) {', '.join(wrong)} of the wrong type or value")
        return result

    @classmethod
    def failed(cls, run_id: str, reason: str, total_steps: int) -> RunResult:
        """The result of a run that crashed or could not run."""
        return cls(run_id=run_id, status="failed", diverged=False, reason=reason, steps=0,
                   total_steps=total_steps, tokens=0, final_val_loss=math.nan)
