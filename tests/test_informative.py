"""SpiralBatch.informative (dynamic sampling): problems whose advantages are all zero are dropped,
the others kept in order; every problem dropped gives (None, P)."""

import pytest

from spiral_fast import ProblemRollout, SpiralBatch, SpiralConfig


def problem(rewards, *, traces=4):
    """A problem with one set per entry of rewards (set j = traces j, j+1 mod N)."""
    sets = [(j % traces, (j + 1) % traces) for j in range(len(rewards))]
    return ProblemRollout(
        prompt=[1, 2],
        traces=[[3 + i] for i in range(traces)],
        sets=sets,
        agg_prompts=[[9, j] for j in range(len(rewards))],
        aggregations=[[[5 + g] for g in range(len(rs))] for rs in rewards],
        rewards=rewards,
    )


# every reward equal, with set sizes 3 and 2: 0.1 + 0.1 + 0.1 is not 3 * 0.1 in floating point
TIED = [[0.1, 0.1, 0.1], [0.1, 0.1]]
VARIED = [[1.0, 0.0], [0.0, 0.0]]
SETS_DIFFER = [[1.0, 1.0], [0.0, 0.0]]  # equal within each set, different across sets
CONFIGS = [
    SpiralConfig(),
    SpiralConfig(estimator="rloo", scale="std"),
    SpiralConfig(trace_credit="sum", scale="none", estimator="grpo"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "rloo-std", "grpo-none-sum"])
def test_drops_problems_with_all_zero_advantages(config):
    batch = SpiralBatch(
        [problem(TIED), problem(VARIED), problem([[0.0]]), problem(SETS_DIFFER), problem([[1.0, 1.0, 1.0]])]
    )
    kept, dropped = batch.informative(config)
    assert dropped == 3
    assert isinstance(kept, SpiralBatch) and [pr.rewards for pr in kept.problems] == [VARIED, SETS_DIFFER]
    assert kept.problems[0] is batch.problems[1]  # the problems themselves, not copies
    assert len(batch) == 5  # the original batch is unchanged


def test_every_problem_dropped_gives_none():
    batch = SpiralBatch([problem(TIED), problem([[0.5, 0.5], [0.5, 0.5]])])
    assert batch.informative() == (None, 2)


def test_default_config_and_bad_config():
    batch = SpiralBatch([problem(VARIED)])
    kept, dropped = batch.informative()
    assert dropped == 0 and kept.problems == batch.problems
    with pytest.raises(ValueError, match="config must be a spiral_fast.SpiralConfig"):
        batch.informative({"estimator": "grpo"})
