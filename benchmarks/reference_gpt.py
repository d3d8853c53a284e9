"""An independent plain GPT, written from the GPT-2 recipe, as the step-time reference for
`throughput.py`. It imports nothing from ``cp``.

The recipe (GPT-2, as nanoGPT trains it): token and learned position embeddings summed;
pre-norm blocks of LayerNorm -> causal self-attention (one fused qkv projection,
``F.scaled_dot_product_attention``) -> output projection, and LayerNorm -> Linear(d, 4d) ->
GELU -> Linear(4d, d), each added to the residual stream; a final LayerNorm and a linear
head. Options: ``bias`` (LayerNorm and Linear biases, GPT-2 has them; off by default, like
cp's model, which has none), ``tie`` (the head shares the token embedding, as GPT-2 does; off
by default, like cp's model). Init: N(0, 0.02), the residual output projections N(0, 0.02 /
sqrt(2 * depth)). Optimiser: AdamW with one decayed group (matrices) and one undecayed group
(vectors), fused on CUDA; on CPU torch's default there, the per-tensor loop (torch defaults to
foreach on GPUs only), as cp's optimiser runs there too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, bias: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=bias)
        self.proj = nn.Linear(width, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2)
                   for t in self.qkv(x).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    def __init__(self, width: int, bias: bool):
        super().__init__()
        self.fc = nn.Linear(width, 4 * width, bias=bias)
        self.proj = nn.Linear(4 * width, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Layer(nn.Module):
    def __init__(self, width: int, heads: int, bias: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, bias=bias)
        self.attn = SelfAttention(width, heads, bias)
        self.norm2 = nn.LayerNorm(width, bias=bias)
        self.ff = FeedForward(width, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ff(self.norm2(x))


class ReferenceGPT(nn.Module):
    """GPT-2's architecture at any size; ``forward(idx, targets)`` returns the mean
    cross-entropy."""

    def __init__(self, vocab: int, width: int, depth: int, heads: int, seq_len: int,
                 bias: bool = False, tie: bool = False):
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(seq_len, width)
        self.layers = nn.ModuleList(Layer(width, heads, bias) for _ in range(depth))
        self.norm = nn.LayerNorm(width, bias=bias)
        self.head = nn.Linear(width, vocab, bias=False)
        if tie:
            self.head.weight = self.tokens.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                residual_out = name.endswith("attn.proj.weight") or name.endswith("ff.proj.weight")
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * depth) if residual_out else 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.tokens(idx) + self.positions(torch.arange(T, device=idx.device))
        for layer in self.layers:
            x = layer(x)
        logits = self.head(self.norm(x)).float()
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))

    def optimizer(self, lr: float = 3e-4, weight_decay: float = 0.1) -> torch.optim.AdamW:
        params = list(self.parameters())  # a tied head is listed once
        decay = [p for p in params if p.dim() >= 2]
        other = [p for p in params if p.dim() < 2]
        cuda = params[0].device.type == "cuda"
        return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                  {"params": other, "weight_decay": 0.0}],
                                 lr=lr, betas=(0.9, 0.95), fused=cuda)
