"""The SPIRAL algorithm written once, in plain loop-free PyTorch: the spec, the CPU path and the
test oracle of ``spiral_advantages`` and ``policy_loss``.

Vocabulary: A aggregation responses, S sets, N search traces, P problems, R trained token rows,
Q trained sequences. Groups are reduced with ``bincount`` / ``index_add_`` (no Python loop over
groups). Nothing here validates its input: the public ops in ``advantages.py`` and
``policy_loss.py`` do that first.
"""
from __future__ import annotations

import torch

ESTIMATORS = ("grpo", "rloo")
SCALES = ("std", "none")
TRACE_CREDITS = ("mean", "sum")
AGG_BASELINES = ("set", "problem")
NORMALIZERS = ("token-mean", "seq-mean-token-mean", "constant")


# --------------------------------------------------------------------------- advantages
def group_mean(x: torch.Tensor, group: torch.Tensor, num_groups: int, count: torch.Tensor) -> torch.Tensor:
    """Mean of x [M] per group -> [num_groups] (0 for an empty group); count [num_groups] in x's dtype.

    Shifted by the group's maximum: a group of equal values has exactly that value as its mean
    (0.1 + 0.1 + 0.1 = 0.30000000000000004 would otherwise leave advantages of 1e-17, and a
    problem whose rewards are all equal must have advantages exactly 0).
    """
    shift = torch.full((num_groups,), -torch.inf, dtype=x.dtype, device=x.device)
    shift = shift.scatter_reduce(0, group, x, reduce="amax").nan_to_num(neginf=0.0)
    total = torch.zeros(num_groups, dtype=x.dtype, device=x.device).index_add_(0, group, x - shift[group])
    return shift + total / count.clamp_min(1)


def group_advantage(x: torch.Tensor, group: torch.Tensor, num_groups: int, *, estimator: str, scale: str,
                    eps: float) -> torch.Tensor:
    """Advantage of each value against the other values of its group.

    x [M] float, group [M] int64 in [0, num_groups) -> [M] in x's dtype.
    grpo: x - mean(group). rloo: x - mean(others) = n / (n - 1) * (x - mean(group)).
    scale "std" divides either by (std(group) + eps), std unbiased as ``torch.std``; "none" does not.
    A group of one has advantage 0 (its std and leave-one-out mean are undefined).
    """
    # per-group statistics first, then one gather each of the group's mean and factor: the M-sized
    # passes are what costs, the G-sized ones are cheap
    n = torch.bincount(group, minlength=num_groups).to(x.dtype)
    diff = x - group_mean(x, group, num_groups, n)[group]
    factor = (n > 1).to(x.dtype)  # a group of one: 0
    if estimator == "rloo":
        factor = factor * n / (n - 1).clamp_min(1)
    if scale == "std":
        # two-pass variance: squared deviations from the group mean, stable for large means
        sq = torch.zeros(num_groups, dtype=x.dtype, device=x.device).index_add_(0, group, diff * diff)
        denom = (sq / (n - 1).clamp_min(1)).sqrt() + eps
        # denom is 0 only for eps=0 and a tied group, where diff is 0 too: 0, not 0/0
        factor = torch.where(denom > 0, factor / torch.where(denom > 0, denom, 1), torch.zeros_like(factor))
    return diff * factor[group]


def spiral_advantages_reference(rewards, agg_set, set_problem, set_members, set_offsets, trace_problem,
                                num_problems: int, *, estimator: str = "grpo", scale: str = "none",
                                trace_credit: str = "mean", agg_baseline: str = "set", eps: float = 1e-6):
    """All SPIRAL advantages in rewards' dtype.

    rewards [A] float, agg_set [A], set_problem [S], set_offsets [S+1], set_members [sum K],
    trace_problem [N] int64 ->
    (agg [A], set_value [S], set [S], trace [N], trace_in_set [N] bool).

    - agg: rewards against the other aggregation responses of the same set (agg_baseline "set",
      the paper's) or of the same problem ("problem": problem of a = set_problem[agg_set[a]]).
    - set_value: mean reward of the set's aggregation responses; set: set_value against the other
      sets of the same problem.
    - trace: mean ("mean") or sum ("sum") of ``set`` over the CSR entries naming the trace (a trace
      listed twice in one set counts twice); traces in no set get 0 and trace_in_set False.
    """
    num_sets = set_problem.shape[0]
    num_traces = trace_problem.shape[0]
    kw = dict(estimator=estimator, scale=scale, eps=eps)
    if agg_baseline == "set":
        agg = group_advantage(rewards, agg_set, num_sets, **kw)
    else:
        agg = group_advantage(rewards, set_problem[agg_set], num_problems, **kw)

    agg_per_set = torch.bincount(agg_set, minlength=num_sets).to(rewards.dtype)
    set_value = group_mean(rewards, agg_set, num_sets, agg_per_set)
    set_adv = group_advantage(set_value, set_problem, num_problems, **kw)

    set_sizes = set_offsets[1:] - set_offsets[:-1]
    member_set = torch.repeat_interleave(torch.arange(num_sets, device=set_offsets.device), set_sizes,
                                         output_size=set_members.shape[0])
    credit = torch.zeros(num_traces, dtype=rewards.dtype, device=rewards.device)
    credit.index_add_(0, set_members, set_adv[member_set])
    entries = torch.bincount(set_members, minlength=num_traces)
    in_set = entries > 0
    if trace_credit == "mean":
        credit = credit / entries.clamp_min(1).to(rewards.dtype)
    return agg, set_value, set_adv, credit, in_set


# --------------------------------------------------------------------------- policy loss
def seq_coefficients(seq_weight: torch.Tensor, token_seq: torch.Tensor, *, normalizer: str,
                     total_tokens: float | None = None, total_sequences: float | None = None,
                     seq_tokens: torch.Tensor | None = None, constant: float | None = None) -> torch.Tensor:
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


def policy_loss_reference(logp, old_logp, token_seq, seq_adv, seq_weight, *, ref_logp=None, clip=(0.2, 0.28),
                          kl_coef=0.0, normalizer="token-mean", total_tokens=None, total_sequences=None,
                          seq_tokens=None, constant=None):
    """The policy loss as one autograd graph: loss = sum_t c[seq_t] * term_t (see ``seq_coefficients``).

    Returns (loss 0-dim, dict of token-mean stats: clip_frac_low, clip_frac_high, ratio_mean, kl_mean).
    """
    coef = seq_coefficients(seq_weight, token_seq, normalizer=normalizer, total_tokens=total_tokens,
                            total_sequences=total_sequences, seq_tokens=seq_tokens, constant=constant)
    term, ratio, kl, low, high = token_loss_terms(logp, old_logp, token_seq, seq_adv, ref_logp=ref_logp,
                                                  clip=clip, kl_coef=kl_coef)
    loss = (coef[token_seq] * term).sum()
    rows = max(logp.shape[0], 1)
    stats = dict(clip_frac_low=low.float().sum() / rows, clip_frac_high=high.float().sum() / rows,
                 ratio_mean=ratio.detach().sum() / rows, kl_mean=kl.detach().sum() / rows)
    return loss, stats
