"""The training command's rewards on a table of answer formats (math-verify absent: the fallback)."""
import pytest

from spiral_fast.tasks import rewards
from spiral_fast.tasks.rewards import exact_reward, extract_answer, math_reward, normalize

MATH = [
    ("so the answer is \\boxed{42}.", "42", 1.0),
    ("\\boxed{41} then \\boxed{42}", "42", 1.0),            # the last box counts
    ("\\boxed{42} wait, no: \\boxed{41}", "42", 0.0),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 1.0),          # nested braces
    ("\\boxed{\\dfrac{1}{2}}", "1/2", 1.0),
    ("the total is 1,000", "1000", 1.0),                     # no box: the final number
    ("3 apples and 4 pears: 7", "7", 1.0),
    ("3 apples and 4 pears: 7", "3", 0.0),
    ("\\boxed{ 7 }", "7", 1.0),
    ("$\\boxed{7.50}$", "7.5", 1.0),
    ("\\boxed{-3}", "-3", 1.0),
    ("\\boxed{\\text{east}}", "East", 1.0),
    ("no answer here", "7", 0.0),
    ("\\boxed{7", "7", 1.0),                                  # unclosed box: the final number
    ("", "7", 0.0),
]


@pytest.mark.parametrize("response,answer,want", MATH, ids=[f"{i}" for i in range(len(MATH))])
def test_math_reward_fallback(monkeypatch, response, answer, want):
    monkeypatch.setattr(rewards, "has_math_verify", lambda: False)
    assert math_reward(response, answer) == want


@pytest.mark.parametrize("response,answer,want", [
    ("Paris", "paris", 1.0), (" Paris. ", "Paris", 1.0), ("Paris, France", "Paris", 0.0), ("1,000", "1000", 1.0),
    ("$7$", "7", 1.0), ("7.0", "7", 1.0), ("the answer is 7", "7", 0.0)])
def test_exact_reward(response, answer, want):
    assert exact_reward(response, answer) == want


def test_extract_and_normalize():
    assert extract_answer("x \\boxed{a{b}c} y") == "a{b}c"
    assert extract_answer("1 then 2.5") == "2.5"
    assert extract_answer("nothing") is None
    assert normalize("\\left( 1, 2 \\right)") == "(1,2)"
