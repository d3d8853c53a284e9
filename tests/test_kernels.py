"""The kernels (RMSNorm and RoPE as single nodes, the multiplied linear layer) compute the
plain formulas, forward and backward.

Tolerances, against the formula computed in float64 from the same inputs (u = 2^-24 for fp32,
2^-8 for bf16: the unit roundoff):
- RMSNorm: fp32 within 1e-5 relative (a sum over at most a few hundred squares and a rsqrt: a
  few ulps, 2^-23 ~ 1.2e-7 each, so 1e-5 leaves a wide margin while a wrong formula -- no eps,
  wrong axis, no gain -- is off by >= 1e-3); bf16 within one bf16 ulp (2^-8 relative: the
  result is computed in fp32 and rounded to bf16 once) plus an absolute 1e-5 of the row's
  scale for the backward's cancellation near zero (computed in fp32). Against ``F.rms_norm``
  (what the model used before): the forward is the same ops, so equal; the backward within
  fp32 rounding (1e-5 relative, as above).
- RoPE: each element is a1 b1 + a2 b2 (the two products of the rotation, or of its transpose
  in the backward), computed as a rounded product plus a fused multiply-add rounded once: off
  by at most u (2 |a1 b1| + |a2 b2|), bounded here by 2u (|a1 b1| + |a2 b2|); a swapped or
  wrongly signed term is off by about |a2 b2| itself. The plain-op version run under
  torch.compile is the plain formula itself (equal).
- The multiplied linear layer m x W^T, computed as (x W^T) m: a dot product over fan_in terms
  (or over tokens, for the weight's gradient) plus the rounding of the product by m: fp32
  within 1e-5 of the sum of the terms' magnitudes (fan_in <= 64 here: at most ~64 u = 4e-6),
  bf16 within 2^-6 of it (the inputs are bf16, the product and its scaling are rounded to
  bf16 once each, the sum accumulates in fp32). A missing or doubled multiplier is off by a
  factor.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from cp import kernels, model
from cp.kernels import apply_rope, rms_norm, rope_full_tables, rope_tables, scaled_linear
from cp.model import GPT

DTYPES = [torch.float32, torch.bfloat16]


def plain_rms_norm(x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * gain, in float64 for a reference."""
    x, gain = x.double(), gain.double()
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * gain


def plain_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotation of pairs (x_i, x_{i+D/2}) of (B, T, H, D) by (T, D/2) tables, written as
    the model wrote it before (on (B, H, T, D), from chunk and cat)."""
    x1, x2 = x.transpose(1, 2).chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).transpose(1, 2)


def leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_() for t in tensors]


def rms_inputs(dtype: torch.dtype, dim: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(4, 7, 5, dim, generator=g)).to(dtype)
    gain = (0.5 + torch.rand(dim, generator=g)).to(dtype)
    return x, gain


def assert_within_ulp(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    got, want = got.double(), want.double()
    rel = 1e-5 if dtype == torch.float32 else 2.0 ** -8
    scale = want.abs().amax(-1, keepdim=True) if want.dim() > 1 else want.abs().max()
    bound = rel * want.abs() + 1e-5 * scale
    excess = ((got - want).abs() - bound).max().item()
    assert excess <= 0, f"off by {excess} beyond the bound"


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_forward_and_backward_are_the_plain_formula(dtype):
    x, gain = rms_inputs(dtype)
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    xk, gk = leaves(x, gain)
    y = rms_norm(xk, gk, 1e-6)
    assert y.dtype == dtype and y.grad_fn is not None and "_RMSNorm" in y.grad_fn.name()
    gx, ggain = torch.autograd.grad(y, (xk, gk), gy)
    assert gx.dtype == dtype and ggain.dtype == dtype

    xr, gr = (t.double().requires_grad_() for t in (x, gain))
    yr = plain_rms_norm(xr, gr, 1e-6)
    gxr, ggainr = torch.autograd.grad(yr, (xr, gr), gy.double())
    assert_within_ulp(y, yr, dtype)
    assert_within_ulp(gx, gxr, dtype)
    # The gain's gradient sums over B*T*H = 140 rows: fp32 accumulation, one bf16 rounding.
    assert_within_ulp(ggain, ggainr, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_matches_torch_rms_norm(dtype):
    x, gain = rms_inputs(dtype)
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    xk, gk = leaves(x, gain)
    xt, gt = leaves(x, gain)
    y = rms_norm(xk, gk, 1e-6)
    yt = F.rms_norm(xt, (x.shape[-1],), gt, 1e-6)
    assert torch.equal(y, yt)
    for ours, theirs in zip(torch.autograd.grad(y, (xk, gk), gy),
                            torch.autograd.grad(yt, (xt, gt), gy), strict=True):
        if dtype == torch.float32:
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        else:  # theirs rounds several intermediates to bf16, ours only the result
            torch.testing.assert_close(ours, theirs, rtol=2 ** -7, atol=2 ** -7)


def test_rms_norm_without_gradients_takes_torch_path_with_the_same_numbers():
    x, gain = rms_inputs(torch.float32)
    with torch.no_grad():
        y_plain = rms_norm(x, gain, 1e-6)
    y_node = rms_norm(x.clone().requires_grad_(), gain, 1e-6)
    assert torch.equal(y_plain, y_node.detach())


def test_rms_norm_gain_without_grad_gets_none_and_x_still_gets_its_gradient():
    x, gain = rms_inputs(torch.float32)
    xk = x.clone().requires_grad_()
    y = rms_norm(xk, gain, 1e-6)
    (gx,) = torch.autograd.grad(y.sum(), xk)
    xr = x.double().requires_grad_()
    (gxr,) = torch.autograd.grad(plain_rms_norm(xr, gain, 1e-6).sum(), xr)
    assert_within_ulp(gx, gxr, torch.float32)


def test_rms_norm_gradcheck_in_float64():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, dtype=torch.float64, generator=g, requires_grad=True)
    gain = (0.5 + torch.rand(8, dtype=torch.float64, generator=g)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: kernels._RMSNorm.apply(a, b, 1e-6), (x, gain))


UNIT_ROUNDOFF = {torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -8}


def rope_terms(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotation of (B, T, H, D) by (T, D/2) tables in float64, and the sum of its terms'
    magnitudes |a1 b1| + |a2 b2| per element (``inverse``: the transpose, the backward's)."""
    x, cos, sin = x.double(), cos.double()[:, None, :], sin.double()[:, None, :]
    x1, x2 = x.chunk(2, dim=-1)
    sin = -sin if inverse else sin
    y = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    terms = torch.cat((x1.abs() * cos.abs() + x2.abs() * sin.abs(),
                       x1.abs() * sin.abs() + x2.abs() * cos.abs()), dim=-1)
    return y, terms


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_forward_and_backward_are_the_plain_formula(dtype):
    B, T, H, D = 3, 11, 4, 32
    cos, sin = rope_tables(T, D, 10000.0)
    full_cos, full_sin = rope_full_tables(cos, sin, H)
    # The tables as the kernel uses them: rounded to the activations' dtype.
    cos_r, sin_r = cos.to(dtype), sin.to(dtype)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(B, T, H, D, generator=gen).to(dtype)
    gy = torch.randn(B, T, H, D, generator=gen).to(dtype)
    (xk,) = leaves(x)
    y = apply_rope(xk, full_cos, full_sin)
    assert y.dtype == dtype and "_RoPE" in y.grad_fn.name()
    (gx,) = torch.autograd.grad(y, xk, gy)
    u = UNIT_ROUNDOFF[dtype]
    for got, (want, terms) in ((y, rope_terms(x, cos_r, sin_r)),
                               (gx, rope_terms(gy, cos_r, sin_r, inverse=True))):
        excess = ((got.double() - want).abs() - 2 * u * terms).max().item()
        assert excess <= 0, f"off by {excess} beyond the bound"
    with torch.no_grad():  # the no-gradient path runs the same kernels
        assert torch.equal(apply_rope(x, full_cos, full_sin), y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_plain_ops_for_torch_compile_are_the_plain_formula_exactly(dtype):
    B, T, H, D = 2, 7, 3, 16
    cos, sin = rope_tables(T, D, 10000.0)
    full_cos, full_sin = rope_full_tables(cos, sin, H)
    x = torch.randn(B, T, H, D, generator=torch.Generator().manual_seed(6)).to(dtype)
    got = kernels._rotate_plain(x, full_cos.to(dtype), full_sin.to(dtype))
    assert torch.equal(got, plain_rope(x, cos, sin))


def linear_inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 9, 64, generator=g).to(dtype)
    w = (0.1 * torch.randn(48, 64, generator=g)).to(dtype)
    gy = torch.randn(4, 9, 48, generator=g).to(dtype)
    return x, w, gy


def assert_within_dot_bound(got: torch.Tensor, want: torch.Tensor, terms: torch.Tensor,
                            dtype: torch.dtype) -> None:
    rel = 1e-5 if dtype == torch.float32 else 2.0 ** -6
    excess = ((got.double() - want).abs() - rel * terms).max().item()
    assert excess <= 0, f"off by {excess} beyond the bound"


@pytest.mark.parametrize("dtype", DTYPES)
def test_scaled_linear_forward_and_backward_are_the_plain_formula(dtype):
    m = 0.3  # not a power of two: m W rounds
    x, w, gy = linear_inputs(dtype)
    xk, wk = leaves(x, w)
    y = scaled_linear(xk, wk, m)
    assert y.dtype == dtype
    gx, gw = torch.autograd.grad(y, (xk, wk), gy)
    assert gx.dtype == dtype and gw.dtype == dtype

    xd, wd, gyd = x.double(), w.double(), gy.double()
    assert_within_dot_bound(y, m * xd @ wd.T, m * xd.abs() @ wd.abs().T, dtype)
    assert_within_dot_bound(gx, m * gyd @ wd, m * gyd.abs() @ wd.abs(), dtype)
    gy2, x2 = gyd.reshape(-1, 48), xd.reshape(-1, 64)
    assert_within_dot_bound(gw, m * gy2.T @ x2, m * gy2.abs().T @ x2.abs(), dtype)


def test_scaled_linear_saves_what_f_linear_saves():
    """The input and the parameter itself: no scaled copy of the weight for backward."""
    x, w, _ = linear_inputs(torch.float32)
    xk, wk = leaves(x, w)
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        scaled_linear(xk, wk, 0.3)
    assert sorted(saved) == sorted(t.untyped_storage().data_ptr() for t in (xk, wk))


@pytest.mark.parametrize("multiplier", [1.0, 0.3])
def test_scaled_linear_without_gradients_and_under_autocast(multiplier):
    x, w, _ = linear_inputs(torch.float32)
    xd, wd = x.double(), w.double()
    want, terms = multiplier * xd @ wd.T, multiplier * xd.abs() @ wd.abs().T
    with torch.no_grad():
        assert_within_dot_bound(scaled_linear(x, w, multiplier), want, terms, torch.float32)
    xk, wk = leaves(x, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = scaled_linear(xk, wk, multiplier)
    assert y.dtype == torch.bfloat16
    assert_within_dot_bound(y, want, terms, torch.bfloat16)
    (gx,) = torch.autograd.grad(y.float().sum(), xk)  # d/dx of sum(m x W^T) = m sum_j W_j
    assert_within_dot_bound(gx, (multiplier * wd.sum(0)).expand_as(x),
                            (multiplier * wd.abs().sum(0)).expand_as(x), torch.bfloat16)


def test_rope_is_a_rotation_by_position_times_frequency():
    """Independent of any implementation: the pair (i, i + D/2) at position t turns by the angle
    t * base^(-2i/D), so norms are kept and position 0 is untouched."""
    T, H, D, base = 6, 2, 8, 10000.0
    full_cos, full_sin = rope_full_tables(*rope_tables(T, D, base), H)
    x = torch.randn(1, T, H, D, dtype=torch.float32)
    y = apply_rope(x, full_cos, full_sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    assert torch.equal(y[:, 0], x[:, 0])
    t, i = 5, 1
    angle = torch.tensor(t * base ** (-2 * i / D), dtype=torch.float64)
    a, b = x[0, t, 0, i].double(), x[0, t, 0, i + D // 2].double()
    want = (a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos())
    torch.testing.assert_close(y[0, t, 0, i].double(), want[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(y[0, t, 0, i + D // 2].double(), want[1], rtol=1e-6, atol=1e-6)


def test_gpt_with_the_kernels_trains_like_the_plain_formulas(tiny, monkeypatch):
    """A whole model: the loss and every parameter's gradient with the single-node kernels
    agree with the plain formulas to fp32 rounding. Twice the base depth, so that the
    residual branches' output projections carry a multiplier of 1/2."""
    run = tiny()
    run = dataclasses.replace(run, scale=dataclasses.replace(run.scale, depth=4))
    torch.manual_seed(0)
    net = GPT(run.model_config(256), run.settings())
    assert {m.multiplier for m in net.modules() if isinstance(m, model.Linear)} > {1.0}
    idx = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(5))

    def loss_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        net.zero_grad()
        loss, _ = net(idx[:, :-1], idx[:, 1:])
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in net.parameters()]

    loss, grads = loss_and_grads()
    half = net.cfg.arch.head_dim // 2
    monkeypatch.setattr(model, "rms_norm", lambda x, g, eps: F.rms_norm(x, (x.shape[-1],), g, eps))
    monkeypatch.setattr(model, "apply_rope", lambda x, c, s: plain_rope(
        x, c[:, 0, :half], s[:, 0, half:]))
    monkeypatch.setattr(model, "scaled_linear", lambda x, w, m: F.linear(x, w) * m)
    loss_plain, grads_plain = loss_and_grads()
    torch.testing.assert_close(loss, loss_plain, rtol=1e-6, atol=1e-6)
    for g, gp in zip(grads, grads_plain, strict=True):
        torch.testing.assert_close(g, gp, rtol=1e-4, atol=1e-6)
