"""``MathTask``: problems with a final answer, in a Hugging Face tokenizer's chat template.

Problems are rows ``{"problem": str, "answer": str}`` (JSONL files, see ``tasks.data``). The search
prompt and the aggregation prompt follow the paper (``tasks.prompts``); the reward checks the
final answer of a response (last ``\\boxed{}``, else last number) with math-verify where installed,
else by normalised exact match (``tasks.rewards``). A reward that raises or runs past
``reward_timeout_s`` scores 0 and is counted in ``MathTask.reward_errors``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from spiral_fast.tasks.base import Task
from spiral_fast.tasks.data import ProblemStream
from spiral_fast.tasks.prompts import AGGREGATION, CANDIDATE, SEARCH, Prompts
from spiral_fast.tasks.rewards import REWARDS, RewardTimeout, call_with_timeout, extract_answer, normalize

log = logging.getLogger("spiral_fast.tasks.math")
SHOWN_CHARS = 200  # of a response whose reward failed, in the log


class MathTask(Task):
    """tokenizer: a HF tokenizer with a chat template. train / eval: lists of problem rows.
    search / aggregation / candidate: the prompt texts (``tasks.prompts``). reward: "math" or
    "exact" (``tasks.rewards.REWARDS``). reward_timeout_s: the longest a reward may take (None: no
    limit); a reward that raises or takes longer scores 0, adds 1 to ``reward_errors`` and is logged
    (a warning with the response cut to 200 characters) the first time each of the two happens."""

    def __init__(
        self,
        tokenizer,
        train: Sequence[dict],
        eval: Sequence[dict] = (),
        *,
        search: str = SEARCH,
        aggregation: str = AGGREGATION,
        candidate: str = CANDIDATE,
        reward: str = "math",
        reward_timeout_s: float | None = 10.0,
    ):
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {list(REWARDS)}, got {reward!r}")
        self.prompts = Prompts(tokenizer, search, aggregation, candidate)
        self.tokenizer = tokenizer
        self.train_rows, self.eval_rows = list(train), list(eval)
        self.reward_name = reward
        self.reward_timeout_s = reward_timeout_s
        self.reward_errors = 0  # rewards that raised or timed out (scored 0), since construction
        self._logged: set[str] = set()
        self.eos_token_id = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (self.eos_token_id or 0)

    def prompt(self, problem: dict) -> list[int]:
        return self.prompts.search(problem["problem"])

    def template(self, prompt, set_traces) -> list[int]:
        return self.prompts.template(prompt, set_traces)

    def check(self, text: str, problem: dict) -> float:
        """The reward of a decoded response (``score`` adds the timeout and the error accounting)."""
        return REWARDS[self.reward_name](text, problem["answer"])

    def score(self, problem: dict, response) -> float:
        text = self.decode(response)
        try:
            return float(call_with_timeout(self.check, (text, problem), self.reward_timeout_s))
        except RewardTimeout as err:
            kind, what = "timeout", f"timed out ({err})"
        except Exception as err:  # a reward bug or math-verify on odd output: the run goes on
            kind, what = "error", f"raised {type(err).__name__}: {err}"
        self.reward_errors += 1
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning(
                "reward %r %s on the response %r (cut to %d characters); scored 0. Further reward "
                "errors are counted in the metric reward_errors, not logged",
                self.reward_name,
                what,
                text[:SHOWN_CHARS],
                SHOWN_CHARS,
            )
        return 0.0

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
