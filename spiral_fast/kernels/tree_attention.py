"""Tree attention kernels: block-table flash attention over a prefix-shared packed batch.

Each query block (BLOCK_M tokens of one segment) walks the key blocks it may see through a host-built
index table (its ancestors' blocks, then its own segment's blocks up to the diagonal), reading shared
prefix K/V in place: no gathered copies. The backward recomputes probabilities from the saved
log-sum-exp; dQ walks the same table, dK/dV walk the reverse table (query blocks that see a key block)
so every dK/dV tile has one owner and needs no atomics (GQA: the owner loops over the query heads
of its KV head).
Each list holds its unmasked pairs first (a full key block wholly before the query block's first row:
no tree or causal test needed), then from `*_mid` on the pairs that need the in-tile mask. The
kernels walk each entry's block token range (start, end) rather than its block index, so a loop step
reads its bounds directly (no index -> bound dependent load) and pipelined loops can prefetch; an
unmasked key entry reads only its start (its block is full).

Layouts: q/o [T, Hq, D], k/v [T, Hkv, D] (last dim contiguous), lse/delta [Hq, T] float32 in the
log2 domain. Tables (int32): q_start/q_end/q_ptr/q_mid [NQ(+1)], kv_start/kv_end [pairs],
k_start/k_end/k_ptr/k_mid [NK(+1)], ql_start/ql_end [pairs].
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from spiral_fast.kernels._launch import device_guard

_LOG2E = 1.4426950408889634


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    # fp32 inputs would otherwise run as tf32 on GPUs: ~1e-3 relative error, far from torch's fp32
    if IEEE:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _load_rows(ptr, offs, row_valid, head, stride_t, stride_h, offs_d, d_valid):
    """[len(offs), BLOCK_D] tile of rows `offs` of one head; zeros outside the rows and head dim."""
    return tl.load(
        ptr + offs[:, None] * stride_t + head * stride_h + offs_d[None, :],
        mask=row_valid[:, None] & d_valid[None, :],
        other=0.0,
    )


@triton.jit
def _store_rows(ptr, x, offs, row_valid, head, stride_t, stride_h, offs_d, d_valid):
    tl.store(
        ptr + offs[:, None] * stride_t + head * stride_h + offs_d[None, :],
        x.to(ptr.dtype.element_ty),
        mask=row_valid[:, None] & d_valid[None, :],
    )


@triton.jit
def _block_rows(start_ptr, end_ptr, blk, BLOCK: tl.constexpr):
    """Token indices of entry `blk` of a (start, end) table (BLOCK wide from its start) and which of them
    lie before its end: a block of the grid, or a block-list entry."""
    start = tl.load(start_ptr + blk).to(tl.int64)
    end = tl.load(end_ptr + blk).to(tl.int64)
    offs = start + tl.arange(0, BLOCK)
    return offs, offs < end


@triton.jit
def _key_rows(kv_start_ptr, kv_end_ptr, e, BLOCK_N: tl.constexpr, MASK: tl.constexpr):
    """`_block_rows` of key-list entry e; an unmasked entry's key block is full (the tables guarantee
    it), so its end is not loaded: one load per step."""
    if MASK:
        offs_n, n_valid = _block_rows(kv_start_ptr, kv_end_ptr, e, BLOCK_N)
    else:
        offs_n = tl.load(kv_start_ptr + e).to(tl.int64) + tl.arange(0, BLOCK_N)
        n_valid = tl.full([BLOCK_N], 1, tl.int1)
    return offs_n, n_valid


@triton.jit
def _load_query_side(
    q_ptr,
    do_ptr,
    lse_ptr,
    delta_ptr,
    offs_m,
    m_valid,
    head,
    stride_qt,
    stride_qh,
    stride_dot,
    stride_doh,
    stride_lh,
    offs_d,
    d_valid,
):
    """What the backward needs of a query block: q, dO tiles and the rows' lse and delta."""
    q = _load_rows(q_ptr, offs_m, m_valid, head, stride_qt, stride_qh, offs_d, d_valid)
    do = _load_rows(do_ptr, offs_m, m_valid, head, stride_dot, stride_doh, offs_d, d_valid)
    lse = tl.load(lse_ptr + head * stride_lh + offs_m, mask=m_valid, other=0.0)
    delta = tl.load(delta_ptr + head * stride_lh + offs_m, mask=m_valid, other=0.0)
    return q, do, lse, delta


@triton.jit
def _fwd_step(
    q,
    m_i,
    l_i,
    acc,
    e,
    offs_m,
    k_ptr,
    v_ptr,
    kv_start_ptr,
    kv_end_ptr,
    kv_head,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    offs_d,
    d_valid,
    qk_scale,
    BLOCK_N: tl.constexpr,
    IEEE: tl.constexpr,
    MASK: tl.constexpr,
):
    """Online-softmax update of one query block with the key block of list entry e."""
    offs_n, n_valid = _key_rows(kv_start_ptr, kv_end_ptr, e, BLOCK_N, MASK)
    k = _load_rows(k_ptr, offs_n, n_valid, kv_head, stride_kt, stride_kh, offs_d, d_valid)
    v = _load_rows(v_ptr, offs_n, n_valid, kv_head, stride_vt, stride_vh, offs_d, d_valid)
    s = _dot(q, tl.trans(k), IEEE) * qk_scale
    if MASK:
        # ancestors' keys all precede the query block, so one test covers both the tree and causality
        s = tl.where(n_valid[None, :] & (offs_n[None, :] <= offs_m[:, None]), s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # rows with nothing visible yet keep m = -inf; shift by 0 there instead of producing NaN
    m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_shift[:, None])
    alpha = tl.math.exp2(m_i - m_shift)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
    return m_new, l_i, acc


@triton.jit
def _tree_attention_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    lse_ptr,
    q_start_ptr,
    q_end_ptr,
    q_blk_ptr,
    q_mid_ptr,
    kv_start_ptr,
    kv_end_ptr,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ot,
    stride_oh,
    stride_lh,
    qk_scale,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    IEEE: tl.constexpr,
):
    blk = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    kv_head = head // GROUP
    offs_m, m_valid = _block_rows(q_start_ptr, q_end_ptr, blk, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_valid = offs_d < HEAD_DIM
    q = _load_rows(q_ptr, offs_m, m_valid, head, stride_qt, stride_qh, offs_d, d_valid)
    # running max from -inf: a row's first visible key sets it, whatever the sign of the scores
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    e_lo = tl.load(q_blk_ptr + blk)
    e_mid = tl.load(q_mid_ptr + blk)
    e_hi = tl.load(q_blk_ptr + blk + 1)
    for e in range(e_lo, e_mid):
        m_i, l_i, acc = _fwd_step(
            q,
            m_i,
            l_i,
            acc,
            e,
            offs_m,
            k_ptr,
            v_ptr,
            kv_start_ptr,
            kv_end_ptr,
            kv_head,
            stride_kt,
            stride_kh,
            stride_vt,
            stride_vh,
            offs_d,
            d_valid,
            qk_scale,
            BLOCK_N,
            IEEE,
            False,
        )
    for e in range(e_mid, e_hi):
        m_i, l_i, acc = _fwd_step(
            q,
            m_i,
            l_i,
            acc,
            e,
            offs_m,
            k_ptr,
            v_ptr,
            kv_start_ptr,
            kv_end_ptr,
            kv_head,
            stride_kt,
            stride_kh,
            stride_vt,
            stride_vh,
            offs_d,
            d_valid,
            qk_scale,
            BLOCK_N,
            IEEE,
            True,
        )
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    _store_rows(o_ptr, out, offs_m, m_valid, head, stride_ot, stride_oh, offs_d, d_valid)
    tl.store(lse_ptr + head * stride_lh + offs_m, m_i + tl.math.log2(l_safe), mask=m_valid)


@triton.jit
def _dq_step(
    dq,
    q,
    do,
    lse,
    delta,
    e,
    offs_m,
    k_ptr,
    v_ptr,
    kv_start_ptr,
    kv_end_ptr,
    kv_head,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    offs_d,
    d_valid,
    qk_scale,
    BLOCK_N: tl.constexpr,
    IEEE: tl.constexpr,
    MASK: tl.constexpr,
):
    """dQ contribution of the key block of list entry e to one query block (unscaled)."""
    offs_n, n_valid = _key_rows(kv_start_ptr, kv_end_ptr, e, BLOCK_N, MASK)
    k = _load_rows(k_ptr, offs_n, n_valid, kv_head, stride_kt, stride_kh, offs_d, d_valid)
    v = _load_rows(v_ptr, offs_n, n_valid, kv_head, stride_vt, stride_vh, offs_d, d_valid)
    p = tl.math.exp2(_dot(q, tl.trans(k), IEEE) * qk_scale - lse[:, None])
    if MASK:
        p = tl.where(n_valid[None, :] & (offs_n[None, :] <= offs_m[:, None]), p, 0.0)
    ds = p * (_dot(do, tl.trans(v), IEEE) - delta[:, None])
    return dq + _dot(ds.to(k.dtype), k, IEEE)


@triton.jit
def _tree_attention_bwd_dq_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    do_ptr,
    dq_ptr,
    lse_ptr,
    delta_ptr,
    q_start_ptr,
    q_end_ptr,
    q_blk_ptr,
    q_mid_ptr,
    kv_start_ptr,
    kv_end_ptr,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_dot,
    stride_doh,
    stride_dqt,
    stride_dqh,
    stride_lh,
    qk_scale,
    sm_scale,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    IEEE: tl.constexpr,
):
    blk = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    kv_head = head // GROUP
    offs_m, m_valid = _block_rows(q_start_ptr, q_end_ptr, blk, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_valid = offs_d < HEAD_DIM
    # padded rows (beyond the block's end) load q = dO = 0 and are never stored: no mask needed for them
    q, do, lse, delta = _load_query_side(
        q_ptr,
        do_ptr,
        lse_ptr,
        delta_ptr,
        offs_m,
        m_valid,
        head,
        stride_qt,
        stride_qh,
        stride_dot,
        stride_doh,
        stride_lh,
        offs_d,
        d_valid,
    )
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    e_lo = tl.load(q_blk_ptr + blk)
    e_mid = tl.load(q_mid_ptr + blk)
    e_hi = tl.load(q_blk_ptr + blk + 1)
    for e in range(e_lo, e_mid):
        dq = _dq_step(
            dq,
            q,
            do,
            lse,
            delta,
            e,
            offs_m,
            k_ptr,
            v_ptr,
            kv_start_ptr,
            kv_end_ptr,
            kv_head,
            stride_kt,
            stride_kh,
            stride_vt,
            stride_vh,
            offs_d,
            d_valid,
            qk_scale,
            BLOCK_N,
            IEEE,
            False,
        )
    for e in range(e_mid, e_hi):
        dq = _dq_step(
            dq,
            q,
            do,
            lse,
            delta,
            e,
            offs_m,
            k_ptr,
            v_ptr,
            kv_start_ptr,
            kv_end_ptr,
            kv_head,
            stride_kt,
            stride_kh,
            stride_vt,
            stride_vh,
            offs_d,
            d_valid,
            qk_scale,
            BLOCK_N,
            IEEE,
            True,
        )
    _store_rows(dq_ptr, dq * sm_scale, offs_m, m_valid, head, stride_dqt, stride_dqh, offs_d, d_valid)


@triton.jit
def _dkdv_step(
    dk,
    dv,
    k,
    v,
    e,
    offs_n,
    n_valid,
    q_ptr,
    do_ptr,
    lse_ptr,
    delta_ptr,
    ql_start_ptr,
    ql_end_ptr,
    head,
    stride_qt,
    stride_qh,
    stride_dot,
    stride_doh,
    stride_lh,
    offs_d,
    d_valid,
    qk_scale,
    BLOCK_M: tl.constexpr,
    IEEE: tl.constexpr,
    MASK: tl.constexpr,
):
    """dK (unscaled) and dV contributions of the query block of list entry e to one key block."""
    offs_m, m_valid = _block_rows(ql_start_ptr, ql_end_ptr, e, BLOCK_M)
    # padded query rows load q = dO = lse = delta = 0: p = 1 there but dV += p dO = 0 and dS = 0
    q, do, lse, delta = _load_query_side(
        q_ptr,
        do_ptr,
        lse_ptr,
        delta_ptr,
        offs_m,
        m_valid,
        head,
        stride_qt,
        stride_qh,
        stride_dot,
        stride_doh,
        stride_lh,
        offs_d,
        d_valid,
    )
    p_t = tl.math.exp2(_dot(k, tl.trans(q), IEEE) * qk_scale - lse[None, :])  # [BLOCK_N, BLOCK_M]
    if MASK:
        p_t = tl.where(n_valid[:, None] & m_valid[None, :] & (offs_n[:, None] <= offs_m[None, :]), p_t, 0.0)
    dv += _dot(p_t.to(do.dtype), do, IEEE)
    ds_t = p_t * (_dot(v, tl.trans(do), IEEE) - delta[None, :])
    dk += _dot(ds_t.to(q.dtype), q, IEEE)
    return dk, dv


@triton.jit
def _tree_attention_bwd_dkdv_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    do_ptr,
    dk_ptr,
    dv_ptr,
    lse_ptr,
    delta_ptr,
    k_start_ptr,
    k_end_ptr,
    k_blk_ptr,
    k_mid_ptr,
    ql_start_ptr,
    ql_end_ptr,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_dot,
    stride_doh,
    stride_dkt,
    stride_dkh,
    stride_dvt,
    stride_dvh,
    stride_lh,
    qk_scale,
    sm_scale,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    IEEE: tl.constexpr,
):
    # one program per (key block, KV head): it owns that tile of dK/dV, so no atomics; with GQA it loops
    # over the GROUP query heads that share the KV head (no fp32 dK/dV per query head, no group sum)
    blk = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1).to(tl.int64)
    offs_n, n_valid = _block_rows(k_start_ptr, k_end_ptr, blk, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_valid = offs_d < HEAD_DIM
    k = _load_rows(k_ptr, offs_n, n_valid, kv_head, stride_kt, stride_kh, offs_d, d_valid)
    v = _load_rows(v_ptr, offs_n, n_valid, kv_head, stride_vt, stride_vh, offs_d, d_valid)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    e_lo = tl.load(k_blk_ptr + blk)
    e_mid = tl.load(k_mid_ptr + blk)
    e_hi = tl.load(k_blk_ptr + blk + 1)
    for g in range(GROUP):
        head = kv_head * GROUP + g
        for e in range(e_lo, e_mid):
            dk, dv = _dkdv_step(
                dk,
                dv,
                k,
                v,
                e,
                offs_n,
                n_valid,
                q_ptr,
                do_ptr,
                lse_ptr,
                delta_ptr,
                ql_start_ptr,
                ql_end_ptr,
                head,
                stride_qt,
                stride_qh,
                stride_dot,
                stride_doh,
                stride_lh,
                offs_d,
                d_valid,
                qk_scale,
                BLOCK_M,
                IEEE,
                False,
            )
        for e in range(e_mid, e_hi):
            dk, dv = _dkdv_step(
                dk,
                dv,
                k,
                v,
                e,
                offs_n,
                n_valid,
                q_ptr,
                do_ptr,
                lse_ptr,
                delta_ptr,
                ql_start_ptr,
                ql_end_ptr,
                head,
                stride_qt,
                stride_qh,
                stride_dot,
                stride_doh,
                stride_lh,
                offs_d,
                d_valid,
                qk_scale,
                BLOCK_M,
                IEEE,
                True,
            )
    _store_rows(dk_ptr, dk * sm_scale, offs_n, n_valid, kv_head, stride_dkt, stride_dkh, offs_d, d_valid)
    _store_rows(dv_ptr, dv, offs_n, n_valid, kv_head, stride_dvt, stride_dvh, offs_d, d_valid)


@triton.jit
def _tree_attention_delta_kernel(
    o_ptr,
    do_ptr,
    delta_ptr,
    T,
    stride_ot,
    stride_oh,
    stride_dot,
    stride_doh,
    stride_lh,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """delta[head, t] = sum_d dO[t, head, d] * O[t, head, d] in float32: one read of each, no fp32 copies."""
    blk = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    offs_t = blk * BLOCK_T + tl.arange(0, BLOCK_T)
    t_valid = offs_t < T
    offs_d = tl.arange(0, BLOCK_D)
    d_valid = offs_d < HEAD_DIM
    o = _load_rows(o_ptr, offs_t, t_valid, head, stride_ot, stride_oh, offs_d, d_valid).to(tl.float32)
    do = _load_rows(do_ptr, offs_t, t_valid, head, stride_dot, stride_doh, offs_d, d_valid).to(tl.float32)
    tl.store(delta_ptr + head * stride_lh + offs_t, tl.sum(o * do, axis=1), mask=t_valid)


def _delta(o, do):
    """rowsum(dO * O) per (head, token) -> [Hq, T] float32 (the launcher's device guard is active)."""
    t, hq, d = o.shape
    delta = torch.empty((hq, t), dtype=torch.float32, device=o.device)
    block_t = 64
    if t:
        _tree_attention_delta_kernel[(triton.cdiv(t, block_t), hq)](
            o,
            do,
            delta,
            t,
            o.stride(0),
            o.stride(1),
            do.stride(0),
            do.stride(1),
            delta.stride(0),
            HEAD_DIM=d,
            BLOCK_D=_head_dim_block(d),
            BLOCK_T=block_t,
            num_warps=4,
        )
    return delta


def _head_dim_block(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def tree_attention_fwd(
    q,
    k,
    v,
    q_start,
    q_end,
    q_blk,
    q_mid,
    kv_start,
    kv_end,
    scale: float,
    *,
    block_m: int,
    block_n: int,
    num_warps: int = 4,
    num_stages: int = 2,
):
    """Forward over the forward block table. q [T, Hq, D], k/v [T, Hkv, D] -> (o [T, Hq, D] in q's
    dtype, lse [Hq, T] float32, log2 domain). The table must be built for (block_m, block_n)."""
    t, hq, d = q.shape
    o = torch.empty_like(q)
    lse = torch.empty((hq, t), dtype=torch.float32, device=q.device)
    grid = (q_start.numel(), hq)
    with device_guard(q.device):
        _tree_attention_fwd_kernel[grid](
            q,
            k,
            v,
            o,
            lse,
            q_start,
            q_end,
            q_blk,
            q_mid,
            kv_start,
            kv_end,
            q.stride(0),
            q.stride(1),
            k.stride(0),
            k.stride(1),
            v.stride(0),
            v.stride(1),
            o.stride(0),
            o.stride(1),
            lse.stride(0),
            scale * _LOG2E,
            GROUP=hq // k.shape[1],
            HEAD_DIM=d,
            BLOCK_D=_head_dim_block(d),
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            IEEE=q.dtype == torch.float32,
            num_warps=num_warps,
            num_stages=num_stages,
        )
    return o, lse


def tree_attention_bwd(
    do,
    q,
    k,
    v,
    o,
    lse,
    q_start,
    q_end,
    q_blk,
    q_mid,
    kv_start,
    kv_end,
    k_start,
    k_end,
    k_blk,
    k_mid,
    ql_start,
    ql_end,
    scale: float,
    *,
    block_m: int,
    block_n: int,
    num_warps: int = 4,
    num_stages: int = 2,
):
    """Backward: (dq, dk, dv) in the inputs' dtypes. Tables (both directions) built for (block_m, block_n)."""
    t, hq, d = q.shape
    hkv = k.shape[1]
    do = do if do.stride(-1) == 1 else do.contiguous()
    dq = torch.empty_like(q)
    group = hq // hkv
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    common = dict(
        GROUP=group,
        HEAD_DIM=d,
        BLOCK_D=_head_dim_block(d),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        IEEE=q.dtype == torch.float32,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    with device_guard(q.device):
        # delta = rowsum(dO * O) in float32: the softmax-Jacobian term shared by dQ and dK
        delta = _delta(o, do)
        _tree_attention_bwd_dq_kernel[(q_start.numel(), hq)](
            q,
            k,
            v,
            do,
            dq,
            lse,
            delta,
            q_start,
            q_end,
            q_blk,
            q_mid,
            kv_start,
            kv_end,
            q.stride(0),
            q.stride(1),
            k.stride(0),
            k.stride(1),
            v.stride(0),
            v.stride(1),
            do.stride(0),
            do.stride(1),
            dq.stride(0),
            dq.stride(1),
            lse.stride(0),
            scale * _LOG2E,
            scale,
            **common,
        )
        _tree_attention_bwd_dkdv_kernel[(k_start.numel(), hkv)](
            q,
            k,
            v,
            do,
            dk,
            dv,
            lse,
            delta,
            k_start,
            k_end,
            k_blk,
            k_mid,
            ql_start,
            ql_end,
            q.stride(0),
            q.stride(1),
            k.stride(0),
            k.stride(1),
            v.stride(0),
            v.stride(1),
            do.stride(0),
            do.stride(1),
            dk.stride(0),
            dk.stride(1),
            dv.stride(0),
            dv.stride(1),
            lse.stride(0),
            scale * _LOG2E,
            scale,
            **common,
        )
    return dq, dk, dv
