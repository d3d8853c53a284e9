"""Memory per GPU of a model's training runs, estimated from its shape and its ``parallel``
settings without torch or a GPU: what ``cpt plan`` prints, and what the spec's check holds
against ``launcher.slurm.gpu_mem_gb`` before anything is submitted.

Per GPU, for P parameters (`cp.config.count_params`), R of them outside the blocks (embedding,
unembedding, final norm), P_b in one block, and N ranks:

- **parameters**: fp32, 4P bytes (ddp, or one rank) or 4P/N (fsdp: the sharded fp32
  parameters are the master weights, also under bf16);
- **gradients**: fp32, 4P or 4P/N (fsdp reduces them in fp32 into fp32 shards);
- **optimiser state**: AdamW's two fp32 moments, 8P or 8P/N;
- **buffers**: copies that live for part of a step. fsdp: the gathered parameters in the
  compute dtype of the root (kept gathered from forward to backward) and two blocks (the one
  computing and the one prefetched) -- all blocks with ``reshard_after_forward: false`` -- and
  the unsharded gradients of the root and one block with their fp32 reduce-scatter input; ddp
  on several ranks: its gradient buckets (another fp32 copy of the gradients); bf16 autocast
  (ddp): its cache of bf16 weight copies, 2P. Every strategy: the loss's transient logits
  gradient, n V (4 + 2 if the compute dtype is bf16) for n tokens in a micro-batch;
- **activations**: the tensors autograd saves for backward at one micro-batch (below), with
  activation checkpointing on or off.

The total is held against ``USABLE_FRACTION`` of the GPU's memory: the CUDA context, NCCL's
buffers and the caching allocator's fragmentation need the rest.

Activations saved for backward, in bytes, for n = micro-batch x seq_len tokens, width d, a
heads, MLP hidden size h, vocabulary V and e bytes per compute element (4 for fp32; 2 under
fsdp's bf16 parameters; 4 under bf16 autocast, whose fp32 norms and cast copies the fp32 count
bounds from above). Derived by listing what each op of `cp.model` saves, and checked tensor by
tensor against `torch.autograd.graph.saved_tensors_hooks` on CPU (tests/test_memory.py):

- each RMSNorm (with a gain): its normalised input in fp32 and one fp32 inverse RMS per
  normalised row (`cp.kernels`' single-node RMSNorm on CPU; torch's fused kernel on a GPU
  keeps the input, no larger, and the same inverse RMS): 4 n d + 4 n for a block norm,
  4 n d + 4 n a for each QK-norm. A LayerNorm (``arch.norm: layernorm``; autocast runs it
  in fp32) keeps its input, a mean and an inverse deviation per row, in the compute dtype:
  n d e + 2 n e for a block norm, n d e + 2 n a e for each QK-norm (CUDA's kernel keeps the
  two statistics in fp32: 4 bytes a row more under bf16 parameters, a 2/d share of the input);
- attention: the normed input (saved once by the q, k and v projections), the rotated q and k,
  v and the attention output (saved by the flash/efficient SDPA kernels, which keep no T x T
  matrix, with their fp32 log-sum-exp, 4 n a); the out projection saves the output's
  head-merged view, no copy (the kernel lays its output out as (B, T, heads, head_dim)):
  5 n d e + 4 n a (plus the two QK-norms). With ``arch.fused_qkv`` v is a view of the one
  projection's output and keeps all of it: when QK-norm or RoPE replace q and k by new
  tensors, the output's q and k parts stay too, 2 n d e more;
- MLP: the normed input, and for SwiGLU the gate and up outputs, silu(gate) and the product
  (4 n h e), for GELU the up output and its GELU (2 n h e);
- so one block saves 2(4 n d + 4 n) + 6 n d e + 4 n a + 4 n h e (SwiGLU) [+ 2(4 n d + 4 n a)
  with QK-norm]; residual adds, RoPE (which keeps only its cos/sin tables), a learned position
  table's sum and the forward multipliers (scalars) save nothing;
- the head: the final norm (4 n d + 4 n), its output (n d e), the fp32 log-softmax of the
  logits (4 n V; plus the fp32 logits and their log-sum-exp, 4 n V + 4 n, with a z-loss), the
  token ids (8 n) and a scalar;
- without activation checkpointing: depth x block + head. With it, each block saves only its
  input (n d e) and recomputes one block at a time in backward: depth x n d e + block + head.

This is the eager CPU kernels' count: fused GPU kernels save no more, so on a GPU the estimate
errs on the safe side. Where PyTorch
would fall back to the math attention kernel (which keeps the T x T scores) it would save more;
with bf16 and head_dim <= 256 the flash kernel runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Optional

from .config import ModelConfig, ParallelConfig, count_params, flops_per_token, rank_shares
from .data import BUNDLED, BYTE_VOCAB
from .schema import Problems

if TYPE_CHECKING:  # the spec composes the sections this reads, so it sits above
    from .spec import Spec

GiB = 2 ** 30
FP32, BF16 = 4, 2
ADAMW_MOMENTS = 2
"""AdamW keeps two fp32 moments per parameter (exp_avg, exp_avg_sq)."""
GATHERED_BLOCKS = 2
"""Blocks whose parameters fsdp holds gathered at once with resharding: the one computing and
the one prefetched."""
USABLE_FRACTION = 0.9
"""Share of a GPU's memory a plan may fill; the CUDA context (about 0.5-1 GB), NCCL's buffers
and the caching allocator's fragmentation need the rest. A judgement, not a measurement."""
Precision = Literal["fp32", "bf16"]


def norm_bytes(rows: int, size: int, norm: str, elem: int) -> int:
    """What one norm with a gain saves for ``rows`` rows of ``size`` with ``elem``-byte
    compute: RMSNorm (`cp.kernels.rms_norm`) its normalised input and one inverse RMS per row,
    in fp32; LayerNorm its input and a mean and an inverse deviation per row, in the compute
    dtype."""
    if norm == "layernorm":
        return elem * rows * size + 2 * elem * rows
    return FP32 * rows * size + FP32 * rows


def block_activation_bytes(cfg: ModelConfig, tokens: int, elem: int) -> int:
    """Bytes one block saves for backward at ``tokens`` tokens with ``elem``-byte compute
    (the module docstring derives each term)."""
    n, d, a, h = tokens, cfg.width, cfg.n_heads, cfg.mlp_hidden
    norms = 2 * norm_bytes(n, d, cfg.arch.norm, elem)
    if cfg.arch.qk_norm:
        norms += 2 * norm_bytes(n * a, cfg.arch.head_dim, cfg.arch.norm, elem)
    attention = 5 * n * d * elem + FP32 * n * a
    if cfg.arch.fused_qkv and (cfg.arch.qk_norm or cfg.arch.positions == "rope"):
        attention += 2 * n * d * elem  # v, a view, keeps the fused output's q and k parts
    mlp_tensors = 4 if cfg.arch.mlp == "swiglu" else 2
    mlp = n * d * elem + mlp_tensors * n * h * elem
    return norms + attention + mlp


def head_activation_bytes(cfg: ModelConfig, tokens: int, elem: int) -> int:
    """Bytes the embedding, final norm, unembedding and loss save for backward."""
    n, d, v = tokens, cfg.width, cfg.vocab_size
    logits = FP32 * n * v + (FP32 * n * v + FP32 * n if cfg.arch.z_loss else 0)
    token_ids = 8 * n  # int64
    return norm_bytes(n, d, cfg.arch.norm, elem) + n * d * elem + logits + token_ids + FP32


def activation_bytes(cfg: ModelConfig, tokens: int, elem: int, checkpointing: bool) -> int:
    """Activations saved for backward at ``tokens`` tokens per micro-batch (the peak, with
    activation checkpointing: every block's input plus one recomputed block)."""
    block = block_activation_bytes(cfg, tokens, elem)
    head = head_activation_bytes(cfg, tokens, elem)
    if checkpointing:
        return cfg.depth * tokens * cfg.width * elem + block + head
    return cfg.depth * block + head


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated bytes per GPU of one training run, by what holds them."""

    params: int
    grads: int
    optimizer: int
    buffers: int
    activations: int
    """At the micro-batch, with activation checkpointing as configured."""
    activations_without_checkpointing: int
    activations_with_checkpointing: int
    micro_batch: int
    """Sequences per forward/backward on the busiest rank."""

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.buffers + self.activations


def estimate(cfg: ModelConfig, parallel: ParallelConfig, ranks: int, batch: int,
             precision: Precision) -> MemoryEstimate:
    """Bytes per GPU of training ``cfg`` on ``ranks`` ranks with ``parallel`` at a global
    batch of ``batch`` sequences (see the module docstring)."""
    p = count_params(cfg)
    root = 2 * cfg.vocab_size * cfg.width + cfg.width
    per_block = (p - root) // max(1, cfg.depth)
    sharded = parallel.strategy == "fsdp" and ranks > 1
    bf16 = precision == "bf16"
    elem = BF16 if bf16 and sharded else FP32  # autocast: bounded by the fp32 count
    shards = ranks if sharded else 1
    rows = max(rank_shares(batch, ranks)) if batch >= ranks else 1
    micro = parallel.micro_batch or rows
    tokens = micro * cfg.seq_len
    gathered_elem = BF16 if bf16 else FP32
    if sharded:
        gathered = p if not parallel.reshard_after_forward else root + GATHERED_BLOCKS * \
            per_block
        buffers = gathered * gathered_elem + (root + per_block) * (gathered_elem + FP32)
    else:
        buffers = (FP32 * p if ranks > 1 else 0) + (BF16 * p if bf16 else 0)
    buffers += tokens * cfg.vocab_size * (FP32 + (BF16 if elem == BF16 else 0))
    without = activation_bytes(cfg, tokens, elem, checkpointing=False)
    with_ = activation_bytes(cfg, tokens, elem, checkpointing=True)
    return MemoryEstimate(
        params=FP32 * p // shards, grads=FP32 * p // shards,
        optimizer=ADAMW_MOMENTS * FP32 * p // shards, buffers=buffers,
        activations=with_ if parallel.activation_checkpointing else without,
        activations_without_checkpointing=without, activations_with_checkpointing=with_,
        micro_batch=micro)


# ---------------------------------------------------------------------------------------------
# A spec's models.


@dataclass(frozen=True)
class MemoryRow:
    """One model (or a sweep's largest point of the base model) as one stage's jobs run it."""

    model: str
    """The model's name, with the axis value for a sweep point (``proxy @ width=2048``)."""
    key: str
    """The spec key of the model (where a problem is reported)."""
    stages: tuple[str, ...]
    config: ModelConfig
    parallel: ParallelConfig
    batch: int
    tokens: int
    ranks: int
    gpu_mem_gb: Optional[float]
    estimate: MemoryEstimate

    @property
    def n_params(self) -> int:
        return count_params(self.config)

    @property
    def flops_per_token(self) -> float:
        return flops_per_token(self.config)

    @property
    def usable_bytes(self) -> Optional[float]:
        return None if self.gpu_mem_gb is None else USABLE_FRACTION * self.gpu_mem_gb * GiB

    @property
    def fits(self) -> Optional[bool]:
        usable = self.usable_bytes
        return None if usable is None else self.estimate.total <= usable


def plan_vocab(spec: Spec) -> tuple[int, bool]:
    """The vocabulary the plan assumes, and whether it is a guess (a token file without
    ``data.vocab_size``: its largest id is only known once the file is read)."""
    if spec.data.vocab_size:
        return spec.data.vocab_size, False
    text = spec.data.corpus in BUNDLED or spec.data.corpus.endswith(".txt")
    return BYTE_VOCAB, not text


def _stages_of(spec: Spec, model: str) -> tuple[str, ...]:
    """The stages whose jobs train ``model``: the base model's sweeps and search, the
    targets' runs (and their own sweep)."""
    stages = ("sweep", "search") if model == spec.base else ()
    return stages + (("target",) if model in spec.target_models() else ())


def memory_plan(spec: Spec) -> list[MemoryRow]:
    """A row per model and per set of stages with the same resources; for the base model also
    its largest sweep point along each axis that changes memory (they run with its
    ``parallel`` settings)."""
    vocab, _ = plan_vocab(spec)
    rows = []
    for name, entry in spec.models.items():
        scales = [(name, entry.scale)]
        if name == spec.base:
            for axis, values in _sweep_axes(spec).items():
                top = max(values)
                if axis != "tokens" and top > getattr(entry, axis):
                    scales.append((f"{name} @ {axis}={top}",
                                   dataclasses.replace(entry.scale, **{axis: top})))
        by_resources: dict[tuple[int, Optional[float]], list[str]] = {}
        for stage in _stages_of(spec, name) or ("-",):
            res = (spec.launcher.ranks(stage), spec.launcher.gpu_mem_gb(stage))
            by_resources.setdefault(res, []).append(stage)
        for (ranks, gpu_mem), stages in by_resources.items():
            for label, scale in scales:
                if label != name and "sweep" not in stages:
                    continue  # a sweep point runs in the sweep stage's jobs only
                cfg = ModelConfig(width=scale.width, depth=scale.depth, seq_len=scale.seq_len,
                                  vocab_size=vocab, arch=spec.arch)
                est = estimate(cfg, entry.parallel, ranks, scale.batch, spec.train.precision)
                rows.append(MemoryRow(
                    model=label, key=f"models.{name}",
                    stages=tuple(stages) if label == name else ("sweep",), config=cfg,
                    parallel=entry.parallel, batch=scale.batch, tokens=scale.tokens,
                    ranks=ranks, gpu_mem_gb=gpu_mem, estimate=est))
    return rows


def gb(n: float) -> str:
    """Bytes as GB (2^30 bytes) with the digits a plan needs."""
    g = n / GiB
    return f"{g:.1f}" if g >= 0.1 else f"{g:.2g}"


def _sweep_axes(spec: Spec) -> dict[str, list[int]]:
    """Every value each transfer axis takes in the sweeps (main grid and extra blocks)."""
    axes: dict[str, list[int]] = {}
    for block_axes in [spec.sweeps.axes, *(b.axes for b in spec.sweeps.extra)]:
        for axis, values in block_axes.items():
            axes.setdefault(axis, []).extend(values)
    return axes


def _check_split(spec: Spec, problems: Problems) -> None:
    """Every batch a model's runs train splits over the ranks of their jobs, in micro-batches
    that divide each rank's share (the base model's batch-axis sweep points included)."""
    for name, entry in spec.models.items():
        for stage in _stages_of(spec, name):
            ranks = spec.launcher.ranks(stage)
            batches = {entry.batch}
            if stage == "sweep":
                batches |= set(_sweep_axes(spec).get("batch", []))
            where = f"{name}'s runs in the {stage} stage's jobs"
            for batch in sorted(batches):
                if batch < ranks:
                    problems(f"models.{name}.batch", f"a batch of {batch} sequences cannot be "
                             f"split over the {ranks} ranks of {where}", f"a batch >= {ranks}, "
                             "or fewer tasks (launcher.slurm.tasks_per_node x nodes)")
                    return
                shares = sorted(set(rank_shares(batch, ranks)))
                mb = entry.parallel.micro_batch
                if mb and any(s % mb for s in shares):
                    problems(f"models.{name}.parallel.micro_batch",
                             f"{entry.parallel.share_problem(shares[0])} in {where} (a batch "
                             f"of {batch} over {ranks} rank(s): {' or '.join(map(str, shares))}"
                             " each)", "a divisor of every rank's share, or 0")
                    return


def check_memory(spec: Spec, problems: Problems) -> None:
    """Each model's batches split over the ranks of the jobs that train it (`_check_split`),
    and its estimated memory per GPU fits the GPUs the launcher names
    (``launcher.slurm.gpu_mem_gb``)."""
    before = len(problems.items)
    _check_split(spec, problems)
    if len(problems.items) > before:
        return
    for row in memory_plan(spec):
        if row.fits is False:
            e = row.estimate
            ckpt = "on" if row.parallel.activation_checkpointing else "off"
            problems(row.key, f"{row.model} needs ~{gb(e.total)} GB per GPU in the "
                     f"{'/'.join(row.stages)} stage's jobs ({row.ranks} rank(s), "
                     f"{row.parallel.strategy}): parameters {gb(e.params)}, gradients "
                     f"{gb(e.grads)}, AdamW state {gb(e.optimizer)}, buffers {gb(e.buffers)}, "
                     f"activations {gb(e.activations)} at a micro-batch of {e.micro_batch} "
                     f"(activation checkpointing {ckpt}); the GPUs have {row.gpu_mem_gb:g} GB "
                     f"(launcher.slurm.gpu_mem_gb), of which {USABLE_FRACTION:.0%} = "
                     f"{gb(row.usable_bytes or 0)} GB is usable",
                     "parallel.strategy: fsdp, more ranks (launcher.stages.<stage>.nodes), a "
                     "smaller parallel.micro_batch, or parallel.activation_checkpointing: true")
