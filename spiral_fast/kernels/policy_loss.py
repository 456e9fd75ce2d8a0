"""Triton kernel of the fused SPIRAL policy loss: one pass over packed token rows.

Each program reads BLOCK rows of logp / old_logp (/ ref_logp) and token_seq, gathers the row's
sequence advantage and coefficient (weight x normaliser) through token_seq, and writes
d loss / d logp per row plus one row of block partial sums (loss, clipped-low count, clipped-high
count, ratio sum, k3 sum). The partials are summed by a small torch reduction afterwards: fixed
order, no float atomics, so results are deterministic run to run. Math: the spec is
``spiral_fast.ops.policy_loss.reference.token_loss_terms``; written here as in the torch twin
``spiral_fast.ops.policy_loss.op._fused_torch``: with b = hi for A > 0 and lo otherwise,
-min(r A, clamp(r, lo, hi) A) = relu(r A - b A) - r A, clipped iff r A > b A, d/dlogp = -r A
where not clipped (the clamp has zero slope there).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from spiral_fast.kernels._launch import device_guard

NUM_PARTIALS = 5  # loss, clip_low, clip_high, ratio, kl
DEFAULT_BLOCK = 1024


@triton.heuristics({"HAS_REF": lambda args: args["ref_ptr"] is not None})
@triton.jit
def _policy_loss_fwd_kernel(
    logp_ptr,
    old_ptr,
    ref_ptr,
    seq_ptr,
    adv_ptr,
    coef_ptr,
    grad_ptr,
    part_ptr,
    R,
    lo,
    hi,
    kl_coef,
    HAS_REF: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < R
    logp = tl.load(logp_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    old = tl.load(old_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    seq = tl.load(seq_ptr + offs, mask=mask, other=0).to(tl.int64)
    # Q is small: these gathers hit cache, and no [R] advantage tensor ever exists in memory
    adv = tl.load(adv_ptr + seq, mask=mask, other=0.0)
    coef = tl.load(coef_ptr + seq, mask=mask, other=0.0)

    ratio = tl.exp(logp - old)
    surrogate = ratio * adv
    excess = surrogate - adv * tl.where(adv > 0.0, hi, lo)
    clipped = excess > 0.0
    term = tl.maximum(excess, 0.0) - surrogate
    dterm = tl.where(clipped, 0.0, -surrogate)
    if HAS_REF:
        delta = tl.load(ref_ptr + offs, mask=mask, other=0.0).to(tl.float32) - logp
        e = tl.exp(delta)
        kl = e - delta - 1.0
        term = term + kl_coef * kl
        dterm = dterm + kl_coef * (1.0 - e)
    else:
        kl = tl.zeros([BLOCK], dtype=tl.float32)
    tl.store(grad_ptr + offs, coef * dterm, mask=mask)

    low = mask & clipped & (adv < 0.0)
    high = mask & clipped & (adv > 0.0)
    base = part_ptr + pid * 5
    tl.store(base + 0, tl.sum(tl.where(mask, coef * term, 0.0), axis=0))
    tl.store(base + 1, tl.sum(low.to(tl.float32), axis=0))
    tl.store(base + 2, tl.sum(high.to(tl.float32), axis=0))
    tl.store(base + 3, tl.sum(tl.where(mask, ratio, 0.0), axis=0))
    tl.store(base + 4, tl.sum(tl.where(mask, kl, 0.0), axis=0))


def policy_loss_fwd(
    logp,
    old_logp,
    ref_logp,
    token_seq,
    seq_adv,
    seq_coef,
    *,
    clip_low: float,
    clip_high: float,
    kl_coef: float,
    block: int = DEFAULT_BLOCK,
):
    """Launch the fused forward.

    logp, old_logp, ref_logp (or None) [R] float, token_seq [R] int, seq_adv [Q] float32,
    seq_coef [Q] float32 (weight / normaliser) -> (grad [R] float32 = d loss / d logp,
    partials [ceil(R / block), 5] float32: loss, clip_low count, clip_high count, ratio sum, kl sum).
    """
    rows = logp.shape[0]
    grad = torch.empty(rows, dtype=torch.float32, device=logp.device)
    num_blocks = triton.cdiv(rows, block)
    partials = torch.zeros(max(num_blocks, 1), NUM_PARTIALS, dtype=torch.float32, device=logp.device)
    if rows == 0:
        return grad, partials
    with device_guard(logp.device):
        _policy_loss_fwd_kernel[(num_blocks,)](
            logp.contiguous(),
            old_logp.contiguous(),
            None if ref_logp is None else ref_logp.contiguous(),
            token_seq.contiguous(),
            seq_adv.contiguous(),
            seq_coef.contiguous(),
            grad,
            partials,
            rows,
            1.0 - clip_low,
            1.0 + clip_high,
            kl_coef,
            BLOCK=block,
            num_warps=4,
        )
    return grad, partials
