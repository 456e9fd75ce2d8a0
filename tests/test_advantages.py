"""spiral_advantages against a deliberately naive Python-loop version, on random structured batches."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

import spiral_fast
from spiral_fast.algorithm.advantages import SpiralAdvantages
from spiral_fast.algorithm.reference import (
    AGG_BASELINES,
    ESTIMATORS,
    SCALES,
    TRACE_CREDITS,
    spiral_advantages_reference,
)


# --------------------------------------------------------------------------- naive oracle
def naive_group_advantages(values: list[float], estimator: str, scale: str, eps: float) -> list[float]:
    """One group, element by element, in Python floats (float64)."""
    n = len(values)
    if n == 1:
        return [0.0]
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    out = []
    for i, v in enumerate(values):
        others = [values[k] for k in range(n) if k != i]
        a = v - mean if estimator == "grpo" else v - sum(others) / (n - 1)
        out.append(a / (std + eps) if scale == "std" else a)
    return out


def naive_spiral_advantages(
    batch: dict, estimator: str, scale: str, trace_credit: str, eps: float, agg_baseline: str = "problem"
) -> dict:
    rewards, agg_set = batch["rewards"].tolist(), batch["agg_set"].tolist()
    set_problem, trace_problem = batch["set_problem"].tolist(), batch["trace_problem"].tolist()
    offsets, members = batch["set_offsets"].tolist(), batch["set_members"].tolist()
    num_sets, num_traces = len(set_problem), len(trace_problem)

    agg = [0.0] * len(rewards)
    # aggregator groups: the responses of one set ("set") or of one problem ("problem")
    group_of = (lambda a: agg_set[a]) if agg_baseline == "set" else (lambda a: set_problem[agg_set[a]])  # noqa: E731
    for p in {group_of(a) for a in range(len(rewards))}:
        idx = [a for a in range(len(rewards)) if group_of(a) == p]
        for a, v in zip(idx, naive_group_advantages([rewards[a] for a in idx], estimator, scale, eps)):
            agg[a] = v
    set_value = []
    for j in range(num_sets):
        rs = [rewards[a] for a in range(len(rewards)) if agg_set[a] == j]
        set_value.append(sum(rs) / len(rs))
    set_adv = [0.0] * num_sets
    for p in set(set_problem):
        idx = [j for j in range(num_sets) if set_problem[j] == p]
        for j, v in zip(idx, naive_group_advantages([set_value[j] for j in idx], estimator, scale, eps)):
            set_adv[j] = v
    credits: list[list[float]] = [[] for _ in range(num_traces)]
    for j in range(num_sets):
        for k in range(offsets[j], offsets[j + 1]):
            credits[members[k]].append(set_adv[j])
    trace = [0.0 if not c else (sum(c) / len(c) if trace_credit == "mean" else sum(c)) for c in credits]
    return dict(agg=agg, set_value=set_value, set=set_adv, trace=trace, trace_in_set=[bool(c) for c in credits])


# --------------------------------------------------------------------------- random batches
def random_batch(seed: int, index_dtype=torch.int64) -> dict:
    """Several problems; overlapping sets (with repeated members), traces in no set, groups of one,
    tied rewards, a problem with no set at all; sets and responses in shuffled order."""
    rng = random.Random(seed)
    trace_problem, sets = [], []  # sets: (problem, members)
    num_problems = rng.randint(2, 5)
    for p in range(num_problems):
        traces = list(range(len(trace_problem), len(trace_problem) + rng.randint(1, 6)))
        trace_problem += [p] * len(traces)
        num_sets = 0 if p == num_problems - 1 and rng.random() < 0.5 else rng.randint(1, 4)
        for _ in range(num_sets):
            sets.append((p, [rng.choice(traces) for _ in range(rng.randint(0, 3))]))
    rng.shuffle(sets)
    agg_set = [j for j in range(len(sets)) for _ in range(rng.randint(1, 3))]
    rng.shuffle(agg_set)
    rewards = [rng.choice([0.0, 1.0, 0.5, rng.uniform(-2, 3)]) for _ in agg_set]
    offsets = [0]
    for _, m in sets:
        offsets.append(offsets[-1] + len(m))
    as_index = lambda xs: torch.tensor(xs, dtype=index_dtype)  # noqa: E731
    return dict(
        rewards=torch.tensor(rewards, dtype=torch.float32),
        agg_set=as_index(agg_set),
        set_problem=as_index([p for p, _ in sets]),
        set_members=as_index([t for _, m in sets for t in m]),
        set_offsets=as_index(offsets),
        trace_problem=as_index(trace_problem),
    )


def call(batch: dict, **kw):
    return spiral_fast.spiral_advantages(
        batch["rewards"],
        batch["agg_set"],
        batch["set_problem"],
        batch["set_members"],
        batch["set_offsets"],
        batch["trace_problem"],
        **kw,
    )


def assert_matches_naive(out, want: dict):
    for field in ("agg", "set_value", "set", "trace"):
        got = getattr(out, field)
        assert got.dtype == torch.float32, field
        torch.testing.assert_close(
            got.double(), torch.tensor(want[field], dtype=torch.float64), rtol=1e-5, atol=1e-5, msg=field
        )
    assert out.trace_in_set.dtype == torch.bool
    assert out.trace_in_set.tolist() == want["trace_in_set"]


COMBOS = [(e, s, c, g) for e in ESTIMATORS for s in SCALES for c in TRACE_CREDITS for g in AGG_BASELINES]


@pytest.mark.parametrize("estimator,scale,credit,baseline", COMBOS, ids=["-".join(c) for c in COMBOS])
@pytest.mark.parametrize("seed", range(6), ids=lambda s: f"seed{s}")
def test_matches_naive_loop(seed, estimator, scale, credit, baseline):
    batch = random_batch(seed, index_dtype=torch.int32 if seed % 2 else torch.int64)
    out = call(batch, estimator=estimator, scale=scale, trace_credit=credit, agg_baseline=baseline, eps=1e-6)
    assert_matches_naive(out, naive_spiral_advantages(batch, estimator, scale, credit, 1e-6, baseline))


@pytest.mark.parametrize("estimator,scale,credit,baseline", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_reference_in_float32_matches_naive_loop(estimator, scale, credit, baseline):
    b = random_batch(11)
    num_problems = int(max(b["set_problem"].max(), b["trace_problem"].max())) + 1
    out = spiral_advantages_reference(
        b["rewards"],
        b["agg_set"],
        b["set_problem"],
        b["set_members"],
        b["set_offsets"],
        b["trace_problem"],
        num_problems,
        estimator=estimator,
        scale=scale,
        trace_credit=credit,
        agg_baseline=baseline,
        eps=1e-6,
    )
    assert_matches_naive(SpiralAdvantages(*out), naive_spiral_advantages(b, estimator, scale, credit, 1e-6, baseline))


def test_defaults_are_the_papers():
    """grpo, no std scaling, mean credit, each aggregation response against its own set."""
    batch = random_batch(5)
    want = naive_spiral_advantages(batch, "grpo", "none", "mean", 1e-6, "set")
    assert_matches_naive(call(batch), want)
    assert any(abs(v) > 1e-3 for v in want["agg"])  # the comparison has something to compare


@pytest.mark.parametrize("estimator,scale", [(e, s) for e in ESTIMATORS for s in SCALES])
def test_set_baseline_gives_a_single_response_set_zero(estimator, scale):
    # one problem: set 0 has one response (reward 1), set 1 has two (1, 0)
    batch = dict(
        rewards=torch.tensor([1.0, 1.0, 0.0]),
        agg_set=torch.tensor([0, 1, 1]),
        set_problem=torch.tensor([0, 0]),
        set_members=torch.tensor([0, 1]),
        set_offsets=torch.tensor([0, 1, 2]),
        trace_problem=torch.tensor([0, 0]),
    )
    out = call(batch, estimator=estimator, scale=scale, agg_baseline="set")
    assert out.agg[0].item() == 0.0
    assert out.agg[1].item() > 0 > out.agg[2].item()
    # against the problem's three responses the lone response is above the mean
    assert call(batch, estimator=estimator, scale=scale, agg_baseline="problem").agg[0].item() > 0


def test_hand_computed_values():
    # one problem, sets {0, 1} and {1, 1, 2}, rewards 1, 0 | 1, 1, 0 -> set values 0.5, 2/3
    batch = dict(
        rewards=torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0]),
        agg_set=torch.tensor([0, 0, 1, 1, 1]),
        set_problem=torch.tensor([0, 0]),
        set_members=torch.tensor([0, 1, 1, 1, 2]),
        set_offsets=torch.tensor([0, 2, 5]),
        trace_problem=torch.tensor([0, 0, 0, 0]),
    )
    out = call(batch, scale="none", agg_baseline="problem")
    torch.testing.assert_close(out.agg, torch.tensor([0.4, -0.6, 0.4, 0.4, -0.6]))
    # against their own set: set 0 mean 1/2, set 1 mean 2/3
    torch.testing.assert_close(call(batch, scale="none").agg, torch.tensor([0.5, -0.5, 1 / 3, 1 / 3, -2 / 3]))
    torch.testing.assert_close(out.set, torch.tensor([-1 / 12, 1 / 12]))
    # trace 1: once in set 0, twice in set 1 -> mean of (-1/12, 1/12, 1/12); trace 3 in no set
    torch.testing.assert_close(out.trace, torch.tensor([-1 / 12, 1 / 36, 1 / 12, 0.0]))
    assert out.trace_in_set.tolist() == [True, True, True, False]
    summed = call(batch, scale="none", trace_credit="sum")
    torch.testing.assert_close(summed.trace, torch.tensor([-1 / 12, 1 / 12, 1 / 12, 0.0]))


def test_rloo_with_std_divides_by_group_std():
    # the decision documented in the docstring: rloo's leave-one-out difference / (std + eps)
    rewards = torch.tensor([3.0, 0.0, 0.0])
    batch = dict(
        rewards=rewards,
        agg_set=torch.tensor([0, 1, 2]),
        set_problem=torch.tensor([0, 0, 0]),
        set_members=torch.tensor([], dtype=torch.int64),
        set_offsets=torch.tensor([0, 0, 0, 0]),
        trace_problem=torch.tensor([0]),
    )
    out = call(batch, estimator="rloo", scale="std", agg_baseline="problem", eps=0.0)
    std = rewards.std()
    torch.testing.assert_close(out.agg, torch.tensor([3.0, -1.5, -1.5]) / std)
    torch.testing.assert_close(out.set, out.agg)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_groups_of_one_and_ties_give_zero_not_nan(estimator):
    # problem 0: one set with one response; problem 1: two sets, all rewards tied
    batch = dict(
        rewards=torch.tensor([0.7, 1.0, 1.0, 1.0]),
        agg_set=torch.tensor([0, 1, 2, 2]),
        set_problem=torch.tensor([0, 1, 1]),
        set_members=torch.tensor([0, 1]),
        set_offsets=torch.tensor([0, 1, 1, 2]),
        trace_problem=torch.tensor([0, 1]),
    )
    for eps in (1e-6, 0.0):
        out = call(batch, estimator=estimator, scale="std", agg_baseline="problem", eps=eps)
        for field in ("agg", "set", "trace"):
            assert torch.equal(getattr(out, field), torch.zeros_like(getattr(out, field))), (field, eps)


def test_empty_structure():
    batch = dict(
        rewards=torch.zeros(0),
        agg_set=torch.zeros(0, dtype=torch.int64),
        set_problem=torch.zeros(0, dtype=torch.int64),
        set_members=torch.zeros(0, dtype=torch.int64),
        set_offsets=torch.zeros(1, dtype=torch.int64),
        trace_problem=torch.tensor([0, 0, 1]),
    )
    out = call(batch)
    assert out.agg.shape == (0,) and out.set.shape == (0,)
    assert torch.equal(out.trace, torch.zeros(3)) and not out.trace_in_set.any()


def test_result_is_frozen():
    out = call(random_batch(0))
    assert type(out).__name__ == "SpiralAdvantages"
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'agg'"):
        out.agg = out.set


@pytest.mark.gpu
def test_cuda_matches_cpu():
    batch = random_batch(3)
    want = call(batch, estimator="rloo", scale="std", agg_baseline="problem")
    got = call({k: v.cuda() for k, v in batch.items()}, estimator="rloo", scale="std", agg_baseline="problem")
    for field in ("agg", "set_value", "set", "trace", "trace_in_set"):
        assert getattr(got, field).is_cuda, field
        torch.testing.assert_close(getattr(got, field).cpu(), getattr(want, field), msg=field)
