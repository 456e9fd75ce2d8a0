"""Rewards of the training command: "math" (final-answer checking) and "exact".

"math" uses ``math-verify`` where it is installed, on the last ``\\boxed{}`` of the response or else
its final number; without it the fallback is the normalised exact match of that extracted answer
(the training command logs that the fallback is in use). "exact" compares the whole normalised
response with the answer. Rewards are 1.0 or 0.0.

``call_with_timeout`` bounds a reward's time (math-verify can hang on adversarial output); ``MathTask``
scores a reward that raises or times out 0 and counts it.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
import queue
import re
import signal
import threading
import time

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


@functools.cache
def _accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _no_timeout(fn, name: str) -> dict:
    """{name: None} where ``fn`` takes that keyword (math-verify >= 0.5), else {}."""
    return {name: None} if _accepts(fn, name) else {}


class _OwnTimeoutNotice(logging.Filter):
    """Drops math-verify's "Timeout is disabled ... you must provide the logic for timeout
    interruption yourself" notice, and only that one: we pass its timeouts as None on purpose, and
    bound the time ourselves (``call_with_timeout``, reward.timeout_s), so the notice would
    contradict our own setting. Every other record of its loggers passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not (text.startswith("Timeout is disabled") and "you must provide" in text)


_NOTICE_FILTER = _OwnTimeoutNotice()
# the loggers that emit it (math_verify/parser.py: parse, math_verify/grader.py: verify)
MATH_VERIFY_LOGGERS = ("math_verify.parser", "math_verify.grader")


def _silence_own_timeout_notice() -> None:
    """Installs the filter on math-verify's loggers (idempotent: ``addFilter`` keeps one copy)."""
    for name in MATH_VERIFY_LOGGERS:
        logging.getLogger(name).addFilter(_NOTICE_FILTER)


def math_reward(response: str, answer: str) -> float:
    """1.0 when the response's final answer (last ``\\boxed{}``, else last number) equals ``answer``."""
    got = extract_answer(response)
    if got is None:
        return 0.0
    if has_math_verify():
        from math_verify import parse, verify

        _silence_own_timeout_notice()
        # math-verify's own timeouts are SIGALRM-based (main thread only; they would also cancel the
        # caller's timer): off, the caller bounds the time (``call_with_timeout``)
        gold = parse(f"\\boxed{{{answer}}}", **_no_timeout(parse, "parsing_timeout"))
        pred = parse(f"\\boxed{{{got}}}", **_no_timeout(parse, "parsing_timeout"))
        return float(verify(gold, pred, **_no_timeout(verify, "timeout_seconds")))
    return float(normalize(got) == normalize(answer))


def exact_reward(response: str, answer: str) -> float:
    """1.0 when the whole normalised response equals the normalised answer."""
    return float(normalize(response) == normalize(answer))


REWARDS = {"math": math_reward, "exact": exact_reward}


class RewardTimeout(BaseException):
    """A reward ran past its time limit. A BaseException, so that a reward's own ``except
    Exception`` (math-verify's ``raise_on_error=False``) does not swallow it."""


def call_with_timeout(fn, args: tuple, timeout_s: float | None):
    """``fn(*args)``, or ``RewardTimeout`` once it has run ``timeout_s`` seconds (None: no limit).

    In the main thread (Unix): a SIGALRM interval timer interrupts ``fn`` where it is, so a hung
    pure-Python computation (sympy under math-verify) stops; an outer timer is re-armed afterwards.
    Elsewhere ``fn`` runs in a daemon thread that is abandoned at the deadline (it may finish in the
    background; its result is dropped)."""
    if timeout_s is None:
        return fn(*args)
    if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():

        def alarm(signum, frame):
            raise RewardTimeout(f"took longer than {timeout_s:g} s")

        previous = signal.signal(signal.SIGALRM, alarm)
        outer, _ = signal.setitimer(signal.ITIMER_REAL, timeout_s)
        start = time.monotonic()
        try:
            return fn(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if outer > 0:  # someone else's timer was running: give it what it has left
                signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 1e-3))
    box: queue.Queue = queue.Queue(maxsize=1)

    def run():
        try:
            box.put((True, fn(*args)))
        except BaseException as err:  # handed to the caller
            box.put((False, err))

    threading.Thread(target=run, daemon=True, name="spiral_fast-reward").start()
    try:
        ok, value = box.get(timeout=timeout_s)
    except queue.Empty:
        raise RewardTimeout(f"took longer than {timeout_s:g} s") from None
    if not ok:
        raise value
    return value
