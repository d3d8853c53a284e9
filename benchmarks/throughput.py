"""Step time of cp's model + per-group AdamW against a plain nanoGPT-style reference.

Both train the same architecture at the same shape (pre-norm RMSNorm, QK-norm, RoPE, SwiGLU,
untied embeddings) on the same batches in one process. The reference is written the way
nanoGPT writes it: a fused qkv projection, no multipliers, one AdamW with a decay and a
no-decay group. The ratio is what the parameterisation machinery (separate q/k/v for per-module
LRs, forward multipliers, per-(group, layer) param groups) costs.

    python benchmarks/throughput.py [--width 256 --depth 4 --batch 16 --seq-len 128 --steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from cp.config import ArchConfig, RunConfig
from cp.data import DataConfig, TokenData
from cp.model import GPT, apply_rope, rope_tables
from cp.optim import build_optimizer
from cp.scaling import Scale
from cp.schedule import ScheduleConfig


class RefRMSNorm(nn.RMSNorm):
    """nn.RMSNorm with its weight cast to the input's dtype: under bf16 autocast the fp32
    weight would knock it off the fused kernel (cp's RMSNorm does the same)."""

    def forward(self, x):
        return F.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


class RefBlock(nn.Module):
    def __init__(self, d: int, hd: int, hidden: int):
        super().__init__()
        self.n_head, self.hd = d // hd, hd
        self.ln1, self.ln2 = RefRMSNorm(d, eps=1e-6), RefRMSNorm(d, eps=1e-6)
        self.q_norm, self.k_norm = RefRMSNorm(hd, eps=1e-6), RefRMSNorm(hd, eps=1e-6)
        self.c_attn = nn.Linear(d, 3 * d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)
        self.w_gate = nn.Linear(d, hidden, bias=False)
        self.w_up = nn.Linear(d, hidden, bias=False)
        self.w_down = nn.Linear(hidden, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln1(x)).split(C, dim=2)
        q = self.q_norm(q.view(B, T, self.n_head, self.hd)).transpose(1, 2)
        k = self.k_norm(k.view(B, T, self.n_head, self.hd)).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))
        h = self.ln2(x)
        return x + self.w_down(F.silu(self.w_gate(h)) * self.w_up(h))


class RefGPT(nn.Module):
    def __init__(self, vocab: int, d: int, depth: int, hd: int, hidden: int, seq_len: int):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(RefBlock(d, hd, hidden) for _ in range(depth))
        self.ln_f = RefRMSNorm(d, eps=1e-6)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        cos, sin = rope_tables(seq_len, hd, 10000.0)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, targets):
        x = self.wte(idx)
        T = idx.shape[1]
        for b in self.blocks:
            x = b(x, self.cos[:T], self.sin[:T])
        logits = self.lm_head(self.ln_f(x)).float()
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))

    def configure_optimizer(self, lr: float, wd: float):
        decay = [p for p in self.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.dim() < 2]
        return torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                                  {"params": no_decay, "weight_decay": 0.0}],
                                 lr=lr, betas=(0.9, 0.95), fused=False)


def measure(width: int = 256, depth: int = 4, batch: int = 16, seq_len: int = 128,
            steps: int = 30, rounds: int = 5, parameterisation: str = "completed_p",
            device: str | None = None, precision: str = "fp32",
            compile: bool = False) -> dict:
    """Median step time of ours and of the reference, timed in alternating rounds, both in
    ``precision`` (fp32, or bf16 autocast) and both compiled or both eager."""
    from contextlib import nullcontext

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    arch = ArchConfig(head_dim=32, mlp="swiglu", mlp_ratio=3.0, qk_norm=True)
    scale = Scale(width, depth, batch, batch * seq_len * 10**6, seq_len)
    base = Scale(max(64, width // 4), max(1, depth // 2), batch, scale.tokens,
                 seq_len)  # transfer from a smaller base, so multipliers are not all 1
    cfg = RunConfig(scale=scale, base_scale=base, arch=arch)
    cfg.parameterisation.name = parameterisation
    data = TokenData(DataConfig())
    settings = cfg.settings()

    torch.manual_seed(0)
    ours = GPT(cfg.model_config(data.vocab_size), settings).to(dev)
    ours_opt, ours_sched = build_optimizer(ours.tagged_parameters(), settings, ScheduleConfig(),
                                           10**9)
    ref = RefGPT(data.vocab_size, width, depth, 32, ours.cfg.mlp_hidden, seq_len).to(dev)
    ref_opt = ref.configure_optimizer(3e-4, 0.1)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_ref = sum(p.numel() for p in ref.parameters())
    assert n_ours == n_ref, (n_ours, n_ref)

    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) \
        if precision == "bf16" else nullcontext
    ours_fwd = torch.compile(ours) if compile else ours
    ref_fwd = torch.compile(ref) if compile else ref

    def ours_step(x, y):
        with autocast():
            loss, _ = ours_fwd(x, y)
        loss.backward()
        ours_opt.step()
        ours_sched.step()
        ours_opt.zero_grad(set_to_none=True)

    def ref_step(x, y):
        with autocast():
            loss = ref_fwd(x, y)
        loss.backward()
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)

    batches = [tuple(t.to(dev) for t in data.train_batch(i, batch, seq_len, 0))
               for i in range(steps)]

    def time_round(step_fn) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for x, y in batches:
            step_fn(x, y)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / len(batches)

    time_round(ours_step)  # warm-up both (allocator, kernels, compilation)
    time_round(ref_step)
    t_ours, t_ref = [], []
    for _ in range(rounds):
        t_ours.append(time_round(ours_step))
        t_ref.append(time_round(ref_step))
    mo, mr = statistics.median(t_ours), statistics.median(t_ref)
    return {"device": str(dev), "threads": torch.get_num_threads(), "params": n_ours,
            "width": width, "depth": depth, "batch": batch, "seq_len": seq_len,
            "precision": precision, "compile": compile,
            "param_groups": len(ours_opt.param_groups), "ours_s": mo, "ref_s": mr,
            "ratio": mo / mr, "tokens_per_s": batch * seq_len / mo}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per model")
    ap.add_argument("--parameterisation", default="completed_p")
    ap.add_argument("--device", default=None)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    args = ap.parse_args()
    r = measure(args.width, args.depth, args.batch, args.seq_len, args.steps, args.rounds,
                args.parameterisation, args.device, args.precision, args.compile)
    tok = r["batch"] * r["seq_len"]
    print(f"device {r['device']} ({r['precision']}{', compiled' if r['compile'] else ''}), "
          f"{r['threads']} threads, {r['params'] / 1e6:.2f}M params, "
          f"width {r['width']} depth {r['depth']} batch {r['batch']}x{r['seq_len']}, "
          f"{r['param_groups']} param groups (ref: 2)")
    print(f"ours      {r['ours_s'] * 1e3:8.2f} ms/step  {tok / r['ours_s']:10.0f} tokens/s")
    print(f"reference {r['ref_s'] * 1e3:8.2f} ms/step  {tok / r['ref_s']:10.0f} tokens/s")
    print(f"ratio ours/reference step time: {r['ratio']:.3f}")


if __name__ == "__main__":
    main()
