"""``spiral_advantages``: aggregator, set and trace advantages of a SPIRAL batch in flat index form.

Validation, then the loop-free reference (``reference.spiral_advantages_reference``), computed in
float64 and returned in float32: the whole computation is a handful of scatter reductions over
O(A + S + sum K) elements, so the reference already is the fast path on every device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spiral_fast._utils import INDEX_DTYPES, check_finite, check_index_range, check_same_device, check_tensor
from spiral_fast.algorithm.reference import (
    AGG_BASELINES,
    ESTIMATORS,
    SCALES,
    TRACE_CREDITS,
    spiral_advantages_reference,
)


@dataclass(frozen=True)
class SpiralAdvantages:
    """Advantages of one SPIRAL batch (float32; ``trace_in_set`` bool).

    agg [A]: per aggregation response. set_value [S]: mean reward of the set's responses.
    set [S]: per set. trace [N]: per search trace (credit over the sets containing it, 0 if none).
    trace_in_set [N]: whether the trace appears in at least one set (traces outside get no loss).
    """

    agg: torch.Tensor
    set_value: torch.Tensor
    set: torch.Tensor
    trace: torch.Tensor
    trace_in_set: torch.Tensor


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _validate(
    rewards,
    agg_set,
    set_problem,
    set_members,
    set_offsets,
    trace_problem,
    estimator,
    scale,
    trace_credit,
    agg_baseline,
    eps,
) -> None:
    _choice("estimator", estimator, ESTIMATORS)
    _choice("scale", scale, SCALES)
    _choice("trace_credit", trace_credit, TRACE_CREDITS)
    _choice("agg_baseline", agg_baseline, AGG_BASELINES)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 <= eps < float("inf")):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    check_tensor("rewards", rewards, ndim=1, dtypes=(torch.float16, torch.bfloat16, torch.float32, torch.float64))
    for name, t in (
        ("agg_set", agg_set),
        ("set_problem", set_problem),
        ("set_members", set_members),
        ("set_offsets", set_offsets),
        ("trace_problem", trace_problem),
    ):
        check_tensor(name, t, ndim=1, dtypes=INDEX_DTYPES)
    check_same_device(
        rewards=rewards,
        agg_set=agg_set,
        set_problem=set_problem,
        set_members=set_members,
        set_offsets=set_offsets,
        trace_problem=trace_problem,
    )
    num_aggs, num_sets, num_traces = rewards.shape[0], set_problem.shape[0], trace_problem.shape[0]
    check_tensor("agg_set", agg_set, shape=(num_aggs,))
    check_tensor("set_offsets", set_offsets, shape=(num_sets + 1,))
    check_finite("rewards", rewards)
    check_index_range("agg_set", agg_set, num_sets)
    check_index_range("set_members", set_members, num_traces)
    for name, t in (("set_problem", set_problem), ("trace_problem", trace_problem)):
        if t.numel() and bool((t < 0).any()):
            raise ValueError(f"{name} must be >= 0, got {t.min().item()}")
    if set_offsets[0].item() != 0:
        raise ValueError(f"set_offsets must start at 0, got {set_offsets[0].item()}")
    if set_offsets[-1].item() != set_members.shape[0]:
        raise ValueError(
            f"set_offsets must end at len(set_members) = {set_members.shape[0]}, got {set_offsets[-1].item()}"
        )
    sizes = set_offsets[1:] - set_offsets[:-1]
    if sizes.numel() and bool((sizes < 0).any()):
        j = int((sizes < 0).nonzero()[0])
        raise ValueError(f"set_offsets must be non-decreasing (negative set size {sizes[j].item()} at set {j})")
    per_set = torch.bincount(agg_set.long(), minlength=num_sets)
    if num_sets and bool((per_set == 0).any()):
        j = int((per_set == 0).nonzero()[0])
        raise ValueError(f"agg_set names no aggregation response for set {j}: its value would be undefined")
    if set_members.numel():
        member_set = torch.repeat_interleave(
            torch.arange(num_sets, device=sizes.device), sizes.long(), output_size=set_members.shape[0]
        )
        wrong = trace_problem.long()[set_members.long()] != set_problem.long()[member_set]
        if bool(wrong.any()):
            k = int(wrong.nonzero()[0])
            raise ValueError(
                f"set_members[{k}] = trace {set_members[k].item()} of problem "
                f"{trace_problem[set_members[k]].item()} sits in set {member_set[k].item()} of problem "
                f"{set_problem[member_set[k]].item()}: sets draw traces of their own problem only"
            )


def spiral_advantages(
    rewards,
    agg_set,
    set_problem,
    set_members,
    set_offsets,
    trace_problem,
    *,
    estimator="grpo",
    scale="none",
    trace_credit="mean",
    agg_baseline="set",
    eps=1e-6,
) -> SpiralAdvantages:
    """Aggregator, set and trace advantages of a SPIRAL batch, loop-free.

    rewards [A] float (one per aggregation response), agg_set [A] (its set, in [0, S)),
    set_problem [S] (>= 0), set_offsets [S+1] and set_members [sum K] (set membership in CSR form:
    set j holds traces set_members[set_offsets[j]:set_offsets[j+1]]), trace_problem [N] (>= 0);
    index tensors int32 or int64, all on one device.

    Groups: the aggregator group of a response is every aggregation response of its set
    (agg_baseline "set", the paper's) or of its problem ("problem": problem =
    set_problem[agg_set[a]]); the set group is every set of the same problem. The defaults are
    the paper's (docs/paper.md): grpo, no std scaling, mean credit, the set's own responses as baseline.
    - estimator "grpo": x - mean(group). "rloo": x - mean of the other members of the group.
    - scale "std": divide by (std(group) + eps), std unbiased as ``torch.std``; applies to both
      estimators (rloo is then divided by the std of the whole group, the leave-one-out
      difference being n / (n - 1) times grpo's). "none": keep the difference (Dr.GRPO).
    - A group of one gets advantage 0 (never NaN): with agg_baseline "set", a set with one
      aggregation response gives it 0.
    - trace_credit "mean" / "sum": of ``set`` over the CSR entries naming the trace; a trace
      listed twice in one set counts twice. Traces in no set get 0 (``trace_in_set`` False).

    Raises ``ValueError`` naming the argument for: non-finite rewards, agg_set outside [0, S),
    a set without aggregation responses (its value is undefined), set_members outside [0, N),
    set_offsets not starting at 0 / not ending at len(set_members) / decreasing, negative
    set_problem or trace_problem, a set member from another problem than its set, mismatched
    lengths, unknown estimator / scale / trace_credit / agg_baseline, negative eps.
    """
    _validate(
        rewards,
        agg_set,
        set_problem,
        set_members,
        set_offsets,
        trace_problem,
        estimator,
        scale,
        trace_credit,
        agg_baseline,
        eps,
    )
    set_problem, trace_problem = set_problem.long(), trace_problem.long()
    num_problems = 1 + max(
        int(set_problem.max()) if set_problem.numel() else -1, int(trace_problem.max()) if trace_problem.numel() else -1
    )
    # float64 inside: group means of many rewards lose no digits; results are returned in float32
    agg, set_value, set_adv, trace, in_set = spiral_advantages_reference(
        rewards.double(),
        agg_set.long(),
        set_problem,
        set_members.long(),
        set_offsets.long(),
        trace_problem,
        num_problems,
        estimator=estimator,
        scale=scale,
        trace_credit=trace_credit,
        agg_baseline=agg_baseline,
        eps=float(eps),
    )
    return SpiralAdvantages(
        agg=agg.float(), set_value=set_value.float(), set=set_adv.float(), trace=trace.float(), trace_in_set=in_set
    )
