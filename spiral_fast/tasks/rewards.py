"""Rewards of the training command: "math" (final-answer checking) and "exact".

"math" uses ``math-verify`` where it is installed, on the last ``\\boxed{}`` of the response or else
its final number; without it the fallback is the normalised exact match of that extracted answer
(the training command logs that the fallback is in use). "exact" compares the whole normalised
response with the answer. Rewards are 1.0 or 0.0.
"""
from __future__ import annotations

import importlib.util
import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def extract_answer(text: str) -> str | None:
    """The last ``\\boxed{}`` content of ``text``, else its last number, else None."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def normalize(text: str) -> str:
    """Lower case, no spaces, no ``$``, ``\\left``/``\\right``, ``\\text{}``, thousands commas or a
    trailing period; ``\\frac{a}{b}`` / ``\\dfrac`` -> ``a/b``; a number in canonical form (1.50 -> 1.5)."""
    s = text.strip().lower()
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\d?frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", s)
    s = re.sub(r"\((-?\d+)\)/\((\d+)\)", r"\1/\2", s)
    for token in ("\\left", "\\right", "\\!", "\\,", "$", " ", "\n", "\t"):
        s = s.replace(token, "")
    s = s.rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if re.fullmatch(r"-?\d+\.\d+|-?\d+", s):
        value = float(s)
        s = str(int(value)) if value == int(value) else repr(value)
    return s


def has_math_verify() -> bool:
    return importlib.util.find_spec("math_verify") is not None


def math_reward(response: str, answer: str) -> float:
    """1.0 when the response's final answer (last ``\\boxed{}``, else last number) equals ``answer``."""
    got = extract_answer(response)
    if got is None:
        return 0.0
    if has_math_verify():
        from math_verify import parse, verify

        return float(verify(parse(f"\\boxed{{{answer}}}"), parse(f"\\boxed{{{got}}}")))
    return float(normalize(got) == normalize(answer))


def exact_reward(response: str, answer: str) -> float:
    """1.0 when the whole normalised response equals the normalised answer."""
    return float(normalize(response) == normalize(answer))


REWARDS = {"math": math_reward, "exact": exact_reward}
