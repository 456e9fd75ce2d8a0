"""The demo's toy task: tokenizer, balanced problems, answers and the aggregation reward."""

import pytest
import torch

from spiral_fast.recipe.demo import DemoConfig
from spiral_fast.tasks.toy import ToyTask, ToyTokenizer


def test_tokenizer_round_trip_and_unknown_word():
    tok = ToyTokenizer(base=5)
    assert len(tok) == 4 + 5
    ids = tok.encode("3 1 ? | 4 pick")
    assert tok.decode(ids) == "3 1 ? | 4 pick"
    assert [tok.digit(i) for i in ids] == [3, 1, None, None, 4, None]
    with pytest.raises(ValueError, match="vocabulary"):
        tok.encode("7")


@pytest.mark.parametrize(
    "base,digits,count", [(4, 1, 8), (5, 2, 7), (3, 3, 3)], ids=["B4-L1-P8", "B5-L2-P7", "B3-L3-P3"]
)
def test_problems_balanced_and_prompt(base, digits, count):
    task = ToyTask(base=base, num_digits=digits)
    problems = task.sample_problems(count, torch.Generator().manual_seed(1))
    assert len(problems) == count and all(len(p) == digits for p in problems)
    answers = [task.answer(p) for p in problems]
    per_answer = [answers.count(a) for a in range(base)]
    assert max(per_answer) - min(per_answer) <= 1
    tok = task.tokenizer
    assert task.prompt(problems[0]) == [tok.digit0 + d for d in problems[0]] + [tok.ask_id]


def test_answer_and_template_by_hand():
    task = ToyTask(base=4, num_digits=2)
    assert task.answer((1, 1)) == 3 and task.answer((2, 1)) == 0
    tok = task.tokenizer
    a = task.template(tok.encode("2 1 ?"), [tok.encode("0"), tok.encode("3")])
    assert tok.decode(a) == "2 1 ? | 0 | 3 pick"


@pytest.mark.parametrize(
    "response,expected",
    [
        ("0", 1.0),  # answer 0 is right and traces 0 and 2 proposed it
        ("0 3", 1.0),  # only the first token is the answer
        ("3", 0.0),  # trace 1 proposed 3, but 3 is wrong
        ("1", 0.0),  # no member proposed 1 (and it is wrong)
        ("pick", 0.0),  # not a digit
        ("", 0.0),  # empty response
    ],
    ids=["right-proposed", "first-token", "wrong-proposed", "not-proposed", "not-digit", "empty"],
)
def test_reward_by_hand(response, expected):
    task = ToyTask(base=4, num_digits=2)
    tok = task.tokenizer
    problem = (2, 1)  # answer (2 + 1 + 1) mod 4 = 0
    traces = [tok.encode("0"), tok.encode("3"), tok.encode("0 1")]
    assert task.reward(problem, traces, tok.encode(response)) == expected


def test_reward_needs_a_member_with_the_right_answer():
    """The aggregator scores only through its traces: the right answer earns nothing unless a
    member proposed it."""
    task = ToyTask(base=4, num_digits=2)
    tok = task.tokenizer
    problem = (2, 1)  # answer 0
    assert task.reward(problem, [tok.encode("3"), tok.encode("1"), tok.encode("pick")], tok.encode("0")) == 0.0
    assert task.reward(problem, [tok.encode("3"), tok.encode("0")], tok.encode("0")) == 1.0


@pytest.mark.parametrize(
    "trace,answer,correct",
    [("0", 0, True), ("0 2", 0, True), ("2", 2, False), ("| 0", None, False), ("", None, False)],
    ids=["right", "first-token", "wrong", "not-digit", "empty"],
)
def test_a_single_trace_answers_on_its_own(trace, answer, correct):
    task = ToyTask(base=4, num_digits=2)
    tok = task.tokenizer
    assert task.trace_answer(tok.encode(trace)) == answer
    assert task.trace_correct((2, 1), tok.encode(trace)) is correct


@pytest.mark.parametrize(
    "kwargs,match", [({"base": 1}, "base"), ({"num_digits": 0}, "num_digits")], ids=["base-1", "digits-0"]
)
def test_task_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ToyTask(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"iterations": 0}, "iterations"),
        ({"lr": -1.0}, "lr"),
        ({"step_impl": "fast"}, "step_impl"),
        ({"set_size": 9}, "set_size"),
    ],
    ids=["iterations-0", "lr-negative", "impl-unknown", "K-above-N"],
)
def test_demo_config_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DemoConfig(**kwargs)
