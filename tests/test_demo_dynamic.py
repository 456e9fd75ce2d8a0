"""The demo's --dynamic-sampling: refill the batch with informative problems, bounded rounds."""

import pytest
import torch

import spiral_fast
from spiral_fast.recipe.demo import DemoConfig, train_demo
from spiral_fast.recipe.loop import informative_batch

TINY = dict(iterations=3, problems=2, traces=3, sets=2, set_size=2, aggregations=2, hidden_size=16, layers=1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: tiny models on a shared CPU (a thread pool only contends)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _problem(tag: int, rewards):
    """A problem whose prompt carries `tag` (to follow it) and whose 2 sets have the given rewards."""
    return spiral_fast.ProblemRollout(
        prompt=[tag],
        traces=[[1], [2], [3]],
        sets=[(0, 1), (1, 2)],
        agg_prompts=[[tag, 1, 2], [tag, 2, 3]],
        aggregations=[[[1], [2]], [[1], [2]]],
        rewards=rewards,
    )


def _batch(tags_and_informative):
    return spiral_fast.SpiralBatch(
        [
            _problem(t, [[1.0, 0.0], [0.0, 0.0]] if good else [[1.0, 1.0], [1.0, 1.0]])
            for t, good in tags_and_informative
        ]
    )


class _Source:
    """resample(count): the next `count` problems of a fixed stream of (tag, informative) pairs."""

    def __init__(self, stream):
        self.stream, self.calls = list(stream), []

    def __call__(self, count):
        self.calls.append(count)
        rows, self.stream = self.stream[:count], self.stream[count:]
        return _batch(rows)


def _tags(batch):
    return [int(pr.prompt[0]) for pr in batch.problems]


def test_refills_to_the_target_in_sampling_order():
    config = spiral_fast.SpiralConfig()
    source = _Source([(10, False), (11, True), (12, True), (13, True)])
    batch, dropped, _ = informative_batch(
        _batch([(0, True), (1, False), (2, True), (3, False)]), source, target=4, max_extra_rounds=3, config=config
    )
    # round 0 keeps 0 and 2; round 1 asks for 2 (10 dropped, 11 kept); round 2 asks for 1 (12 kept)
    assert _tags(batch) == [0, 2, 11, 12] and dropped == 3 and source.calls == [2, 1]


def test_rounds_are_bounded_and_all_dropped_gives_none():
    config = spiral_fast.SpiralConfig()
    source = _Source([(t, False) for t in range(10, 30)])
    batch, dropped, _ = informative_batch(
        _batch([(0, False), (1, True)]), source, target=2, max_extra_rounds=2, config=config
    )
    assert _tags(batch) == [1] and dropped == 1 + 1 + 1 and source.calls == [1, 1]
    source = _Source([(t, False) for t in range(10, 30)])
    batch, dropped, _ = informative_batch(
        _batch([(0, False), (1, False)]), source, target=2, max_extra_rounds=1, config=config
    )
    assert batch is None and dropped == 4 and source.calls == [2]


def test_a_full_first_round_samples_nothing_more():
    source = _Source([])
    batch, dropped, _ = informative_batch(
        _batch([(0, True), (1, True)]), source, target=2, max_extra_rounds=5, config=spiral_fast.SpiralConfig()
    )
    assert _tags(batch) == [0, 1] and dropped == 0 and source.calls == []


@pytest.mark.parametrize("method", ["spiral", "grpo"])
def test_demo_reports_dropped_and_trains_only_informative_problems(method):
    base = train_demo(DemoConfig(seed=2, method=method, **TINY), progress=False).history
    run = train_demo(
        DemoConfig(seed=2, method=method, dynamic_sampling=True, max_extra_rounds=2, **TINY), progress=False
    ).history
    assert all(row["dropped"] == 0 and row["trained_problems"] == 2 for row in base)
    assert base[0]["reward"] == run[0]["reward"]  # same first rollout: metrics come from it
    assert sum(row["dropped"] for row in run) > 0  # a random tiny model often ties all rewards
    for row in run:
        assert 0 <= row["trained_problems"] <= 2 and row["dropped"] >= 0
        assert (row["trained_problems"] == 0) == ("step/tokens_trained" not in row)  # no batch, no step


def test_dynamic_sampling_options_are_checked():
    with pytest.raises(ValueError, match="max_extra_rounds must be an int >= 0"):
        DemoConfig(max_extra_rounds=-1)
    assert DemoConfig(max_extra_rounds=0).rollout.max_extra_rounds == 0  # as rollout.max_extra_rounds: 0 = none
    with pytest.raises(ValueError, match="dynamic_sampling"):
        DemoConfig(dynamic_sampling=1)


def test_cli_flag():
    from spiral_fast.cli import build_parser

    args = build_parser().parse_args(["demo", "--dynamic-sampling", "--max-extra-rounds", "2"])
    assert args.dynamic_sampling is True and args.max_extra_rounds == 2
    assert build_parser().parse_args(["demo"]).dynamic_sampling is False
