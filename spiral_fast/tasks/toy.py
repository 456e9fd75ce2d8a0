"""The toy task of the demo: "pick the answer", with its tokenizer.

Problem x: L digits in base B, then "?". Its answer is (sum of the digits + 1) mod B.
Trace y (search role): its first token is the trace's answer digit; a trace alone scores 1 if that
answer is right (``trace_correct``), which is what single-trace GRPO and pass@k score.
Aggregation prompt a_j: x, then each member trace after a "|", then "pick".
Aggregation z (aggregator role): its first token is an answer digit, like a trace's. Reward 1 if
that answer is right *and* some member trace proposed it, else 0 (``reward``).

Why this shape: the aggregator must pick its answer among the candidates, so it can only score
through the traces, and a set's value R_j is the chance that the set holds a right answer the
aggregator finds. Sets holding good traces earn positive set advantages, which teach the search
role the task; the aggregator in turn learns to pick the right candidate. Without good traces the
aggregation reward cannot rise, which is SPIRAL's premise in small. An aggregation answers in the
same form as a trace, so it can itself be a candidate of a later aggregation (recursive
self-aggregation, ``spiral_fast.evaluate.recursive_aggregation``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from spiral_fast.rollout.sets import AggregationTemplate
from spiral_fast.tasks.base import SampledProblems, Task

SPECIALS = ("<pad>", "|", "?", "pick")


class ToyTokenizer:
    """Word-level tokenizer: the special tokens, then the digits 0..B-1 (one token each)."""

    def __init__(self, base: int):
        self.vocab = list(SPECIALS) + [str(d) for d in range(base)]
        self.ids = {tok: i for i, tok in enumerate(self.vocab)}
        self.pad_id, self.sep_id, self.ask_id, self.pick_id = (self.ids[t] for t in SPECIALS)
        self.digit0 = len(SPECIALS)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Space-separated words to ids; an unknown word raises ValueError."""
        try:
            return [self.ids[w] for w in text.split()]
        except KeyError as err:
            raise ValueError(f"text has a word outside the vocabulary {self.vocab}: {err}") from None

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.vocab[i] if 0 <= i < len(self.vocab) else f"<{i}>" for i in ids)

    def digit(self, token: int) -> int | None:
        """The digit a token stands for, or None for a special / out-of-range token."""
        d = token - self.digit0
        return d if 0 <= d < len(self.vocab) - self.digit0 else None


@dataclass(frozen=True)
class ToyTask(Task):
    """base B (digits 0..B-1), num_digits L per problem. Responses are one token long: no EOS."""

    base: int = 4
    num_digits: int = 1

    def __post_init__(self):
        if not isinstance(self.base, int) or self.base < 2:
            raise ValueError(f"base must be an int >= 2, got {self.base!r}")
        if not isinstance(self.num_digits, int) or self.num_digits < 1:
            raise ValueError(f"num_digits must be an int >= 1, got {self.num_digits!r}")

    @property
    def tokenizer(self) -> ToyTokenizer:
        return ToyTokenizer(self.base)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_id

    @property
    def template(self) -> AggregationTemplate:
        tok = self.tokenizer
        return AggregationTemplate(separator=(tok.sep_id,), tail=(tok.pick_id,))

    def answer(self, problem: Sequence[int]) -> int:
        return (sum(problem) + 1) % self.base

    def prompt(self, problem: Sequence[int]) -> list[int]:
        tok = self.tokenizer
        return [tok.digit0 + d for d in problem] + [tok.ask_id]

    def sample_problems(self, count: int, generator: torch.Generator | None = None) -> list[tuple]:
        """count problems whose answers are balanced (each answer count // B times or once more):
        an unbalanced batch pulls the whole policy towards its most frequent answer."""
        answers = torch.randperm(self.base, generator=generator).repeat(count // self.base + 1)[:count]
        problems = []
        for a in answers.tolist():
            rest = torch.randint(0, self.base, (self.num_digits - 1,), generator=generator).tolist()
            first = (a - 1 - sum(rest)) % self.base  # so that answer(problem) == a
            problems.append((first, *rest))
        return problems

    def trace_answer(self, response: Sequence[int]) -> int | None:
        """The answer digit a response (trace or aggregation) gives: its first token, or None."""
        return self.tokenizer.digit(response[0]) if len(response) else None

    def trace_correct(self, problem: Sequence[int], trace: Sequence[int]) -> bool:
        """Whether a response's own answer is right (the single-trace score)."""
        return self.trace_answer(trace) == self.answer(problem)

    def reward(self, problem: Sequence[int], set_traces: Sequence[Sequence[int]], response: Sequence[int]) -> float:
        """1.0 if the response's answer is right and one of the member traces proposed it."""
        picked = self.trace_answer(response)
        if picked is None or picked not in [self.trace_answer(y) for y in set_traces]:
            return 0.0
        return float(picked == self.answer(problem))

    def score(self, problem: Sequence[int], response: Sequence[int]) -> float:
        return float(self.trace_correct(problem, response))

    def answer_of(self, response: Sequence[int]) -> int | None:
        return self.trace_answer(response)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def describe(self, problem: Sequence[int]) -> tuple[str, str]:
        return self.decode(self.prompt(problem)), str(self.answer(problem))

    def train_problems(self, seed: int, position: int = 0) -> SampledProblems:
        return SampledProblems(self.sample_problems, seed, position)

    def eval_problems(self, count: int, seed: int = 0) -> list:
        return self.sample_problems(count, torch.Generator().manual_seed(seed))
