"""``MathTask``: problems with a final answer, in a Hugging Face tokenizer's chat template.

Problems are rows ``{"problem": str, "answer": str}`` (JSONL files, see ``tasks.data``). The search
prompt and the aggregation prompt follow the paper (``tasks.prompts``); the reward checks the
final answer of a response (last ``\\boxed{}``, else last number) with math-verify where installed,
else by normalised exact match (``tasks.rewards``).
"""
from __future__ import annotations

from typing import Sequence

from spiral_fast.tasks.base import Task
from spiral_fast.tasks.data import ProblemStream
from spiral_fast.tasks.prompts import AGGREGATION, CANDIDATE, SEARCH, Prompts
from spiral_fast.tasks.rewards import REWARDS, extract_answer, normalize


class MathTask(Task):
    """tokenizer: a HF tokenizer with a chat template. train / eval: lists of problem rows.
    search / aggregation / candidate: the prompt texts (``tasks.prompts``). reward: "math" or
    "exact" (``tasks.rewards.REWARDS``)."""

    def __init__(self, tokenizer, train: Sequence[dict], eval: Sequence[dict] = (), *, search: str = SEARCH,
                 aggregation: str = AGGREGATION, candidate: str = CANDIDATE, reward: str = "math"):
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {list(REWARDS)}, got {reward!r}")
        self.prompts = Prompts(tokenizer, search, aggregation, candidate)
        self.tokenizer = tokenizer
        self.train_rows, self.eval_rows = list(train), list(eval)
        self.reward_name = reward
        self._reward = REWARDS[reward]
        self.eos_token_id = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (self.eos_token_id or 0)

    def prompt(self, problem: dict) -> list[int]:
        return self.prompts.search(problem["problem"])

    def template(self, prompt, set_traces) -> list[int]:
        return self.prompts.template(prompt, set_traces)

    def score(self, problem: dict, response) -> float:
        return float(self._reward(self.decode(response), problem["answer"]))

    def answer_of(self, response):
        found = extract_answer(self.decode(response))
        return None if found is None else normalize(found)

    def decode(self, ids) -> str:
        return self.prompts.decode(ids)

    def describe(self, problem: dict) -> tuple[str, str]:
        return problem["problem"], problem["answer"]

    def train_problems(self, seed: int, position: int = 0):
        return _RowStream(self.train_rows, seed, position)

    def eval_problems(self, count: int, seed: int = 0) -> list:
        """The first ``count`` evaluation rows (ValueError when there are fewer)."""
        if count > len(self.eval_rows):
            raise ValueError(f"count={count} evaluation problems asked, the task has {len(self.eval_rows)}")
        return self.eval_rows[:count]


class _RowStream(ProblemStream):
    """``ProblemStream`` handing out rows instead of indices."""

    def __init__(self, rows, seed: int, position: int):
        super().__init__(len(rows), seed, position)
        self.rows = rows

    def take(self, n: int) -> list:
        return [self.rows[i] for i in super().take(n)]
