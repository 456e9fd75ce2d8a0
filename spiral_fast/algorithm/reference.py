"""The SPIRAL algorithm written once, in plain loop-free PyTorch: the spec, the CPU path and the
test oracle of ``spiral_advantages`` and ``policy_loss``.

Vocabulary: A aggregation responses, S sets, N search traces, P problems, R trained token rows,
Q trained sequences. Groups are reduced with ``bincount`` / ``index_add_`` (no Python loop over
groups). Nothing here validates its input: the public ops in ``advantages.py`` and
``policy_loss.py`` do that first.
"""

from __future__ import annotations

import torch

# the policy loss's formulas sit beside its fused op, in the ops layer (which owns every op's
# self-check); they stay importable from here, the algorithm's one reference module
from spiral_fast.ops.policy_loss.reference import NORMALIZERS, policy_loss_reference, seq_coefficients, token_loss_terms  # noqa: F401

ESTIMATORS = ("grpo", "rloo")
SCALES = ("std", "none")
TRACE_CREDITS = ("mean", "sum")
AGG_BASELINES = ("set", "problem")


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


def group_advantage(
    x: torch.Tensor, group: torch.Tensor, num_groups: int, *, estimator: str, scale: str, eps: float
) -> torch.Tensor:
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


def spiral_advantages_reference(
    rewards,
    agg_set,
    set_problem,
    set_members,
    set_offsets,
    trace_problem,
    num_problems: int,
    *,
    estimator: str = "grpo",
    scale: str = "none",
    trace_credit: str = "mean",
    agg_baseline: str = "set",
    eps: float = 1e-6,
):
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
    member_set = torch.repeat_interleave(
        torch.arange(num_sets, device=set_offsets.device), set_sizes, output_size=set_members.shape[0]
    )
    credit = torch.zeros(num_traces, dtype=rewards.dtype, device=rewards.device)
    credit.index_add_(0, set_members, set_adv[member_set])
    entries = torch.bincount(set_members, minlength=num_traces)
    in_set = entries > 0
    if trace_credit == "mean":
        credit = credit / entries.clamp_min(1).to(rewards.dtype)
    return agg, set_value, set_adv, credit, in_set
