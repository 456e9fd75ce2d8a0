"""The training command's rewards on a table of answer formats (math-verify absent: the fallback)."""

import pytest

from spiral_fast.tasks import rewards
from spiral_fast.tasks.rewards import exact_reward, extract_answer, math_reward, normalize

MATH = [
    ("so the answer is \\boxed{42}.", "42", 1.0),
    ("\\boxed{41} then \\boxed{42}", "42", 1.0),  # the last box counts
    ("\\boxed{42} wait, no: \\boxed{41}", "42", 0.0),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 1.0),  # nested braces
    ("\\boxed{\\dfrac{1}{2}}", "1/2", 1.0),
    ("the total is 1,000", "1000", 1.0),  # no box: the final number
    ("3 apples and 4 pears: 7", "7", 1.0),
    ("3 apples and 4 pears: 7", "3", 0.0),
    ("\\boxed{ 7 }", "7", 1.0),
    ("$\\boxed{7.50}$", "7.5", 1.0),
    ("\\boxed{-3}", "-3", 1.0),
    ("\\boxed{\\text{east}}", "East", 1.0),
    ("no answer here", "7", 0.0),
    ("\\boxed{7", "7", 1.0),  # unclosed box: the final number
    ("", "7", 0.0),
]


@pytest.mark.parametrize("response,answer,want", MATH, ids=[f"{i}" for i in range(len(MATH))])
def test_math_reward_fallback(monkeypatch, response, answer, want):
    monkeypatch.setattr(rewards, "has_math_verify", lambda: False)
    assert math_reward(response, answer) == want


@pytest.mark.parametrize(
    "response,answer,want",
    [
        ("Paris", "paris", 1.0),
        (" Paris. ", "Paris", 1.0),
        ("Paris, France", "Paris", 0.0),
        ("1,000", "1000", 1.0),
        ("$7$", "7", 1.0),
        ("7.0", "7", 1.0),
        ("the answer is 7", "7", 0.0),
    ],
)
def test_exact_reward(response, answer, want):
    assert exact_reward(response, answer) == want


def test_extract_and_normalize():
    assert extract_answer("x \\boxed{a{b}c} y") == "a{b}c"
    assert extract_answer("1 then 2.5") == "2.5"
    assert extract_answer("nothing") is None
    assert normalize("\\left( 1, 2 \\right)") == "(1,2)"


def test_math_verify_timeout_notice_is_silenced_and_other_warnings_pass(monkeypatch, caplog):
    """We turn math-verify's own timeouts off and bound the time ourselves (reward.timeout_s), so its
    "Timeout is disabled ... provide the logic for timeout interruption yourself" must not print;
    its other warnings still do."""
    import logging

    parser = pytest.importorskip("math_verify.parser")
    grader = pytest.importorskip("math_verify.grader")
    for module in (parser, grader):  # the notice is shown once per process: make it due again
        monkeypatch.setattr(module, "TIMEOUT_WARNING_SHOWN", False)

    def notices():
        return [r for r in caplog.records if r.getMessage().startswith("Timeout is disabled")]

    with caplog.at_level(logging.WARNING):
        assert math_reward("so \\boxed{2}", "2") == 1.0
        assert notices() == []
        logging.getLogger("math_verify.parser").warning("another math-verify warning")
        logging.getLogger("math_verify.grader").warning("a grader warning")
    assert [r.getMessage() for r in caplog.records] == ["another math-verify warning", "a grader warning"]

    # without the filter the notice is emitted (the check above can fail)
    for name in rewards.MATH_VERIFY_LOGGERS:
        monkeypatch.setattr(logging.getLogger(name), "filters", [])
    monkeypatch.setattr(rewards, "_silence_own_timeout_notice", lambda: None)
    for module in (parser, grader):
        monkeypatch.setattr(module, "TIMEOUT_WARNING_SHOWN", False)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        math_reward("so \\boxed{2}", "2")
    assert len(notices()) == 2
