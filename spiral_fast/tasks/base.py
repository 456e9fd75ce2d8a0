"""``Task``: a verifiable task as the training loop and evaluation see it.

A task owns its problems, the two roles' prompts (the search prompt of a problem, the aggregation
template of a set of traces) and its reward. The loop never looks inside a problem: it hands
problems back to the task. Two implementations: ``ToyTask`` (the demo's digit task, a word-level
tokenizer built in code) and ``MathTask`` (problems with final answers, a Hugging Face tokenizer's
chat template, final-answer checking).
"""

from __future__ import annotations

import abc
from collections.abc import Hashable, Sequence

import torch


class Task(abc.ABC):
    """A verifiable task.

    ``prompt(problem)`` -> search prompt token ids x. ``template(x, set_traces)`` -> aggregation
    prompt token ids a_j (the ``rollout`` template). ``reward(problem, set_traces, response)`` ->
    the aggregation reward r_jg in [0, 1]. ``score(problem, response)`` -> whether one response
    answers the problem on its own, in [0, 1] (single-trace GRPO, pass@k, RSA). ``answer_of(response)``
    -> its final answer (hashable, None if it gives none: majority vote). ``decode(ids)`` -> text
    (samples logs). ``train_problems(seed, position)`` -> the endless, seeded stream of training
    problems (``take(n)``, ``position``); ``eval_problems(count, seed)`` -> held-out problems.
    ``eos_token_id`` ends a sampled response (None: only the length does); ``pad_token_id`` pads.
    """

    eos_token_id: int | None = None
    pad_token_id: int = 0

    @abc.abstractmethod
    def prompt(self, problem) -> list[int]: ...

    @abc.abstractmethod
    def template(self, prompt: Sequence[int], set_traces: Sequence[Sequence[int]]) -> list[int]: ...

    @abc.abstractmethod
    def score(self, problem, response: Sequence[int]) -> float: ...

    def reward(self, problem, set_traces: Sequence[Sequence[int]], response: Sequence[int]) -> float:
        """The aggregation reward: by default the response's own score (final-answer checking)."""
        return self.score(problem, response)

    @abc.abstractmethod
    def answer_of(self, response: Sequence[int]) -> Hashable | None: ...

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @abc.abstractmethod
    def train_problems(self, seed: int, position: int = 0): ...

    @abc.abstractmethod
    def eval_problems(self, count: int, seed: int = 0) -> list: ...

    def describe(self, problem) -> tuple[str, str]:
        """(problem text, answer text) for logs."""
        return str(problem), ""


class SampledProblems:
    """A stream that draws problems with ``sample(count, generator)`` (a task that makes them)."""

    def __init__(self, sample, seed: int, position: int = 0):
        self.sample = sample
        self.generator = torch.Generator().manual_seed(seed)
        self.position = 0
        if position:
            self.take(position)  # replay the draws: the generator's state follows the count

    def take(self, n: int) -> list:
        self.position += n
        return self.sample(n, self.generator)
