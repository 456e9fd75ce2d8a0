"""spiral_advantages: bad input raises ValueError naming the argument."""

from __future__ import annotations

import pytest
import torch
from helpers import names

import spiral_fast


def good() -> dict:
    # problem 0: traces 0-2, sets {0, 1} and {2}; problem 1: trace 3, set {3}
    return dict(
        rewards=torch.tensor([1.0, 0.0, 1.0, 0.5]),
        agg_set=torch.tensor([0, 0, 1, 2]),
        set_problem=torch.tensor([0, 0, 1]),
        set_members=torch.tensor([0, 1, 2, 3]),
        set_offsets=torch.tensor([0, 2, 3, 4]),
        trace_problem=torch.tensor([0, 0, 0, 1]),
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


BAD = [
    ("nan-reward", dict(rewards=torch.tensor([1.0, float("nan"), 1.0, 0.5])), {}, "rewards"),
    ("inf-reward", dict(rewards=torch.tensor([1.0, 0.0, float("inf"), 0.5])), {}, "rewards"),
    ("member-too-large", dict(set_members=torch.tensor([0, 1, 4, 3])), {}, "set_members"),
    ("member-negative", dict(set_members=torch.tensor([0, -1, 2, 3])), {}, "set_members"),
    ("agg-missing-set", dict(agg_set=torch.tensor([0, 0, 1, 3])), {}, "agg_set"),
    ("agg-negative-set", dict(agg_set=torch.tensor([0, -1, 1, 2])), {}, "agg_set"),
    ("set-without-aggregations", dict(agg_set=torch.tensor([0, 0, 1, 1])), {}, "agg_set"),
    ("set-problem-negative", dict(set_problem=torch.tensor([0, -1, 1])), {}, "set_problem"),
    ("trace-problem-negative", dict(trace_problem=torch.tensor([0, 0, -2, 1])), {}, "trace_problem"),
    ("member-of-other-problem", dict(set_members=torch.tensor([0, 1, 3, 2])), {}, "set_members"),
    ("offsets-not-from-0", dict(set_offsets=torch.tensor([1, 2, 3, 4])), {}, "set_offsets"),
    ("offsets-wrong-end", dict(set_offsets=torch.tensor([0, 2, 3, 3])), {}, "set_offsets"),
    ("negative-set-size", dict(set_offsets=torch.tensor([0, 3, 2, 4])), {}, "set_offsets"),
    ("offsets-wrong-length", dict(set_offsets=torch.tensor([0, 2, 4])), {}, "set_offsets"),
    ("agg-set-length", dict(agg_set=torch.tensor([0, 0, 1])), {}, "agg_set"),
    ("rewards-int", dict(rewards=torch.tensor([1, 0, 1, 0])), {}, "rewards"),
    ("rewards-2d", dict(rewards=torch.ones(4, 1)), {}, "rewards"),
    ("members-float", dict(set_members=torch.tensor([0.0, 1.0, 2.0, 3.0])), {}, "set_members"),
    ("estimator", {}, dict(estimator="ppo"), "estimator"),
    ("scale", {}, dict(scale="mad"), "scale"),
    ("agg_baseline", {}, dict(agg_baseline="group"), "agg_baseline"),
    ("trace-credit", {}, dict(trace_credit="max"), "trace_credit"),
    ("eps-negative", {}, dict(eps=-1.0), "eps"),
]


@pytest.mark.parametrize("change,kwargs,name", [pytest.param(c, k, n, id=i) for i, c, k, n in BAD])
def test_bad_input_names_the_argument(change, kwargs, name):
    call(good())  # the unmodified batch is valid
    with pytest.raises(ValueError, match=names(name)):
        call({**good(), **change}, **kwargs)
