"""The SPIRAL policy loss written once, in plain loop-free PyTorch: the spec, the CPU path and the test
oracle of ``policy_loss`` (re-exported by ``spiral_fast.algorithm.reference`` with the advantages').

Vocabulary: R trained token rows, Q trained sequences. Nothing here validates its input: the public
op (``spiral_fast.ops.policy_loss.op``) does that first.
"""

from __future__ import annotations

import torch

NORMALIZERS = ("token-mean", "seq-mean-token-mean", "constant")


def seq_coefficients(
    seq_weight: torch.Tensor,
    token_seq: torch.Tensor,
    *,
    normalizer: str,
    total_tokens: float | None = None,
    total_sequences: float | None = None,
    seq_tokens: torch.Tensor | None = None,
    constant: float | None = None,
) -> torch.Tensor:
    """Per-sequence factor c [Q] such that loss = sum over tokens of c[seq] * term (float32; float64
    for float64 weights).

    c folds the role weight and the normaliser, so a micro-batch or a rank given the global counts
    contributes exactly its share of the global loss:
    - "token-mean": seq_weight / total_tokens (default: this call's R).
    - "seq-mean-token-mean": seq_weight / (seq_tokens[q] * total_sequences); seq_tokens [Q] defaults
      to this call's token counts, total_sequences to the number of sequences with seq_tokens > 0.
    - "constant": seq_weight / constant (default: total_tokens, default R).
    """
    w = seq_weight.to(torch.promote_types(seq_weight.dtype, torch.float32))
    if normalizer == "token-mean":
        return w / float(total_tokens if total_tokens is not None else token_seq.shape[0])
    if normalizer == "constant":
        denom = constant if constant is not None else total_tokens
        return w / float(denom if denom is not None else token_seq.shape[0])
    if seq_tokens is None:
        seq_tokens = torch.bincount(token_seq, minlength=w.shape[0])
    counts = seq_tokens.to(w.dtype)
    n_seq = (seq_tokens > 0).sum().to(w.dtype) if total_sequences is None else float(total_sequences)
    # sequences with no tokens have no term to scale: 0 rather than 0/0
    return torch.where(counts > 0, w / (counts.clamp_min(1) * n_seq), torch.zeros_like(w))


def token_loss_terms(logp, old_logp, token_seq, seq_adv, *, ref_logp=None, clip=(0.2, 0.28), kl_coef=0.0):
    """Per-token loss before weighting and normalisation, differentiable in logp.

    logp, old_logp, ref_logp [R] float (one dtype), token_seq [R] int64, seq_adv [Q] ->
    (term [R], ratio [R], kl [R] (zeros without ref_logp), clip_low [R] bool, clip_high [R] bool).

    ratio = exp(logp - old_logp); term = -min(ratio * A, clamp(ratio, 1 - clip[0], 1 + clip[1]) * A)
    + kl_coef * k3 with k3 = exp(ref - logp) - (ref - logp) - 1. clip_low / clip_high mark tokens
    where the clipped branch is the one taken (ratio < 1 - clip[0] with A < 0, ratio > 1 + clip[1]
    with A > 0): there the token has no policy-gradient. clip None: term = -ratio * A (+ KL), the
    plain importance-weighted policy gradient, and no token is clipped.
    """
    adv = seq_adv.to(logp.dtype)[token_seq]
    ratio = torch.exp(logp - old_logp)
    if clip is None:
        term = -ratio * adv
    else:
        term = -torch.minimum(ratio * adv, torch.clamp(ratio, 1.0 - clip[0], 1.0 + clip[1]) * adv)
    if ref_logp is not None:
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1.0
        term = term + kl_coef * kl
    else:
        kl = torch.zeros_like(logp)
    if clip is None:
        clip_low = clip_high = torch.zeros_like(logp, dtype=torch.bool)
    else:
        clip_low = (ratio < 1.0 - clip[0]) & (adv < 0)
        clip_high = (ratio > 1.0 + clip[1]) & (adv > 0)
    return term, ratio, kl, clip_low, clip_high


def policy_loss_reference(
    logp,
    old_logp,
    token_seq,
    seq_adv,
    seq_weight,
    *,
    ref_logp=None,
    clip=(0.2, 0.28),
    kl_coef=0.0,
    normalizer="token-mean",
    total_tokens=None,
    total_sequences=None,
    seq_tokens=None,
    constant=None,
):
    """The policy loss as one autograd graph: loss = sum_t c[seq_t] * term_t (see ``seq_coefficients``).

    Returns (loss 0-dim, dict of token-mean stats: clip_frac_low, clip_frac_high, ratio_mean, kl_mean).
    """
    coef = seq_coefficients(
        seq_weight,
        token_seq,
        normalizer=normalizer,
        total_tokens=total_tokens,
        total_sequences=total_sequences,
        seq_tokens=seq_tokens,
        constant=constant,
    )
    term, ratio, kl, low, high = token_loss_terms(
        logp, old_logp, token_seq, seq_adv, ref_logp=ref_logp, clip=clip, kl_coef=kl_coef
    )
    loss = (coef[token_seq] * term).sum()
    rows = max(logp.shape[0], 1)
    stats = dict(
        clip_frac_low=low.float().sum() / rows,
        clip_frac_high=high.float().sum() / rows,
        ratio_mean=ratio.detach().sum() / rows,
        kl_mean=kl.detach().sum() / rows,
    )
    return loss, stats
