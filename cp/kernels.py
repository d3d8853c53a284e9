"""RMSNorm and RoPE as single autograd nodes, so that a CPU training step does not spend its
time on the many small kernels and activation-sized temporaries autograd makes of them, and
the linear layer with a forward multiplier.

On CPU, ``F.rms_norm`` with gradients decomposes into pow, mean, add, rsqrt and two muls, and
autograd's backward of those into about a dozen more (with scalar ops that run off the
vectorised path): 4-5x ``F.layer_norm``, which has a native kernel each way. RoPE written with
chunk and cat works on half-rows (head_dim / 2 contiguous floats) in 7 kernels forward and
more backward. Here each is one `torch.autograd.Function`, which writes into a buffer it
already has where it can (on CPU a fresh activation-sized buffer costs about as much as the op
that fills it):

- RMSNorm: the same forward ops as ``F.rms_norm`` (so the same numbers); the closed-form
  backward ``rstd * (g*gy - x_hat * mean(g*gy * x_hat))`` in fp32 (float64 for float64
  inputs), the row means as a matrix-vector product, rounded once at the end;
- RoPE: ``x * [cos, cos] + swap(x) * [-sin, sin]`` with swap(x) = (x_2, x_1), on full-width
  tables (T, heads, head_dim), the swapped products multiply-added in place half-row by
  half-row (no swapped copy); the backward is the inverse rotation and saves no activation.

A linear layer with a multiplier m scales its product in place, ``F.linear(x, W).mul_(m)``:
autograd's own nodes, no extra buffer forward, and the same saved tensors as ``F.linear``. (A
single node that scaled the weight instead measured 2-3% slower a step than this on CPU, like
for like: its Python backward costs more than the pass it saves; scaling the weight with
autograd's ops would save a scaled copy of every such weight for backward.)

The fused multiply-adds (``addcmul_``) round differently from the plain formulas, by a
rounding or two per element; tests/test_kernels.py pins each against
the plain formula computed in float64, forward and backward, fp32 and bf16. When torch.compile
traces the model (the GPU path) the plain formulas run as plain torch ops (it fuses them
itself), and so does RMSNorm on CUDA, where torch has a fused kernel each way.
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
        squares = xf.square()
        rstd = squares.mean(-1, keepdim=True).add_(eps).rsqrt_()
        # x_hat overwrites the squares, no longer needed: no second buffer.
        x_hat = torch.mul(xf, rstd, out=squares)
        ctx.save_for_backward(x_hat, gain, rstd)
        return (x_hat * gain.to(xf.dtype)).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x_hat, gain, rstd = ctx.saved_tensors
        size = x_hat.shape[-1]
        gyf, g = gy.to(x_hat.dtype), gain.to(x_hat.dtype)
        # gy * x_hat serves both the gain's gradient (its column sums) and the row means
        # mean(g gy x_hat) = (gy x_hat) @ g / size, a matrix-vector product.
        rows = (gyf * x_hat).reshape(-1, size)
        ggain = rows.sum(0).to(gain.dtype) if ctx.needs_input_grad[1] else None
        dot = torch.mv(rows, g).div_(size).view(rstd.shape)
        # d/dx of x * rstd(x) * g: rstd * (g gy - x_hat * mean(g gy x_hat)), the subtraction
        # a fused multiply-add in place: one pass and no buffer instead of two and one.
        gx = (gyf * g).addcmul_(x_hat, dot, value=-1).mul_(rstd)
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


def _rotate_plain(x: torch.Tensor, full_cos: torch.Tensor, full_sin: torch.Tensor
                  ) -> torch.Tensor:
    """x * [cos, cos] + swap(x) * [-sin, sin] in plain ops, for torch.compile to fuse."""
    half = x.shape[-1] // 2
    return x * full_cos + torch.cat((x[..., half:], x[..., :half]), dim=-1) * full_sin


def _rotate(x: torch.Tensor, full_cos: torch.Tensor, full_sin: torch.Tensor) -> torch.Tensor:
    """`_rotate_plain` in three kernels and one buffer."""
    half = x.shape[-1] // 2
    y = x * full_cos
    y[..., :half].addcmul_(x[..., half:], full_sin[..., :half])
    y[..., half:].addcmul_(x[..., :half], full_sin[..., half:])
    return y


def _rotate_back(gy: torch.Tensor, full_cos: torch.Tensor, full_sin: torch.Tensor
                 ) -> torch.Tensor:
    """The transpose of `_rotate` (the inverse rotation): gy [cos, cos] + swap(gy [-sin, sin])."""
    half = gy.shape[-1] // 2
    gx = gy * full_cos
    gx[..., half:].addcmul_(gy[..., :half], full_sin[..., :half])
    gx[..., :half].addcmul_(gy[..., half:], full_sin[..., half:])
    return gx


class _RoPE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, full_cos: torch.Tensor, full_sin: torch.Tensor
                ) -> torch.Tensor:
        ctx.save_for_backward(full_cos, full_sin)
        return _rotate(x, full_cos, full_sin)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return _rotate_back(gy, *ctx.saved_tensors), None, None


def apply_rope(x: torch.Tensor, full_cos: torch.Tensor, full_sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x_i, x_{i+D/2}) of each head of ``x`` (B, T, heads, D) by the angles
    whose `rope_full_tables` (T, heads, D) are given."""
    full_cos, full_sin = full_cos.to(x.dtype), full_sin.to(x.dtype)
    if torch.compiler.is_compiling():
        return _rotate_plain(x, full_cos, full_sin)
    if _single_node(x):
        return _RoPE.apply(x, full_cos, full_sin)
    return _rotate(x, full_cos, full_sin)


# ---------------------------------------------------------------------------------------------
# A linear layer with a forward multiplier: y = m x W^T.


def scaled_linear(x: torch.Tensor, weight: torch.Tensor, multiplier: float) -> torch.Tensor:
    """``multiplier * F.linear(x, weight)``, the product scaled in place (the matmul does not
    keep its output): no buffer forward, one pass over the output's gradient backward, and
    autograd saves what ``F.linear`` saves (no scaled copy of the weight)."""
    y = F.linear(x, weight)
    if multiplier == 1.0:
        return y
    if torch.compiler.is_compiling():
        return y * multiplier
    return y.mul_(multiplier)
