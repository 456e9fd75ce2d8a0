"""A LoRA linear layer in one autograd node: ``y = x W^T + b + s (x A^T) B^T``.

PEFT computes ``base(x) + lora_B(lora_A(x)) * s``: besides the three matmuls, a multiply and an add
over the whole ``[T, out]`` output in the forward, and their gradients in the backward (the scale's
multiply again, and the sum of ``dx`` from the base and adapter branches). Those elementwise passes
over the seven projections of every layer were ~20% of the step's CPU time on SmolLM2 + LoRA r=16
(benchmarks/RESULTS.md, 2026-12-07). Here the scale is applied to the small ``B`` (``[out, r]``) and
each sum is accumulated inside a GEMM (``addmm_``), so the layer costs its matmuls and nothing else:
    forward   y = x W^T (+ b);  y += (x A^T) (s B)^T
    backward  g = dy (s B);  dx = dy W;  dx += g A;  dA = g^T x;  dB = s dy^T (x A^T)
It saves what PEFT's autograd graph saves: x and x A^T (the weights are parameters).

``lora_linear_reference`` is PEFT's expression, the spec the fast path is tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lora_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """PEFT's vanilla LoRA forward (no dropout): ``F.linear(x, W, b) + F.linear(F.linear(x, A), B) * s``."""
    return F.linear(x, weight, bias) + F.linear(F.linear(x, lora_a), lora_b) * scaling


class _LoRALinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling):
        x2 = x.reshape(-1, x.shape[-1])
        xa = x2 @ lora_a.t()  # [T, r]
        sb = lora_b * scaling  # [out, r]: the scale on the small factor
        y = x2 @ weight.t() if bias is None else torch.addmm(bias, x2, weight.t())
        y.addmm_(xa, sb.t())
        ctx.save_for_backward(x2, xa, weight, lora_a, sb)
        ctx.scaling, ctx.has_bias, ctx.in_shape = scaling, bias is not None, x.shape
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x2, xa, weight, lora_a, sb = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])
        need_x, need_w, need_b, need_a, need_bb, _ = ctx.needs_input_grad
        g = dy2 @ sb if (need_x or need_a) else None  # [T, r]
        dx = dw = db = da = dbb = None
        if need_x:
            dx = dy2 @ weight
            dx.addmm_(g, lora_a)
            dx = dx.reshape(ctx.in_shape)
        if need_w:
            dw = dy2.t() @ x2
        if need_b and ctx.has_bias:
            db = dy2.sum(0)
        if need_a:
            da = g.t() @ x2
        if need_bb:
            dbb = (dy2.t() @ xa).mul_(ctx.scaling)
        return dx, dw, db, da, dbb, None


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """``x W^T + b + scaling (x A^T) B^T`` with the scale and both sums folded into the GEMMs.

    x [..., in]; weight [out, in]; bias [out] or None; lora_a [r, in]; lora_b [out, r]; one dtype and
    device for all. Returns [..., out]. Equal to ``lora_linear_reference`` up to rounding (the scale
    multiplies B before the product instead of the product after it)."""
    tensors = (x, weight, lora_a, lora_b) + (() if bias is None else (bias,))
    if len({t.dtype for t in tensors}) != 1 or len({t.device for t in tensors}) != 1:
        raise ValueError(
            "lora_linear needs one dtype and one device for x, the weight, the bias and both factors, got "
            + ", ".join(f"{t.dtype}/{t.device}" for t in tensors)
        )
    r, fan_in = lora_a.shape
    if x.shape[-1] != fan_in or weight.shape[1] != fan_in or lora_b.shape != (weight.shape[0], r):
        raise ValueError(
            f"lora_linear shapes disagree: x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
            f"lora_a {tuple(lora_a.shape)}, lora_b {tuple(lora_b.shape)}"
        )
    return _LoRALinear.apply(x, weight, bias, lora_a, lora_b, float(scaling))
