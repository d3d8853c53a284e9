"""A modern GPT whose every parameter knows its (group, layer) in the rule table.

Pre-norm RMSNorm blocks, per-head QK-norm, RoPE, untied embeddings, SwiGLU or GELU MLP, optional
z-loss; or, through `cp.config.ArchConfig`, GPT-2's LayerNorm (without biases), learned
positions, fused q/k/v projection and GELU MLP. Width grows with a fixed head dimension.
RMSNorm, RoPE and the linear layers with a multiplier are written for a fast CPU step
(`cp.kernels`); LayerNorm is torch's own kernel. The parameterisation enters only through the
resolved `GroupSettings`: each module draws its init from ``init_std`` and multiplies its
output by ``multiplier`` (a linear layer in place, `cp.kernels.scaled_linear`). The
residual-branch scaling m_L^-alpha is the multiplier of the branch's output projection
(``attn_out``, ``mlp_down``), so no depth factor is hidden in this file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import ArchConfig, ModelConfig
from .kernels import apply_rope, rms_norm, rope_full_tables, rope_tables, scaled_linear
from .roles import CP_BLOCK_PARAMS, CP_TOP_PARAMS
from .scaling import GroupSettings


class Linear(nn.Module):
    """y = multiplier * x W^T, W ~ N(0, init_std^2) (`cp.kernels.scaled_linear`)."""

    def __init__(self, fan_in: int, fan_out: int, s: GroupSettings):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(fan_out, fan_in))
        self.init_std = s.init_std
        self.multiplier = float(s.multiplier)

    def reset_parameters(self) -> None:
        assert self.init_std is not None  # only gains (RMSNorm) have none
        nn.init.normal_(self.weight, std=self.init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scaled_linear(x, self.weight, self.multiplier)


class Norm(nn.Module):
    """RMSNorm, or LayerNorm without a bias, with a gain (initialised to 1) times a forward
    multiplier."""

    def __init__(self, dim: int, s: GroupSettings, arch: ArchConfig):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(dim))
        self.multiplier = float(s.multiplier)
        self.eps = arch.norm_eps
        self.layer_norm = arch.norm == "layernorm"

    def reset_parameters(self) -> None:
        nn.init.ones_(self.gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gain if self.multiplier == 1.0 else self.gain * self.multiplier
        if self.layer_norm:  # autocast runs it in fp32
            return F.layer_norm(x, (x.shape[-1],), g, None, self.eps)
        # Under bf16 autocast the activations are bf16: a gain of the same dtype keeps the
        # fused kernel (it accumulates in fp32 regardless).
        return rms_norm(x, g.to(x.dtype), self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, s: Mapping):
        super().__init__()
        d, hd = cfg.width, cfg.arch.head_dim
        self.n_heads, self.head_dim = cfg.n_heads, hd
        self.fused_qkv = cfg.arch.fused_qkv
        if self.fused_qkv:
            self.qkv = Linear(d, 3 * d, s["attn_q", layer])
        else:
            self.q = Linear(d, d, s["attn_q", layer])
            self.k = Linear(d, d, s["attn_k", layer])
            self.v = Linear(d, d, s["attn_v", layer])
        self.out = Linear(d, d, s["attn_out", layer])
        self.qk_norm = cfg.arch.qk_norm
        if self.qk_norm:
            self.q_norm = Norm(hd, s["qk_norm_q", layer], cfg.arch)
            self.k_norm = Norm(hd, s["qk_norm_k", layer], cfg.arch)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
                ) -> torch.Tensor:
        B, T, _ = x.shape
        shape = (B, T, self.n_heads, self.head_dim)
        if self.fused_qkv:
            q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).unbind(2)
        else:
            q, k, v = self.q(x).view(shape), self.k(x).view(shape), self.v(x).view(shape)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, s: Mapping):
        super().__init__()
        d, h = cfg.width, cfg.mlp_hidden
        self.swiglu = cfg.arch.mlp == "swiglu"
        self.up = Linear(d, h, s["mlp_up", layer])
        if self.swiglu:
            self.gate = Linear(d, h, s["mlp_gate", layer])
        self.down = Linear(h, d, s["mlp_down", layer])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, s: Mapping):
        super().__init__()
        self.attn_norm = Norm(cfg.width, s["attn_norm", layer], cfg.arch)
        self.attn = Attention(cfg, layer, s)
        self.mlp_norm = Norm(cfg.width, s["mlp_norm", layer], cfg.arch)
        self.mlp = MLP(cfg, layer, s)

    def forward(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
                ) -> torch.Tensor:
        h = h + self.attn(self.attn_norm(h), rope)
        return h + self.mlp(self.mlp_norm(h))


def logits_of(output: Any) -> torch.Tensor:
    """The logits a model's forward returned: the tensor itself, or the ``.logits`` of an
    output object (as Hugging Face models return)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise TypeError(f"the model's forward returned {type(output).__name__}; cp needs the "
                    "logits: a (batch, seq_len, vocab) tensor, or an object with .logits")


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, z_loss: float = 0.0
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to optimise, cross-entropy) of next-token logits: the cross-entropy in fp32, plus
    ``z_loss`` times the mean squared log-partition function when it is not 0."""
    logits = logits.float()
    ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
    if not z_loss:
        return ce, ce
    z = torch.logsumexp(logits, dim=-1)
    return ce + z_loss * (z * z).mean(), ce


class GPT(nn.Module):
    """Decoder-only transformer built from resolved per-(group, layer) settings."""

    rope_cos: torch.Tensor  # buffers, registered in __init__ (positions: rope)
    rope_sin: torch.Tensor

    def __init__(self, cfg: ModelConfig, settings: Iterable[GroupSettings]):
        super().__init__()
        if cfg.width % cfg.arch.head_dim:
            raise ValueError(f"width {cfg.width} is not a multiple of head_dim "
                             f"{cfg.arch.head_dim}")
        self.cfg = cfg
        s = {(x.group, x.layer): x for x in settings}
        missing = [(g, None) for g in ("embedding", "final_norm", "unembedding")
                   if (g, None) not in s]
        if missing:
            raise ValueError(f"settings lack {missing}")
        emb = s["embedding", None]
        self.embedding = nn.Parameter(torch.empty(cfg.vocab_size, cfg.width))
        self.embedding_std, self.embedding_multiplier = emb.init_std, float(emb.multiplier)
        self.rope = cfg.arch.positions == "rope"
        if self.rope:
            cos, sin = rope_full_tables(*rope_tables(cfg.seq_len, cfg.arch.head_dim,
                                                     cfg.arch.rope_base), cfg.n_heads)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        else:  # an input weight like the token embedding: the embedding group's settings
            self.pos_embedding = nn.Parameter(torch.empty(cfg.seq_len, cfg.width))
        self.blocks = nn.ModuleList(Block(cfg, i, s) for i in range(cfg.depth))
        self.final_norm = Norm(cfg.width, s["final_norm", None], cfg.arch)
        self.unembedding = Linear(cfg.width, cfg.vocab_size, s["unembedding", None])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        assert self.embedding_std is not None  # the embedding is not a gain
        nn.init.normal_(self.embedding, std=self.embedding_std)
        if not self.rope:
            nn.init.normal_(self.pos_embedding, std=self.embedding_std)
        for m in self.modules():
            reset = getattr(m, "reset_parameters", None)
            if m is not self and reset is not None:
                reset()

    def tagged_parameters(self) -> Iterator[tuple[str, int | None, str, nn.Parameter]]:
        """(group, layer, name, parameter) for every parameter."""
        for name, p in self.named_parameters():
            if name.startswith("blocks."):
                _, layer, rest = name.split(".", 2)
                yield CP_BLOCK_PARAMS[rest], int(layer), name, p
            else:
                yield CP_TOP_PARAMS[name], None, name, p

    def tagged_modules(self) -> Iterator[tuple[str, int | None, nn.Module]]:
        """(group, layer, module) for every module that owns a group's parameter; the module's
        output is that group's activation (the embedding is a bare parameter: not listed)."""
        for group, layer, name, _ in self.tagged_parameters():
            if group != "embedding":
                yield group, layer, self.get_submodule(name.rsplit(".", 1)[0])

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits, or (loss to optimise, cross-entropy) when targets are given."""
        T = idx.shape[1]
        h = F.embedding(idx, self.embedding)
        rope = None
        if self.rope:
            rope = self.rope_cos[:T], self.rope_sin[:T]
        else:  # in place: the lookup's backward needs idx only, the sum's none
            h = h.add_(self.pos_embedding[:T])
        if self.embedding_multiplier != 1.0:
            h = h.mul_(self.embedding_multiplier)  # in place: the same
        for block in self.blocks:
            h = block(h, rope)
        logits = self.unembedding(self.final_norm(h))
        if targets is None:
            return logits
        return lm_loss(logits, targets, self.cfg.arch.z_loss)
