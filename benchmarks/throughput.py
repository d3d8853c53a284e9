"""Step time of cp's model against an independent GPT-2-recipe reference (reference_gpt.py,
which imports nothing from cp), on the same batches in one process, in alternating rounds.

Four models train, each with its own optimiser, step = forward + backward + AdamW step:

- ``reference``: `reference_gpt.ReferenceGPT` -- learned positions, LayerNorm (no bias), GELU
  MLP of 4x width, fused qkv, SDPA, untied head, no biases; AdamW with one decay and one
  no-decay group (on CPU torch's default per-tensor loop, as cp's optimiser).
- ``like_for_like``: cp's GPT with the reference's architecture (``norm: layernorm``,
  ``positions: learned``, ``fused_qkv: true``, ``mlp: gelu``, ``mlp_ratio: 4``,
  ``qk_norm: false``), the same width, depth, heads (head_dim 32), sequence length, batch and
  vocabulary, untied, no biases: the same parameters, tensor for tensor. What differs is what
  cp adds to a model: forward multipliers and per-(group, layer) AdamW groups (Complete(d)P
  transferred from a 4x narrower, 2x shallower base, as a study's target is trained). Its
  acceptance bar is <= 1.03x the reference's step time.
- ``rms_rope``: ``like_for_like`` with cp's default RMSNorm and RoPE instead of LayerNorm and
  the position table: what those two cost on this device.
- ``defaults``: cp's GPT with its default architecture (separate q, k and v projections for
  per-module learning rates, SwiGLU of 3x width, QK-norm, RMSNorm, RoPE) at the same shape
  and head_dim: what a study trains; the extra cost is the architecture's.

Each round times ``steps`` steps of every model in turn, the order rotated from round to round
(so none is always first after another's caches); a model's ratio to the reference is the
median of its per-round ratios, with a 90% bootstrap interval over rounds.

    python benchmarks/throughput.py [--width 128 --depth 4 --batch 32 --seq-len 64 --threads 2]

The default shape is the issue's (width 128, seq 64, 4 layers, batch 32, fp32).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_gpt import ReferenceGPT

from cp.config import ArchConfig, RunConfig
from cp.data import DataConfig, TokenData
from cp.model import GPT
from cp.optim import build_optimizer
from cp.scaling import Scale
from cp.schedule import ScheduleConfig

HEAD_DIM = 32
LIKE_FOR_LIKE = ArchConfig(head_dim=HEAD_DIM, mlp="gelu", mlp_ratio=4.0, qk_norm=False,
                           norm="layernorm", fused_qkv=True, positions="learned")
RMS_ROPE = dataclasses.replace(LIKE_FOR_LIKE, norm="rmsnorm", positions="rope")
DEFAULTS = ArchConfig(head_dim=HEAD_DIM)
MODELS = ("reference", "like_for_like", "rms_rope", "defaults")
CONFIDENCE = 0.9


def ours(arch: ArchConfig, width: int, depth: int, batch: int, seq_len: int, vocab: int,
         dev: torch.device) -> tuple[torch.nn.Module, Callable[[], None], Any]:
    """cp's GPT and its optimiser as a study's target gets them (transferred from a smaller
    base, so the multipliers are not all 1)."""
    scale = Scale(width, depth, batch, batch * seq_len * 10**6, seq_len)
    base = Scale(max(HEAD_DIM, width // 4), max(1, depth // 2), batch, scale.tokens, seq_len)
    cfg = RunConfig(scale=scale, base_scale=base, arch=arch)
    settings = cfg.settings()
    model = GPT(cfg.model_config(vocab), settings).to(dev)
    opt, sched = build_optimizer(model.tagged_parameters(), settings, ScheduleConfig(),
                                 10**9)

    def after_step() -> None:
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return model, after_step, opt


def reference(width: int, depth: int, seq_len: int, vocab: int, dev: torch.device
              ) -> tuple[torch.nn.Module, Callable[[], None], Any]:
    model = ReferenceGPT(vocab, width, depth, width // HEAD_DIM, seq_len).to(dev)
    opt = model.optimizer()

    def after_step() -> None:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model, after_step, opt


def measure(width: int = 128, depth: int = 4, batch: int = 32, seq_len: int = 64,
            steps: int = 20, rounds: int = 9, device: str | None = None,
            precision: str = "fp32", compile: bool = False, threads: int | None = None
            ) -> dict[str, Any]:
    """Median step time of each of `MODELS` over alternating rounds (each round times
    ``steps`` steps of every model in turn), and each one's ratio to the reference
    (`ratio_estimate`), in ``precision`` (fp32, or bf16 autocast), all compiled or all
    eager."""
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = TokenData(DataConfig())
    vocab = data.vocab_size
    torch.manual_seed(0)
    built = {"reference": reference(width, depth, seq_len, vocab, dev),
             "like_for_like": ours(LIKE_FOR_LIKE, width, depth, batch, seq_len, vocab, dev),
             "rms_rope": ours(RMS_ROPE, width, depth, batch, seq_len, vocab, dev),
             "defaults": ours(DEFAULTS, width, depth, batch, seq_len, vocab, dev)}
    params = {k: sum(p.numel() for p in m.parameters()) for k, (m, _, _) in built.items()}
    # Like for like: the same parameters; RoPE has no position table.
    assert params["reference"] == params["like_for_like"], params
    assert params["like_for_like"] == params["rms_rope"] + seq_len * width, params

    def autocast() -> AbstractContextManager[Any]:
        if precision == "bf16":
            return torch.autocast(dev.type, dtype=torch.bfloat16)
        return nullcontext()

    def step_fn(name: str) -> Callable[[torch.Tensor, torch.Tensor], None]:
        model, after_step, _ = built[name]
        fwd = torch.compile(model) if compile else model

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            with autocast():
                out = fwd(x, y)
            (out if name == "reference" else out[0]).backward()
            after_step()
        return step

    steppers = {name: step_fn(name) for name in MODELS}
    batches = [tuple(t.to(dev) for t in data.train_batch(i, batch, seq_len, 0))
               for i in range(steps)]

    def time_round(step: Callable[[torch.Tensor, torch.Tensor], None]) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for x, y in batches:
            step(x, y)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / len(batches)

    for step in steppers.values():  # warm-up (allocator, lazy imports, compilation)
        time_round(step)
    times: dict[str, list[float]] = {name: [] for name in MODELS}
    for r in range(rounds):
        for name in MODELS[r % len(MODELS):] + MODELS[:r % len(MODELS)]:
            times[name].append(time_round(steppers[name]))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    ratios = {name: ratio_estimate(times[name], times["reference"]) for name in MODELS[1:]}
    return {"device": str(dev), "threads": torch.get_num_threads(), "width": width,
            "depth": depth, "heads": width // HEAD_DIM, "batch": batch, "seq_len": seq_len,
            "precision": precision, "compile": compile, "steps": steps, "rounds": rounds,
            "params": params,
            "param_groups": {k: len(opt.param_groups) for k, (_, _, opt) in built.items()},
            "step_s": med, "tokens_per_s": {k: batch * seq_len / v for k, v in med.items()},
            "ratio": ratios, "ratio_like_for_like": ratios["like_for_like"][0],
            "ratio_defaults": ratios["defaults"][0]}


def ratio_estimate(times: list[float], reference: list[float], resamples: int = 2000
                   ) -> tuple[float, float, float]:
    """(median, low, high): the median of the per-round ratios ``times / reference`` and its
    `CONFIDENCE` percentile-bootstrap interval over rounds (a round's load hits both)."""
    ratios = [t / r for t, r in zip(times, reference, strict=True)]
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios)))
                     for _ in range(resamples))
    tail = (1 - CONFIDENCE) / 2
    return (statistics.median(ratios), medians[int(tail * resamples)],
            medians[int((1 - tail) * resamples) - 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=9, help="alternating rounds")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", action="store_true", help="torch.compile every model")
    args = ap.parse_args()
    r = measure(args.width, args.depth, args.batch, args.seq_len, args.steps, args.rounds,
                args.device, args.precision, args.compile, args.threads)
    print(f"device {r['device']} ({r['precision']}{', compiled' if r['compile'] else ''}), "
          f"{r['threads']} threads, width {r['width']} depth {r['depth']} heads {r['heads']} "
          f"batch {r['batch']}x{r['seq_len']}")
    for name in MODELS:
        print(f"{name:14s} {r['step_s'][name] * 1e3:8.2f} ms/step "
              f"{r['tokens_per_s'][name]:10.0f} tokens/s {r['params'][name] / 1e6:6.2f}M params "
              f"{r['param_groups'][name]:3d} param groups")
    for name, (mid, low, high) in r["ratio"].items():
        print(f"{name} / reference: {mid:.3f} ({CONFIDENCE:.0%} interval {low:.3f}-{high:.3f})")


if __name__ == "__main__":
    main()
