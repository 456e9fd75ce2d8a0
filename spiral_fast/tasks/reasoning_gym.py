"""``ReasoningGymTask``: procedurally generated, verifiable problems from reasoning-gym.

reasoning-gym (PyPI ``reasoning-gym``, Apache-2.0) has ~100 generators, each with its own scorer:
``reasoning_gym.create_dataset(name, seed=, size=, **config)`` gives entries ``{"question", "answer",
"metadata"}`` and ``dataset.score_answer(answer, entry)`` scores an extracted answer in [0, 1]. The
task renders questions with the chat prompts of ``MathTask`` (the two roles), takes a response's
answer from its last ``\\boxed{}``, else from reasoning-gym's ``<answer>`` tags, and scores it with the
dataset's own scorer; a partial score in (0, 1) is kept as the reward, not rounded. Train and eval
problems come from different seeds, and a question that appears in both is dropped from train.

reasoning-gym is optional: it is imported when a task is built (``pip install reasoning-gym``).
"""

from __future__ import annotations

import inspect

from spiral_fast.tasks.math import MathTask
from spiral_fast.tasks.prompts import AGGREGATION, CANDIDATE, SEARCH
from spiral_fast.tasks.rewards import last_boxed

INSTALL = "pip install reasoning-gym"
EVAL_SEED_OFFSET = 1_000_003  # eval problems come from seed + this: another stream than train's
OWN_KEYS = ("seed", "size")  # create_dataset arguments the task sets itself


def _reasoning_gym():
    try:
        import reasoning_gym
    except ImportError as err:
        raise ValueError(f"the reasoning_gym data source needs reasoning-gym ({INSTALL})") from err
    return reasoning_gym


def check_reasoning_gym(name: str, config: dict | None = None) -> None:
    """ValueError for a dataset name reasoning-gym does not know, or a config key its generator does
    not take (checked without generating anything: before any model loads)."""
    rg = _reasoning_gym()
    from reasoning_gym.factory import DATASETS

    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"task: reasoning-gym has no dataset {name!r}; some it has: {sorted(DATASETS)[:12]} ...")
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"task_config must be a table (dict) of {name!r}'s generator settings, got {config!r}")
    _, config_cls = DATASETS[name]
    params = set(inspect.signature(config_cls).parameters) - set(OWN_KEYS)
    own = sorted(set(config or {}) & set(OWN_KEYS))
    if own:  # create_dataset would get them twice: say which settings give them instead
        raise ValueError(
            f"task_config must not set {own}: {OWN_KEYS} come from train.seed and data.train_size / data.eval_size"
        )
    unknown = sorted(set(config or {}) - params)
    if unknown:
        raise ValueError(f"task_config: {name!r} takes no {unknown}; its keys: {sorted(params)}")
    try:  # the generator's own checks of the values (ranges, types), on a one-problem dataset
        rg.create_dataset(name, seed=0, size=1, **(config or {}))
    except (AssertionError, TypeError, ValueError) as err:
        raise ValueError(f"task_config: reasoning-gym rejects {config!r} for {name!r}: {err}") from None


def generate(name: str, config: dict | None, seed: int, size: int) -> tuple[object, list[dict]]:
    """(the reasoning-gym dataset, its rows ``{"problem", "answer", "entry"}``)."""
    dataset = _reasoning_gym().create_dataset(name, seed=seed, size=size, **(config or {}))
    rows = [{"problem": e["question"], "answer": str(e["answer"]), "entry": e} for e in dataset]
    return dataset, rows


def extract(text: str) -> str | None:
    """The answer of a response: its last ``\\boxed{}``, else its last ``<answer>...</answer>``; stripped
    of surrounding whitespace (reasoning-gym's default scorer gives ``" 6 "`` only partial credit for "6")."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    from reasoning_gym.utils import extract_answer

    return extract_answer(text)


class ReasoningGymTask(MathTask):
    """A ``Task`` over reasoning-gym dataset ``name`` (``config``: the generator's keyword arguments):
    ``train_size`` problems from ``seed`` and ``eval_size`` held-out ones from another seed; training
    questions that also appear in eval are dropped. Prompts and timeouts as ``MathTask``; the reward
    (both roles) is the dataset's ``score_answer`` on the extracted answer, partial credit kept."""

    def __init__(
        self,
        tokenizer,
        name: str,
        config: dict | None = None,
        *,
        train_size: int = 10000,
        eval_size: int = 200,
        seed: int = 0,
        search: str = SEARCH,
        aggregation: str = AGGREGATION,
        candidate: str = CANDIDATE,
        reward_timeout_s: float | None = 10.0,
    ):
        check_reasoning_gym(name, config)
        for key, value in (("train_size", train_size), ("eval_size", eval_size)):
            least = 1 if key == "train_size" else 0  # no eval set is allowed, no training set is not
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{key} must be an int >= {least}, got {value!r}")
        self.name, self.config = name, dict(config or {})
        self.dataset, train = generate(name, config, seed, train_size)
        eval_rows = generate(name, config, seed + EVAL_SEED_OFFSET, eval_size)[1] if eval_size else []
        held_out = {r["problem"] for r in eval_rows}
        train = [r for r in train if r["problem"] not in held_out]
        if not train:
            raise ValueError(f"every training question of {name!r} also appears in eval: raise train_size")
        self.dropped_overlap = train_size - len(train)
        super().__init__(
            tokenizer,
            train,
            eval_rows,
            search=search,
            aggregation=aggregation,
            candidate=candidate,
            reward="exact",
            reward_timeout_s=reward_timeout_s,
        )

    def check(self, text: str, problem: dict) -> float:
        answer = extract(text)
        if answer is None:
            return 0.0
        return float(self.dataset.score_answer(answer, problem["entry"]))

    def answer_of(self, response):
        found = extract(self.decode(response))
        return None if found is None else " ".join(found.split())
