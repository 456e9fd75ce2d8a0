"""The torch backend: per-token log-probs in bounded chunks of tokens and vocabulary (the CPU path).

Forward walks vocabulary chunks with an online log-sum-exp, so no [N, V] tensor ever exists; it
keeps per token only the max m, log sum e^{z-m} and E_p[z] - m (three floats: keeping m apart
from the rest keeps z - lse exact where |z| is large). Backward recomputes each [Nc, Vc] logit chunk
and turns it straight into the gradient chunk G = dL/dlogits, then dH += G @ W and dW += G^T @ h.
All math is float32 (float64 inputs stay float64, for gradcheck); dW accumulates in float32.

FLOPs: forward 2NHV, backward 6NHV (recompute, dH, dW) — the same matmuls the naive path runs plus
one recompute, but every matmul is a large [Nc, H] x [H, Vc] product, so the CPU BLAS stays busy.

Shapes: N tokens, H hidden, V vocab; Nc/Vc the chunk sizes below.
"""

from __future__ import annotations

import torch

# A logit chunk holds at most CHUNK_ELEMENTS floats (16 MiB in float32); three such temporaries
# live at once. Token chunk: the GEMMs' M (forward, dH) and K (dW) dimension; W streams through
# the cache once per token chunk. On the shared 2-core machine (interleaved runs at the CPU target
# N=4096, H=1024, V=65536) 4096-token x 1024-vocab chunks beat 2048 x 2048 ones (best of 3:
# 13.5 s vs 18.6 s) and forward+backward peaks at ~360 MiB (256 MiB of it the float32 dW),
# ~0.12x the naive path's peak.
CHUNK_ELEMENTS = 1 << 22
TOKEN_CHUNK = 4096
MIN_VOCAB_CHUNK = 256


def _chunks(total: int, size: int):
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def _vocab_chunk(n_tokens: int, vocab: int) -> int:
    return max(MIN_VOCAB_CHUNK, min(vocab, CHUNK_ELEMENTS // max(1, n_tokens)))


def _math_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class OnlineLSE:
    """Running (max m, sum s = sum_j e^{z_j-m}, t = sum_j e^{z_j-m} (z_j-m)) over vocabulary chunks.

    The running max starts at -inf: all-negative rows would otherwise underflow to log(0).
    Shifting t by m keeps the entropy free of the cancellation lse - E[z] would suffer.
    """

    def __init__(self, n: int, device, dtype, want_entropy: bool):
        self.m = torch.full((n,), float("-inf"), device=device, dtype=dtype)
        self.s = torch.zeros(n, device=device, dtype=dtype)
        self.t = torch.zeros(n, device=device, dtype=dtype) if want_entropy else None

    def update(self, z: torch.Tensor) -> None:
        """Fold in one chunk z [n, Vc] (consumed: overwritten in place)."""
        m_new = torch.maximum(self.m, z.amax(dim=1))
        # a row whose logits so far are all -inf (masked vocabulary) would give -inf - -inf = nan
        m_safe = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)
        shift = torch.where(self.m == float("-inf"), torch.zeros_like(self.m), self.m - m_safe)
        alpha = shift.exp()
        zs = z.sub_(m_safe[:, None])
        # without entropy z - m is not needed again: exponentiate in place (one pass, no allocation)
        e = zs.exp() if self.t is not None else zs.exp_()
        if self.t is not None:
            # e * zs is 0 * -inf = nan at masked entries; below -1e4 e is exactly 0 anyway
            ez = e * zs.clamp_(min=-1e4)
            self.t = alpha * (self.t + shift * self.s) + ez.sum(dim=1)
        self.s = alpha * self.s + e.sum(dim=1)
        self.m = m_new

    def finish(self):
        """-> (m [n], log_s [n], entropy [n] or None, E_p[z] - m [n] or None); lse = m + log_s."""
        m_safe = torch.where(self.m == float("-inf"), torch.zeros_like(self.m), self.m)
        log_s = self.s.log()
        if self.t is None:
            return m_safe, log_s, None, None
        mean_shifted = self.t / self.s
        return m_safe, log_s, log_s - mean_shifted, mean_shifted


def _target_logit(z: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """z [n, Vc], local [n] target index relative to the chunk -> z[i, local_i] where in range, else 0."""
    inside = (local >= 0) & (local < z.shape[1])
    picked = z.gather(1, local.clamp(0, z.shape[1] - 1)[:, None]).squeeze(1)
    return torch.where(inside, picked, torch.zeros_like(picked))


def _grad_logits(z, stats, dlogp, dent, local, temperature):
    """G = dL/dlogits for one chunk z [n, Vc] of scaled logits (consumed in place).

    dlogp/dz_j = onehot_j - p_j ;  dentropy/dz_j = -p_j (z_j - E_p[z]) ;  dz/dlogits = 1/T.
    ``stats`` = (m, log_s, E_p[z] - m) per token, from the forward.
    """
    m, log_s, mean_shifted = stats
    zm = z.sub_(m[:, None])
    # p = e^{z-m} / s: the per-row factor -1/(s T) is folded into one multiply, so the chunk is
    # touched three times without entropy (subtract, exp, multiply) and never copied
    row = torch.exp(-log_s).mul_(-1.0 / temperature)
    if dent is None:
        g = zm.exp_().mul_((row * dlogp)[:, None])
    else:
        p = torch.exp(zm).mul_(row[:, None])
        # masked (-inf) logits would give 0 * inf = nan; below -1e4 p is exactly 0 in float32 and
        # float64 alike, so clamping there changes nothing else
        coef = zm.clamp_(min=-1e4).sub_(mean_shifted[:, None]).mul_(dent[:, None]).add_(dlogp[:, None])
        g = p.mul_(coef)
    inside = (local >= 0) & (local < z.shape[1])
    rows = inside.nonzero().squeeze(1)
    g[rows, local[rows]] += dlogp[rows] / temperature
    return g


def _rows(tensors, n0, n1):
    return [None if t is None else t[n0:n1] for t in tensors]


def _store_rows(outs, n0, n1, values):
    for out, value in zip(outs, values):
        if out is not None:
            out[n0:n1] = value


def _scaled_logits(h_chunk, w_chunk, b_chunk, temperature):
    z = h_chunk @ w_chunk.T
    if b_chunk is not None:
        z.add_(b_chunk)
    if temperature != 1.0:
        z.div_(temperature)
    return z


def _per_token_stats(n, device, dtype, want_entropy):
    """Empty (m, log_s, entropy, E_p[z] - m) buffers; the last two only with entropy."""
    return [torch.empty(n, device=device, dtype=dtype) if i < 2 or want_entropy else None for i in range(4)]


def linear_fwd(hidden, weight, bias, targets, temperature, want_entropy):
    """hidden [N, H], weight [V, H], bias [V]|None, targets [N] (ignored rows already mapped to 0).

    -> (m, log_s, entropy or None, E_p[z] - m or None, target logit z_t), each [N] float32.
    """
    n, v = hidden.shape[0], weight.shape[0]
    dt = _math_dtype(hidden.dtype)
    zt = torch.zeros(n, device=hidden.device, dtype=dt)
    stats = _per_token_stats(n, hidden.device, dt, want_entropy)
    vc = _vocab_chunk(min(n, TOKEN_CHUNK), v)
    for n0, n1 in _chunks(n, TOKEN_CHUNK):
        h = hidden[n0:n1].to(dt)
        state = OnlineLSE(n1 - n0, hidden.device, dt, want_entropy)
        for v0, v1 in _chunks(v, vc):
            b = None if bias is None else bias[v0:v1].to(dt)
            z = _scaled_logits(h, weight[v0:v1].to(dt), b, temperature)
            zt[n0:n1] += _target_logit(z, targets[n0:n1] - v0)
            state.update(z)
        _store_rows(stats, n0, n1, state.finish())
    return (*stats, zt)


def linear_bwd(hidden, weight, bias, targets, stats, dlogp, dent, temperature, need_dh, need_dw, need_db):
    """Gradients of sum_i dlogp_i logp_i + dent_i entropy_i; ``stats`` = (m, log_s, E_p[z] - m) from
    the forward; dlogp/dent [N] float32 are zero on ignored rows (dent may be None). -> (dh [N, H] | None, dw [V, H] float32 | None, db [V] | None)."""
    n, v = hidden.shape[0], weight.shape[0]
    dt = _math_dtype(hidden.dtype)
    dh = torch.zeros(n, hidden.shape[1], device=hidden.device, dtype=dt) if need_dh else None
    dw = torch.zeros(v, weight.shape[1], device=weight.device, dtype=dt) if need_dw else None
    db = torch.zeros(v, device=weight.device, dtype=dt) if need_db else None
    vc = _vocab_chunk(min(n, TOKEN_CHUNK), v)
    for n0, n1 in _chunks(n, TOKEN_CHUNK):
        h = hidden[n0:n1].to(dt)
        de = None if dent is None else dent[n0:n1]
        for v0, v1 in _chunks(v, vc):
            w = weight[v0:v1].to(dt)
            b = None if bias is None else bias[v0:v1].to(dt)
            z = _scaled_logits(h, w, b, temperature)
            g = _grad_logits(z, _rows(stats, n0, n1), dlogp[n0:n1], de, targets[n0:n1] - v0, temperature)
            if need_dh:
                dh[n0:n1].addmm_(g, w)
            if need_dw:
                dw[v0:v1].addmm_(g.T, h)
            if need_db:
                db[v0:v1] += g.sum(dim=0)
    return dh, dw, db


def logits_fwd(logits, targets, temperature, want_entropy):
    """logits [N, V], targets [N] (ignored rows mapped to 0) -> like ``linear_fwd``; row chunks only,
    since the logits exist already: the chunks bound the float32 temporaries, not the input."""
    n, v = logits.shape
    dt = _math_dtype(logits.dtype)
    zt = torch.empty(n, device=logits.device, dtype=dt)
    stats = _per_token_stats(n, logits.device, dt, want_entropy)
    for n0, n1 in _chunks(n, max(1, CHUNK_ELEMENTS // max(1, v))):
        z = logits[n0:n1].to(dt) / temperature
        zt[n0:n1] = z.gather(1, targets[n0:n1, None]).squeeze(1)
        state = OnlineLSE(n1 - n0, logits.device, dt, want_entropy)
        state.update(z)
        _store_rows(stats, n0, n1, state.finish())
    return (*stats, zt)


def logits_bwd(logits, targets, stats, dlogp, dent, temperature):
    """-> dlogits [N, V] in the logits' dtype."""
    n, v = logits.shape
    dt = _math_dtype(logits.dtype)
    out = torch.empty_like(logits)
    for n0, n1 in _chunks(n, max(1, CHUNK_ELEMENTS // max(1, v))):
        z = logits[n0:n1].to(dt) / temperature
        out[n0:n1] = _grad_logits(
            z, _rows(stats, n0, n1), dlogp[n0:n1], None if dent is None else dent[n0:n1], targets[n0:n1], temperature
        )
    return out
