"""RMSNorm and RoPE as single autograd nodes, so that a CPU training step does not spend its
time on the many small kernels autograd makes of them.

On CPU, ``F.rms_norm`` with gradients decomposes into pow, mean, add, rsqrt and two muls, and
autograd's backward of those into about a dozen more (with scalar ops that run off the
vectorised path): 4-5x ``F.layer_norm``, which has a native kernel each way. RoPE written with
chunk and cat works on half-rows (head_dim / 2 contiguous floats) in 7 kernels forward and
more backward. Here each is one `torch.autograd.Function` over whole rows:

- RMSNorm: the same forward ops as ``F.rms_norm`` (so the same numbers), the closed-form
  backward ``rstd * (g*gy - x_hat * mean(g*gy * x_hat))``, computed in fp32 (float64 for
  float64 inputs) and rounded once;
- RoPE: ``x * [cos, cos] + swap(x) * [-sin, sin]`` with swap(x) = (x_2, x_1), on full-width
  tables (T, heads, head_dim): each element gets exactly the products and the sum the plain
  formula computes, so forward and backward (the inverse rotation: it saves no activation)
  give the same numbers.

tests/test_kernels.py pins both against the plain formulas, forward and backward, fp32 and
bf16. When torch.compile traces the model (the GPU path) the formulas run as plain torch ops
(it fuses them itself), and so does RMSNorm on CUDA, where torch has a fused kernel each way.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def _single_node(x: torch.Tensor, *, cpu_only: bool = False) -> bool:
    """Whether to run the one-node version: in eager mode with gradients (torch.compile fuses
    the plain formula itself), and for RMSNorm on CPU only (CUDA has torch's fused kernels)."""
    return (torch.is_grad_enabled() and x.requires_grad and not torch.compiler.is_compiling()
            and (x.device.type == "cpu" or not cpu_only))


# ---------------------------------------------------------------------------------------------
# RMSNorm: y = x / sqrt(mean(x^2) + eps) * gain, over the last dimension.


def _computation_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for bf16, fp16 and fp32 inputs; float64 for float64."""
    return torch.promote_types(x.dtype, torch.float32)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
        # F.rms_norm's own steps, in fp32 at least (it upcasts bf16 the same way), rounded
        # to the input's dtype once, at the end.
        xf = x.to(_computation_dtype(x))
        rstd = xf.square().mean(-1, keepdim=True).add_(eps).rsqrt_()
        x_hat = xf * rstd
        ctx.save_for_backward(x_hat, gain, rstd)
        return (x_hat * gain.to(xf.dtype)).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x_hat, gain, rstd = ctx.saved_tensors
        gyf = gy.to(x_hat.dtype)
        ggain = None
        if ctx.needs_input_grad[1]:
            ggain = (gyf * x_hat).reshape(-1, x_hat.shape[-1]).sum(0).to(gain.dtype)
        gg = gyf * gain.to(x_hat.dtype)
        # d/dx of x * rstd(x) * g: rstd * (g gy - x_hat * mean(g gy * x_hat)), in place on
        # g gy where that rounds the same (an activation-sized temporary costs more than the
        # op on CPU); not addcmul_, whose fused multiply-add would round differently.
        dot = (gg * x_hat).mean(-1, keepdim=True)
        gx = gg.sub_(x_hat * dot).mul_(rstd)
        return gx.to(gy.dtype), ggain, None


def rms_norm(x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of ``x`` over its last dimension, times ``gain`` (of that dimension's size and
    ``x``'s dtype)."""
    if _single_node(x, cpu_only=True):
        return _RMSNorm.apply(x, gain, eps)
    return F.rms_norm(x, (x.shape[-1],), gain, eps)


# ---------------------------------------------------------------------------------------------
# RoPE: the pairs (x_i, x_{i+D/2}) of each head rotated by position-dependent angles.


def rope_tables(seq_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the angles, (seq_len, head_dim / 2) each."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def rope_full_tables(cos: torch.Tensor, sin: torch.Tensor, heads: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The tables `apply_rope` takes: [cos, cos] and [-sin, sin], (T, heads, head_dim),
    contiguous, so that a rotation is whole-row products of (B, T, heads, head_dim) tensors."""
    T, half = cos.shape
    full_cos = torch.cat((cos, cos), dim=-1)[:, None, :].expand(T, heads, 2 * half)
    full_sin = torch.cat((-sin, sin), dim=-1)[:, None, :].expand(T, heads, 2 * half)
    return full_cos.contiguous(), full_sin.contiguous()


def _swap_halves(x: torch.Tensor) -> torch.Tensor:
    """(x_2, x_1) for x = (x_1, x_2) split along the last dimension."""
    half = x.shape[-1] // 2
    out = torch.empty_like(x)
    out[..., :half] = x[..., half:]
    out[..., half:] = x[..., :half]
    return out


def _rotate(x: torch.Tensor, full_cos: torch.Tensor, full_sin: torch.Tensor) -> torch.Tensor:
    # Per element, the plain formula's two products and one sum (x1 c - x2 s is x1 c + x2 (-s),
    # exactly), so the same numbers.
    return x * full_cos + _swap_halves(x) * full_sin


class _RoPE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, full_cos: torch.Tensor, full_sin: torch.Tensor
                ) -> torch.Tensor:
        ctx.save_for_backward(full_cos, full_sin)
        return _rotate(x, full_cos, full_sin)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        full_cos, full_sin = ctx.saved_tensors
        # The transpose of y = x C + swap(x) S is gy C + swap(gy S): the inverse rotation.
        return gy * full_cos + _swap_halves(gy * full_sin), None, None


def apply_rope(x: torch.Tensor, full_cos: torch.Tensor, full_sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x_i, x_{i+D/2}) of each head of ``x`` (B, T, heads, D) by the angles
    whose `rope_full_tables` (T, heads, D) are given."""
    full_cos, full_sin = full_cos.to(x.dtype), full_sin.to(x.dtype)
    if _single_node(x):
        return _RoPE.apply(x, full_cos, full_sin)
    return _rotate(x, full_cos, full_sin)
