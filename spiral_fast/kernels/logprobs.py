"""Triton kernels for per-token log-probs and entropies (device code + launchers, no autograd).

Shapes: N tokens, H hidden, V vocab; z = (h @ W.T + b) / T the scaled logits of one token.
Every forward launcher returns, per token, float32 (m, log_s, entropy, E_p[z] - m, z_t): the max,
log sum e^{z-m} (lse = m + log_s, kept apart so z - lse stays exact for large |z|), the entropy
lse - E_p[z], and the target's z_t; ``spiral_fast.ops.logprobs.op`` turns them into outputs.

- ``token_logprobs_fwd``: one program per (BLOCK_N tokens, vocabulary split), looping over the split's
  vocabulary blocks with an online log-sum-exp; the [BLOCK_N, BLOCK_V] logit tile is the only place
  logits exist. The splits' partial (max, sum, target) values are merged in float32 afterwards.
- ``token_logprobs_bwd``: one program per (token block, vocab block) tile, in grouped order; it recomputes the tile,
  forms G = dL/dlogits and adds G @ W into dH and G^T @ h into dW with float32 atomics, so no
  program needs a whole row of either gradient.
- ``logits_logprobs_fwd`` / ``_bwd``: the same math on logits that already exist (no matmul),
  one program per row, blockwise over V.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from spiral_fast._utils import triton_interpreting
from spiral_fast.kernels._launch import cuda_matmul_allows_tf32, device_guard

# Fixed configs (no autotuning: cold start and CI stay fast and deterministic), chosen by compiling
# for sm_90 offline (``python -m spiral_fast.kernels.compile_check``; the ``sm90_compile`` test keeps
# every one within shared memory and registers). Under the interpreter blocks are small so that the
# tiny test shapes still cross block boundaries.
# Forward: 128 tokens per program halves how often W streams through L2 against 64.
# Backward: atomic traffic is N V H (1/BLOCK_N + 1/BLOCK_V) floats, so both tile sides are 128.
# float32 tiles are twice as wide. With TF32 the backward's 128 x 64 operand stages need ~295 KB of
# shared memory (more than the 227 KB of an H100/H200): a 32-wide hidden slice fits at 176 KB with no
# spills. IEEE float32 dots run on FMA units and hold their operands in registers: 128 x 64 tiles over
# 16 (backward) or 32 (forward) hidden columns are the largest found that do not spill.
_GPU_FWD = dict(BLOCK_N=128, BLOCK_V=128, BLOCK_H=64, num_warps=8, num_stages=3)
_GPU_BWD = dict(BLOCK_N=128, BLOCK_V=128, BLOCK_H=64, GROUP_N=8, num_warps=8, num_stages=3)
_GPU_FWD_TF32 = dict(BLOCK_N=128, BLOCK_V=128, BLOCK_H=32, num_warps=8, num_stages=3)
_GPU_BWD_TF32 = dict(BLOCK_N=128, BLOCK_V=128, BLOCK_H=32, GROUP_N=8, num_warps=8, num_stages=3)
_GPU_FWD_IEEE = dict(BLOCK_N=128, BLOCK_V=64, BLOCK_H=32, num_warps=8, num_stages=2)
_GPU_BWD_IEEE = dict(BLOCK_N=128, BLOCK_V=64, BLOCK_H=16, GROUP_N=8, num_warps=8, num_stages=2)
_INTERPRET = dict(BLOCK_N=16, BLOCK_V=64, BLOCK_H=32)
_ROW_BLOCK_V = 1024
_ROW_BLOCK_V_INTERPRET = 64


def linear_config(kind: str, dtype: torch.dtype, interpret: bool | None = None) -> dict:
    """Launch config of the token log-prob ``kind`` ("fwd" | "bwd") kernel for ``dtype`` inputs
    (float32 ones under torch's current TF32 switch)."""
    if triton_interpreting() if interpret is None else interpret:
        # groups of 2 token blocks: small test shapes still have a partial last group
        return dict(_INTERPRET, GROUP_N=2) if kind == "bwd" else dict(_INTERPRET)
    if dtype != torch.float32:
        return dict(_GPU_FWD if kind == "fwd" else _GPU_BWD)
    if _dot_precision(dtype) == "tf32":
        return dict(_GPU_FWD_TF32 if kind == "fwd" else _GPU_BWD_TF32)
    return dict(_GPU_FWD_IEEE if kind == "fwd" else _GPU_BWD_IEEE)


def _dot_precision(dtype: torch.dtype) -> str:
    # float32 inputs follow torch's own TF32 switch, so the op is as exact as torch's matmul
    if dtype == torch.float32 and not cuda_matmul_allows_tf32():
        return "ieee"
    return "tf32"


@triton.jit
def _logit_tile(
    h_ptr,
    w_ptr,
    b_ptr,
    offs_n,
    mask_n,
    offs_v,
    mask_v,
    H,
    stride_hn,
    stride_hh,
    stride_wv,
    stride_wh,
    temperature,
    HAS_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Scaled logits z [BLOCK_N, BLOCK_V] in float32; columns past V are -inf (they weigh 0)."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        mask_h = offs_h < H
        a = tl.load(
            h_ptr + offs_n[:, None] * stride_hn + offs_h[None, :] * stride_hh,
            mask=mask_n[:, None] & mask_h[None, :],
            other=0.0,
        )
        b = tl.load(
            w_ptr + offs_v[None, :] * stride_wv + offs_h[:, None] * stride_wh,
            mask=mask_v[None, :] & mask_h[:, None],
            other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_v, mask=mask_v, other=0.0).to(tl.float32)[None, :]
    z = acc / temperature
    return tl.where(mask_v[None, :], z, float("-inf"))


@triton.heuristics({"HAS_BIAS": lambda args: args["b_ptr"] is not None})
@triton.jit
def _token_logprobs_fwd_kernel(
    h_ptr,
    w_ptr,
    b_ptr,
    tgt_ptr,
    m_ptr,
    s_ptr,
    t_ptr,
    zt_ptr,
    N,
    V,
    H,
    V_PER_SPLIT,
    stride_hn,
    stride_hh,
    stride_wv,
    stride_wh,
    temperature,
    HAS_BIAS: tl.constexpr,
    WANT_ENTROPY: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Program (token block, vocab split): partial (max m, sum e^{z-m}, sum e^{z-m}(z-m), z_t) of its
    rows over its slice of the vocabulary, stored in row ``split`` of the [SPLIT, N] buffers."""
    pid = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    tgt = tl.load(tgt_ptr + offs_n, mask=mask_n, other=0)
    # running max starts at -inf: all-negative rows would otherwise underflow to log(0)
    m = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK_N,), dtype=tl.float32)  # sum e^{z-m}
    t = tl.zeros((BLOCK_N,), dtype=tl.float32)  # sum e^{z-m} (z-m): entropy without lse - E[z] cancellation
    zt = tl.zeros((BLOCK_N,), dtype=tl.float32)
    v_lo = split * V_PER_SPLIT
    v_hi = tl.minimum(v_lo + V_PER_SPLIT, V)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        offs_v = (v0 + tl.arange(0, BLOCK_V)).to(tl.int64)
        mask_v = offs_v < v_hi
        z = _logit_tile(
            h_ptr,
            w_ptr,
            b_ptr,
            offs_n,
            mask_n,
            offs_v,
            mask_v,
            H,
            stride_hn,
            stride_hh,
            stride_wv,
            stride_wh,
            temperature,
            HAS_BIAS,
            DOT_PRECISION,
            BLOCK_N,
            BLOCK_V,
            BLOCK_H,
        )
        zt += tl.sum(tl.where(offs_v[None, :] == tgt[:, None], z, 0.0), axis=1)
        m_new = tl.maximum(m, tl.max(z, axis=1))
        # rows that are all -inf so far (masked vocabulary) must not compute -inf - -inf = nan
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        shift = tl.where(m == float("-inf"), 0.0, m - m_safe)
        alpha = tl.exp(shift)
        zs = z - m_safe[:, None]
        e = tl.exp(zs)
        if WANT_ENTROPY:
            # e * zs is 0 * -inf = nan at masked logits; below -1e4 e is exactly 0 anyway
            t = alpha * (t + shift * s) + tl.sum(e * tl.maximum(zs, -1e4), axis=1)
        s = alpha * s + tl.sum(e, axis=1)
        m = m_new
    out = split * N + offs_n
    tl.store(m_ptr + out, m, mask=mask_n)
    tl.store(s_ptr + out, s, mask=mask_n)
    tl.store(zt_ptr + out, zt, mask=mask_n)
    if WANT_ENTROPY:
        tl.store(t_ptr + out, t, mask=mask_n)


@triton.jit
def _grad_tile(z, m, log_s, mean_shifted, dl, de, is_target, temperature, HAS_DENT: tl.constexpr):
    """G = dL/dlogits: dlogp/dz = onehot - p, dentropy/dz = -p (z - E_p[z]), dz/dlogits = 1/T."""
    zm = z - m[:, None]
    p = tl.exp(zm - log_s[:, None])
    if HAS_DENT:
        # masked (-inf) logits would give 0 * inf = nan; below -1e4 p is exactly 0, so the clamp
        # changes nothing else
        g = -p * (dl[:, None] + de[:, None] * (tl.maximum(zm, -1e4) - mean_shifted[:, None]))
    else:
        g = -p * dl[:, None]
    g += tl.where(is_target, dl[:, None], 0.0)
    return g / temperature


@triton.heuristics(
    {"HAS_BIAS": lambda args: args["b_ptr"] is not None, "SCALE_G": lambda args: args["h_ptr"].dtype == torch.float16}
)
@triton.jit
def _token_logprobs_bwd_kernel(
    h_ptr,
    w_ptr,
    b_ptr,
    tgt_ptr,
    m_ptr,
    logs_ptr,
    ms_ptr,
    dl_ptr,
    de_ptr,
    dh_ptr,
    dw_ptr,
    db_ptr,
    N,
    V,
    H,
    stride_hn,
    stride_hh,
    stride_wv,
    stride_wh,
    temperature,
    HAS_BIAS: tl.constexpr,
    SCALE_G: tl.constexpr,
    HAS_DENT: tl.constexpr,
    NEED_DH: tl.constexpr,
    NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    GROUP_N: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    # grouped tile order (as in Cut Cross-Entropy's backward and Triton's matmul tutorial): consecutive
    # programs walk GROUP_N token blocks down each vocab block before moving to the next vocab block,
    # so one wave touches GROUP_N rows of dH and a few rows of dW: their fp32 atomics meet in L2
    # instead of each tile's sum travelling to HBM
    pid = tl.program_id(0)
    tiles_n = tl.cdiv(N, BLOCK_N)
    tiles_v = tl.cdiv(V, BLOCK_V)
    per_group = GROUP_N * tiles_v
    first_n = (pid // per_group) * GROUP_N
    group_n = tl.minimum(tiles_n - first_n, GROUP_N)
    pid_n = (first_n + (pid % per_group) % group_n).to(tl.int64)
    pid_v = ((pid % per_group) // group_n).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_v = offs_v < V
    z = _logit_tile(
        h_ptr,
        w_ptr,
        b_ptr,
        offs_n,
        mask_n,
        offs_v,
        mask_v,
        H,
        stride_hn,
        stride_hh,
        stride_wv,
        stride_wh,
        temperature,
        HAS_BIAS,
        DOT_PRECISION,
        BLOCK_N,
        BLOCK_V,
        BLOCK_H,
    )
    tgt = tl.load(tgt_ptr + offs_n, mask=mask_n, other=0)
    m = tl.load(m_ptr + offs_n, mask=mask_n, other=0.0)
    log_s = tl.load(logs_ptr + offs_n, mask=mask_n, other=0.0)
    # rows past N (and ignored rows, zeroed by the caller) carry dl = de = 0, hence G = 0
    dl = tl.load(dl_ptr + offs_n, mask=mask_n, other=0.0)
    de = dl
    mean_shifted = m
    if HAS_DENT:
        de = tl.load(de_ptr + offs_n, mask=mask_n, other=0.0)
        mean_shifted = tl.load(ms_ptr + offs_n, mask=mask_n, other=0.0)
    g = _grad_tile(z, m, log_s, mean_shifted, dl, de, offs_v[None, :] == tgt[:, None], temperature, HAS_DENT)
    if NEED_DB:
        tl.atomic_add(db_ptr + offs_v, tl.sum(g, axis=0), mask=mask_v, sem="relaxed")
    # G meets W and h in their own dtype (tensor cores); the products accumulate in float32.
    # Atomics are relaxed: only their sum matters, read after the kernel ends.
    if SCALE_G:
        # fp16 flushes |G| < 6e-8 to zero, and a token-mean over a large batch gives upstream
        # gradients ~1e-7: lift the tile's largest |G| into [2^14, 2^15) (below fp16's 65504) by a
        # power of two, exact both ways, and undo it on the float32 products
        g_max = tl.max(tl.max(tl.abs(g), axis=1), axis=0)
        e = tl.minimum(tl.maximum(14.0 - tl.floor(tl.log2(g_max)), -126.0), 126.0).to(tl.int32)
        g_scale = ((e + 127) << 23).to(tl.float32, bitcast=True)
        g_unscale = ((127 - e) << 23).to(tl.float32, bitcast=True)
        g_lp = (g * g_scale).to(h_ptr.dtype.element_ty)
    else:
        g_unscale = 1.0
        g_lp = g.to(h_ptr.dtype.element_ty)
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        mask_h = offs_h < H
        if NEED_DH:
            w = tl.load(
                w_ptr + offs_v[:, None] * stride_wv + offs_h[None, :] * stride_wh,
                mask=mask_v[:, None] & mask_h[None, :],
                other=0.0,
            )
            dh = tl.dot(g_lp, w, input_precision=DOT_PRECISION) * g_unscale
            tl.atomic_add(
                dh_ptr + offs_n[:, None] * H + offs_h[None, :],
                dh,
                mask=mask_n[:, None] & mask_h[None, :],
                sem="relaxed",
            )
        if NEED_DW:
            h = tl.load(
                h_ptr + offs_n[:, None] * stride_hn + offs_h[None, :] * stride_hh,
                mask=mask_n[:, None] & mask_h[None, :],
                other=0.0,
            )
            dw = tl.dot(tl.trans(g_lp), h, input_precision=DOT_PRECISION) * g_unscale
            tl.atomic_add(
                dw_ptr + offs_v[:, None] * H + offs_h[None, :],
                dw,
                mask=mask_v[:, None] & mask_h[None, :],
                sem="relaxed",
            )


@triton.jit
def _logits_logprobs_fwd_kernel(
    z_ptr,
    tgt_ptr,
    m_ptr,
    logs_ptr,
    ent_ptr,
    ms_ptr,
    zt_ptr,
    V,
    stride_zn,
    stride_zv,
    temperature,
    WANT_ENTROPY: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = z_ptr + row * stride_zn
    # per-lane online state (max, sum, shifted z-sum), merged once at the end: no cross-lane
    # reduction inside the loop
    m = tl.full((BLOCK_V,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK_V,), dtype=tl.float32)
    t = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        offs_v = (v0 + tl.arange(0, BLOCK_V)).to(tl.int64)
        z = tl.load(base + offs_v * stride_zv, mask=offs_v < V, other=float("-inf")).to(tl.float32) / temperature
        m_new = tl.maximum(m, z)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        shift = tl.where(m == float("-inf"), 0.0, m - m_safe)
        alpha = tl.exp(shift)
        zs = z - m_safe
        e = tl.exp(zs)
        if WANT_ENTROPY:
            t = alpha * (t + shift * s) + e * tl.maximum(zs, -1e4)
        s = alpha * s + e
        m = m_new
    big = tl.max(m, axis=0)
    big_safe = tl.where(big == float("-inf"), 0.0, big)
    shift = tl.where(m == float("-inf"), 0.0, m - big_safe)
    w = tl.where(m == float("-inf"), 0.0, tl.exp(shift))
    s_all = tl.sum(w * s, axis=0)
    log_s = tl.log(s_all)
    tl.store(m_ptr + row, big_safe)
    tl.store(logs_ptr + row, log_s)
    tgt = tl.load(tgt_ptr + row)
    tl.store(zt_ptr + row, tl.load(base + tgt * stride_zv).to(tl.float32) / temperature)
    if WANT_ENTROPY:
        mean_shifted = tl.sum(w * (t + shift * s), axis=0) / s_all
        tl.store(ent_ptr + row, log_s - mean_shifted)
        tl.store(ms_ptr + row, mean_shifted)


@triton.jit
def _logits_logprobs_bwd_kernel(
    z_ptr,
    dz_ptr,
    tgt_ptr,
    m_ptr,
    logs_ptr,
    ms_ptr,
    dl_ptr,
    de_ptr,
    V,
    stride_zn,
    stride_zv,
    stride_dzn,
    temperature,
    HAS_DENT: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    rows = row + tl.arange(0, 1)  # [1]-shaped, so the tile helper sees a [1, BLOCK_V] block
    tgt = tl.load(tgt_ptr + rows)
    m = tl.load(m_ptr + rows)
    log_s = tl.load(logs_ptr + rows)
    dl = tl.load(dl_ptr + rows)
    de = dl
    mean_shifted = m
    if HAS_DENT:
        de = tl.load(de_ptr + rows)
        mean_shifted = tl.load(ms_ptr + rows)
    for v0 in range(0, V, BLOCK_V):
        offs_v = (v0 + tl.arange(0, BLOCK_V)).to(tl.int64)
        mask_v = offs_v < V
        z = (
            tl.load(
                z_ptr + row * stride_zn + offs_v[None, :] * stride_zv, mask=mask_v[None, :], other=float("-inf")
            ).to(tl.float32)
            / temperature
        )
        g = _grad_tile(z, m, log_s, mean_shifted, dl, de, offs_v[None, :] == tgt[:, None], temperature, HAS_DENT)
        tl.store(dz_ptr + row * stride_dzn + offs_v[None, :], g.to(dz_ptr.dtype.element_ty), mask=mask_v[None, :])


# --------------------------------------------------------------------------- launchers
def _per_token_stats(n, device, want_entropy):
    """Empty float32 (m, log_s, entropy, E_p[z] - m, z_t) buffers; entropy ones only if wanted."""
    return [
        torch.empty(n, device=device, dtype=torch.float32) if i in (0, 1, 4) or want_entropy else None for i in range(5)
    ]


def _or(t, fallback):
    """Pointer argument for a buffer the kernel will not touch (its flag is off)."""
    return fallback if t is None else t


def _vocab_splits(n_blocks: int, v_blocks: int, device: torch.device) -> int:
    """How many programs share a token block's vocabulary: enough for ~2 programs per SM (one per 128
    tokens leaves most of an H200's 132 SMs idle below ~17k tokens), at most 16, one vocab block each."""
    if triton_interpreting():
        target = 4  # small test shapes still split, so the merge is tested
    else:
        target = 2 * _sm_count(device)
    return max(1, min(-(-target // n_blocks), v_blocks, 16))


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # an H100/H200 (the offline sm_90 compile check calls launchers on CPU tensors)
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _merge_splits(m, s, t, zt, want_entropy):
    """[SPLIT, N] partials -> (m, log_s, entropy|None, E_p[z] - m|None, z_t), each [N] float32.

    With M = max_i m_i and w_i = e^{m_i - M}: sum e^{z-M} = sum w_i s_i, and sum e^{z-M}(z-M) =
    sum w_i (t_i + (m_i - M) s_i). A split whose logits are all -inf (masked) weighs 0."""
    big = m.max(0).values
    big_safe = torch.where(big == float("-inf"), torch.zeros_like(big), big)
    live = m != float("-inf")
    shift = torch.where(live, m - big_safe, torch.zeros_like(m))
    w = torch.where(live, shift.exp(), torch.zeros_like(m))
    s_all = (w * s).sum(0)
    log_s = s_all.log()
    zt_all = zt.sum(0)  # only the split holding the target adds a non-zero z_t
    if not want_entropy:
        return [big_safe, log_s, None, None, zt_all]
    mean_shifted = (w * (t + shift * s)).sum(0) / s_all
    return [big_safe, log_s, log_s - mean_shifted, mean_shifted, zt_all]


def token_logprobs_fwd(hidden, weight, bias, targets, temperature, want_entropy):
    """hidden [N, H], weight [V, H], bias [V]|None, targets [N] in [0, V) ->
    (m, log_s, entropy|None, E_p[z] - m|None, z_t), each [N] float32."""
    n, h = hidden.shape
    v = weight.shape[0]
    if n == 0:
        return _per_token_stats(n, hidden.device, want_entropy)
    cfg = linear_config("fwd", hidden.dtype)
    n_blocks, v_blocks = triton.cdiv(n, cfg["BLOCK_N"]), triton.cdiv(v, cfg["BLOCK_V"])
    splits = _vocab_splits(n_blocks, v_blocks, hidden.device)
    v_per_split = triton.cdiv(v_blocks, splits) * cfg["BLOCK_V"]
    splits = triton.cdiv(v, v_per_split)  # no empty split
    m, s, t, zt = (torch.empty(splits, n, device=hidden.device, dtype=torch.float32) for _ in range(4))
    with device_guard(hidden.device):
        _token_logprobs_fwd_kernel[(n_blocks, splits)](
            hidden,
            weight,
            bias,
            targets,
            m,
            s,
            t,
            zt,
            n,
            v,
            h,
            v_per_split,
            hidden.stride(0),
            hidden.stride(1),
            weight.stride(0),
            weight.stride(1),
            float(temperature),
            WANT_ENTROPY=want_entropy,
            DOT_PRECISION=_dot_precision(hidden.dtype),
            **cfg,
        )
    return _merge_splits(m, s, t, zt, want_entropy)


def token_logprobs_bwd(hidden, weight, bias, targets, stats, dlogp, dent, temperature, need_dh, need_dw, need_db):
    """stats = (m, log_s, E_p[z] - m|None) from the forward; dlogp/dent [N] float32 (zero on ignored rows; dent may be None) ->
    (dh [N, H], dw [V, H], db [V]) float32, each None when not needed."""
    n, h = hidden.shape
    v = weight.shape[0]
    dev = hidden.device
    m, log_s, ms = stats
    # float32 accumulators: many tiles add into each element, low precision would lose the sum
    dh = torch.zeros(n, h, device=dev, dtype=torch.float32) if need_dh else None
    dw = torch.zeros(v, h, device=dev, dtype=torch.float32) if need_dw else None
    db = torch.zeros(v, device=dev, dtype=torch.float32) if need_db else None
    if n == 0 or not (need_dh or need_dw or need_db):
        return dh, dw, db
    cfg = linear_config("bwd", hidden.dtype)
    grid = (triton.cdiv(n, cfg["BLOCK_N"]) * triton.cdiv(v, cfg["BLOCK_V"]),)
    with device_guard(hidden.device):
        _token_logprobs_bwd_kernel[grid](
            hidden,
            weight,
            bias,
            targets,
            m,
            log_s,
            _or(ms, m),
            dlogp,
            _or(dent, dlogp),
            _or(dh, m),
            _or(dw, m),
            _or(db, m),
            n,
            v,
            h,
            hidden.stride(0),
            hidden.stride(1),
            weight.stride(0),
            weight.stride(1),
            float(temperature),
            HAS_DENT=dent is not None,
            NEED_DH=need_dh,
            NEED_DW=need_dw,
            NEED_DB=need_db and bias is not None,
            DOT_PRECISION=_dot_precision(hidden.dtype),
            **cfg,
        )
    return dh, dw, db


def _row_block_v(v: int) -> int:
    cap = _ROW_BLOCK_V_INTERPRET if triton_interpreting() else _ROW_BLOCK_V
    return min(cap, triton.next_power_of_2(max(v, 16)))


def logits_logprobs_fwd(logits, targets, temperature, want_entropy):
    """logits [N, V], targets [N] in [0, V) -> (m, log_s, entropy|None, E_p[z] - m|None, z_t), [N] float32."""
    n, v = logits.shape
    out = _per_token_stats(n, logits.device, want_entropy)
    if n == 0:
        return out
    m, log_s, ent, ms, zt = out
    with device_guard(logits.device):
        _logits_logprobs_fwd_kernel[(n,)](
            logits,
            targets,
            m,
            log_s,
            _or(ent, m),
            _or(ms, m),
            zt,
            v,
            logits.stride(0),
            logits.stride(1),
            float(temperature),
            WANT_ENTROPY=want_entropy,
            BLOCK_V=_row_block_v(v),
            num_warps=4,
        )
    return out


def logits_logprobs_bwd(logits, targets, stats, dlogp, dent, temperature):
    """-> dlogits [N, V] in the logits' dtype (contiguous)."""
    n, v = logits.shape
    dz = torch.empty(n, v, device=logits.device, dtype=logits.dtype)
    if n == 0:
        return dz
    m, log_s, ms = stats
    with device_guard(logits.device):
        _logits_logprobs_bwd_kernel[(n,)](
            logits,
            dz,
            targets,
            m,
            log_s,
            _or(ms, m),
            dlogp,
            _or(dent, dlogp),
            v,
            logits.stride(0),
            logits.stride(1),
            dz.stride(0),
            float(temperature),
            HAS_DENT=dent is not None,
            BLOCK_V=_row_block_v(v),
            num_warps=4,
        )
    return dz
