"""``policy_loss``: the SPIRAL clipped policy loss fused over packed token rows.

The forward computes the loss, its stats and d loss / d logp in one pass (Triton kernel on CUDA,
the same closed form in torch on the CPU); the autograd backward only scales the saved gradient
by grad_output. The per-sequence advantage is read through ``token_seq`` inside the op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from spiral_fast._utils import FLOAT_DTYPES, INDEX_DTYPES, check_index_range, check_same_device, check_tensor
from spiral_fast.ops import dispatch
from spiral_fast.ops.policy_loss.reference import NORMALIZERS, seq_coefficients
from spiral_fast.ops.self_check import compare, float32_only, randn, register_self_check

BACKENDS = ("torch", "triton")


@dataclass(frozen=True)
class PolicyLossStats:
    """Token means over this call's rows, 0-dim float32 tensors (no host sync).

    clip_frac_low / clip_frac_high: fraction of rows where the clipped branch is taken
    (ratio < 1 - clip[0] with A < 0 / ratio > 1 + clip[1] with A > 0); ratio_mean: mean
    exp(logp - old_logp); kl_mean: mean k3 against ref_logp (0 without it). Clip fractions are 0
    with clip None.
    """

    clip_frac_low: torch.Tensor
    clip_frac_high: torch.Tensor
    ratio_mean: torch.Tensor
    kl_mean: torch.Tensor


def _positive(name: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex:
        value = value.item()  # a count all-reduced across ranks arrives as a tensor: one host sync
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _validate(logp, old_logp, token_seq, seq_adv, seq_weight, ref_logp, clip, kl_coef, normalizer, seq_tokens):
    check_tensor("logp", logp, ndim=1, dtypes=(torch.float32,))
    rows = logp.shape[0]
    check_tensor("old_logp", old_logp, dtypes=FLOAT_DTYPES, shape=(rows,))
    check_tensor("token_seq", token_seq, dtypes=INDEX_DTYPES, shape=(rows,))
    check_tensor("seq_adv", seq_adv, ndim=1, dtypes=FLOAT_DTYPES)
    num_seqs = seq_adv.shape[0]
    check_tensor("seq_weight", seq_weight, dtypes=FLOAT_DTYPES, shape=(num_seqs,))
    if ref_logp is not None:
        check_tensor("ref_logp", ref_logp, dtypes=FLOAT_DTYPES, shape=(rows,))
    if seq_tokens is not None:
        check_tensor("seq_tokens", seq_tokens, dtypes=INDEX_DTYPES, shape=(num_seqs,))
    check_same_device(
        logp=logp,
        old_logp=old_logp,
        token_seq=token_seq,
        seq_adv=seq_adv,
        seq_weight=seq_weight,
        ref_logp=ref_logp,
        seq_tokens=seq_tokens,
    )
    if normalizer not in NORMALIZERS:
        raise ValueError(f"normalizer must be one of {list(NORMALIZERS)}, got {normalizer!r}")
    check_clip(clip)
    if isinstance(kl_coef, bool) or not isinstance(kl_coef, (int, float)) or not (0 <= kl_coef < math.inf):
        raise ValueError(f"kl_coef must be a finite number >= 0, got {kl_coef!r}")
    check_index_range("token_seq", token_seq, num_seqs)
    if seq_tokens is not None and normalizer == "seq-mean-token-mean":
        # a sequence's global count can never be below the rows of it seen here
        short = seq_tokens < torch.bincount(token_seq.long(), minlength=num_seqs)
        if bool(short.any()):
            q = int(short.nonzero()[0])
            raise ValueError(
                f"seq_tokens[{q}] = {seq_tokens[q].item()} is smaller than the number of rows of "
                f"sequence {q} in token_seq"
            )


def check_clip(clip) -> None:
    """``ValueError`` unless clip is None or a pair (eps_low in [0, 1), finite eps_high >= 0)."""
    if clip is not None and (
        not isinstance(clip, (tuple, list))
        or len(clip) != 2
        or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in clip)
        or not (0 <= clip[0] < 1)
        or not (0 <= clip[1] < math.inf)
    ):
        raise ValueError(
            f"clip must be None (no clipping) or a pair (eps_low in [0, 1), finite eps_high >= 0), got {clip!r}"
        )


# CPU rows per chunk (512 KiB per fp32 temporary): a chunk's temporaries stay in cache and reuse the
# allocator's blocks instead of a dozen fresh [R] buffers streaming through memory; few enough chunks
# that per-op overhead (and OpenMP barriers) stay small
CPU_CHUNK = 1 << 17


def _fused_torch(logp, old_logp, ref_logp, token_seq, seq_adv, coef, clip, kl_coef):
    """Torch twin of ``kernels.policy_loss.policy_loss_fwd``: (grad [R], sums [5]).

    Same rewriting of the clipped surrogate as the kernel: with b = 1 + clip[1] for A > 0 and
    1 - clip[0] otherwise, -min(r A, clamp(r) A) = relu(r A - b A) - r A, the token is clipped
    iff r A > b A, and its gradient is -r A where it is not clipped. Chunk by chunk on the CPU,
    with per-chunk partial sums summed in a fixed order.
    """
    rows = logp.shape[0]
    chunk = CPU_CHUNK if logp.device.type == "cpu" else max(rows, 1)
    adv_bound = seq_adv * torch.where(seq_adv > 0, 1.0 + clip[1], 1.0 - clip[0])  # [Q]: per sequence, once
    grad = torch.empty_like(logp)
    partials = []
    for lo in range(0, rows, chunk):
        rows_ = slice(lo, lo + chunk)
        seq = token_seq[rows_]
        ratio = torch.sub(logp[rows_], old_logp[rows_]).exp_()
        adv = seq_adv[seq]
        surrogate = adv * ratio
        excess = surrogate - adv_bound[seq]
        clipped = excess > 0
        term = excess.clamp_min_(0).sub_(surrogate)
        dterm = surrogate.neg_().masked_fill_(clipped, 0.0)
        if ref_logp is not None:
            delta = torch.sub(ref_logp[rows_], logp[rows_])
            kl = delta.exp()
            dterm.add_(kl, alpha=-kl_coef).add_(kl_coef)  # kl_coef * (1 - exp(delta))
            kl.sub_(delta).sub_(1.0)
            term.add_(kl, alpha=kl_coef)
            kl_sum = kl.sum()
        else:
            kl_sum = logp.new_zeros(())
        row_coef = coef[seq]
        torch.mul(dterm, row_coef, out=grad[rows_])
        high = (clipped & (adv > 0)).sum()
        partials.append(
            torch.stack([torch.dot(row_coef, term), (clipped.sum() - high).float(), high.float(), ratio.sum(), kl_sum])
        )
    sums = torch.stack(partials).sum(0) if partials else logp.new_zeros(5)
    return grad, sums


class _PolicyLoss(torch.autograd.Function):
    """loss = sum_t coef[seq_t] * term_t; the forward saves d loss / d logp, the backward scales it."""

    @staticmethod
    def forward(ctx, logp, old_logp, ref_logp, token_seq, seq_adv, coef, clip, kl_coef, backend):
        if backend == "triton":
            from spiral_fast.kernels.policy_loss import policy_loss_fwd

            grad, partials = policy_loss_fwd(
                logp,
                old_logp,
                ref_logp,
                token_seq,
                seq_adv,
                coef,
                clip_low=float(clip[0]),
                clip_high=float(clip[1]),
                kl_coef=float(kl_coef),
            )
            sums = partials.sum(0)
        else:
            grad, sums = _fused_torch(logp, old_logp, ref_logp, token_seq, seq_adv, coef, clip, kl_coef)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(sums)
        return sums[0].clone(), sums

    @staticmethod
    def backward(ctx, grad_loss, _grad_sums):
        (grad,) = ctx.saved_tensors
        return grad * grad_loss, None, None, None, None, None, None, None, None


def policy_loss(
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
    backend="auto",
):
    """Clipped policy loss with optional k3 KL, fused over packed token rows (R rows, Q sequences).

    logp [R] float32 (current policy, the only input that gets a gradient), old_logp [R] and
    ref_logp [R] (behaviour / reference policy, data), token_seq [R] int (sequence of each row, in
    [0, Q)), seq_adv [Q] (advantage of each trained sequence), seq_weight [Q] (its role's coefficient).

    Per row t of sequence q: ratio = exp(logp - old_logp);
    term = -min(ratio * A_q, clamp(ratio, 1 - clip[0], 1 + clip[1]) * A_q)
           + kl_coef * (exp(ref - logp) - (ref - logp) - 1)   (KL only with ref_logp);
    clip None: term = -ratio * A_q (+ KL), the plain importance-weighted policy gradient (with
    normalizer "constant" and constant 1: the unclipped token-sum loss of Tinker, docs/paper.md);
    loss = sum_t seq_weight[q] * term_t / norm, with the normaliser
    - "token-mean": norm = total_tokens (default R, this call's rows);
    - "seq-mean-token-mean": norm = seq_tokens[q] * total_sequences (mean per sequence, then the
      sum over sequences divided by their number); seq_tokens [Q] int defaults to this call's rows
      per sequence, total_sequences to the number of sequences with seq_tokens > 0;
    - "constant": norm = constant (Dr.GRPO), default total_tokens, default R.
    Extra keyword-only arguments (beyond the paper's loss): total_sequences, seq_tokens, constant. Pass
    global values so that the losses of micro-batches or ranks sum to the whole-batch loss (a
    sequence split across micro-batches needs its global seq_tokens). Counts are numbers or
    one-element tensors (one host sync). Arguments that a normaliser does not use are ignored.
    backend: "auto" (Triton on CUDA once it passed its self-check, see ``spiral_fast.self_check``; torch
    on CPU), "torch", "triton" (CPU: TRITON_INTERPRET=1).

    Returns (loss 0-dim float32, PolicyLossStats). Raises ``ValueError`` naming the argument for
    bad shapes / dtypes / devices, token_seq outside [0, Q), unknown normalizer, bad clip or kl_coef,
    non-positive total_tokens / total_sequences / constant, seq_tokens below this call's counts.
    """
    _validate(logp, old_logp, token_seq, seq_adv, seq_weight, ref_logp, clip, kl_coef, normalizer, seq_tokens)
    total_tokens = _positive("total_tokens", total_tokens)
    total_sequences = _positive("total_sequences", total_sequences)
    constant = _positive("constant", constant)
    backend = dispatch.resolve("policy_loss", backend, logp.device, BACKENDS)
    token_seq = token_seq.long()
    coef = seq_coefficients(
        seq_weight,
        token_seq,
        normalizer=normalizer,
        total_tokens=total_tokens,
        total_sequences=total_sequences,
        seq_tokens=seq_tokens,
        constant=constant,
    )
    old_logp = old_logp.float()
    ref_logp = None if ref_logp is None else ref_logp.float()
    # no clipping as bounds that no ratio crosses: 1 - 1 = 0 <= exp(.) and 1 + inf; the clip-free
    # branch is then taken everywhere, in the torch twin and the kernel alike (no kernel variant)
    bounds = (1.0, math.inf) if clip is None else tuple(clip)
    loss, sums = _PolicyLoss.apply(
        logp, old_logp, ref_logp, token_seq, seq_adv.float(), coef, bounds, float(kl_coef), backend
    )
    rows = max(logp.shape[0], 1)
    stats = PolicyLossStats(
        clip_frac_low=sums[1] / rows, clip_frac_high=sums[2] / rows, ratio_mean=sums[3] / rows, kl_mean=sums[4] / rows
    )
    return loss, stats


def _check_policy_loss(device, dtype, gen):
    """Self-check of the Triton path against the torch path (``spiral_fast.ops.self_check``)."""
    rows, seqs = 300, 7
    logp = randn(gen, rows, device=device, scale=0.5) - 1.0
    old = logp + randn(gen, rows, device=device, scale=0.3)
    ref = logp + randn(gen, rows, device=device, scale=0.3)
    token_seq = torch.randint(0, seqs, (rows,), generator=gen).to(device)
    adv, weight = randn(gen, seqs, device=device), randn(gen, seqs, device=device).abs()
    upstream = torch.randn((), generator=gen).item()
    results = []
    for backend in ("triton", "torch"):
        leaf = logp.detach().requires_grad_()
        loss, stats = policy_loss(leaf, old, token_seq, adv, weight, ref_logp=ref, kl_coef=0.05, backend=backend)
        (grad,) = torch.autograd.grad(loss * upstream, leaf)
        results.append(
            [loss.detach(), grad, stats.clip_frac_low, stats.clip_frac_high, stats.ratio_mean, stats.kl_mean]
        )
    # the torch path is float32 too (no float64 twin): the kernel must agree with it to the floor
    compare(
        ("loss", "d_logp", "clip_frac_low", "clip_frac_high", "ratio_mean", "kl_mean"),
        dtype,
        results[0],
        results[1],
        results[1],
    )


register_self_check("policy_loss", _check_policy_loss, dtypes=float32_only)
