"""ReasoningGymTask: problems from reasoning_gym.create_dataset, train/eval from different seeds with the
overlap dropped from train, answers from the last \\boxed{} else <answer> tags, the dataset's own scorer in
both roles with partial credit kept, and config errors before any model loads."""

from __future__ import annotations

import os

import pytest

from spiral_fast.recipe.config import load_config
from spiral_fast.tasks import ReasoningGymTask
from spiral_fast.tasks.reasoning_gym import EVAL_SEED_OFFSET, check_reasoning_gym, extract

rg = pytest.importorskip("reasoning_gym")
EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "smollm2_addition.toml")

# 1-digit a + b / a - b: about 200 distinct questions, so 300 training draws and 100 held-out ones overlap
TINY_SUMS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


@pytest.fixture(scope="module")
def tokenizer():
    """A word-level tokenizer that spells answers: digits, ``\\boxed{`` ``}`` and the answer tags;
    decoding joins tokens without spaces (questions' other words are <unk>: prompts are not read here)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>", "\\boxed{", "}", "<answer>", "</answer>"] + [str(d) for d in range(10)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return fast


def _boxed(tokenizer, answer: str) -> list[int]:
    """Token ids of ``\\boxed{answer}`` (one token per digit)."""
    return tokenizer(" ".join(["\\boxed{", *answer, "}"]), add_special_tokens=False)["input_ids"]


def test_problems_come_from_create_dataset_with_seeds_and_overlap_dropped(tokenizer):
    task = ReasoningGymTask(tokenizer, "chain_sum", TINY_SUMS, train_size=300, eval_size=100, seed=3)
    train_ds = rg.create_dataset("chain_sum", seed=3, size=300, **TINY_SUMS)
    eval_ds = rg.create_dataset("chain_sum", seed=3 + EVAL_SEED_OFFSET, size=100, **TINY_SUMS)
    assert [r["problem"] for r in task.eval_rows] == [e["question"] for e in eval_ds]
    assert [r["answer"] for r in task.eval_rows] == [str(e["answer"]) for e in eval_ds]
    held_out = {e["question"] for e in eval_ds}
    kept = [e["question"] for e in train_ds if e["question"] not in held_out]
    assert [r["problem"] for r in task.train_rows] == kept  # the train seed's draws, in order, minus the overlap
    assert task.dropped_overlap == 300 - len(kept) > 0  # the case really overlaps, and it was dropped
    assert not {r["problem"] for r in task.train_rows} & held_out
    # another seed is another stream: the train draws differ from the eval draws
    assert [e["question"] for e in train_ds][:100] != [e["question"] for e in eval_ds]
    # the stream hands out the kept rows, and eval the generated ones
    assert all(r["problem"] in set(kept) for r in task.train_problems(0).take(10))
    assert task.eval_problems(5) == task.eval_rows[:5]


def test_every_question_held_out_is_an_error(tokenizer):
    # gcd of two numbers in 1..2: 4 possible questions, all of them among 200 held-out draws
    config = {"min_value": 1, "max_value": 2}
    assert len({e["question"] for e in rg.create_dataset("gcd", seed=EVAL_SEED_OFFSET, size=200, **config)}) == 4
    with pytest.raises(ValueError, match="also appears in eval"):
        ReasoningGymTask(tokenizer, "gcd", config, train_size=3, eval_size=200, seed=0)


def test_extract_last_boxed_else_answer_tags():
    assert extract("first \\boxed{1} then \\boxed{2}") == "2"
    assert extract("<answer> 7 </answer> and \\boxed{8}") == "8"  # \boxed{} wins over the tags
    assert extract("<answer>3</answer> no, <answer> 4 </answer>") == "4"  # the last tags, stripped
    assert extract("the answer is 5") is None
    assert extract("\\boxed{ 6 }") == "6" and extract("<answer>\n 6\n</answer>") == "6"  # whitespace stripped


def test_both_roles_score_with_the_datasets_scorer(tokenizer):
    task = ReasoningGymTask(tokenizer, "chain_sum", TINY_SUMS, train_size=50, eval_size=10, seed=0)
    problem = next(p for p in task.eval_rows if p["answer"].isdigit())  # spellable with the tiny vocabulary
    right, wrong = _boxed(tokenizer, problem["answer"]), _boxed(tokenizer, str(int(problem["answer"]) + 1))
    assert task.score(problem, right) == 1.0 and task.score(problem, wrong) == 0.0  # search traces
    assert task.reward(problem, [wrong, right], right) == 1.0  # aggregation responses
    assert task.reward(problem, [right, right], wrong) == 0.0
    assert task.answer_of(right) == problem["answer"] and task.answer_of(tokenizer("1 2")["input_ids"]) is None
    assert task.check(f"<answer>{problem['answer']}</answer>", problem) == 1.0  # tags when there is no \boxed{}
    assert task.check("no answer here", problem) == 0.0


def test_partial_credit_is_kept_in_both_roles(tokenizer):
    # reasoning-gym's default scorer (gcd uses it): len(oracle) / len(answer) when the answer contains it
    task = ReasoningGymTask(tokenizer, "gcd", {"max_value": 50}, train_size=20, eval_size=5, seed=0)
    problem = task.eval_rows[0]
    doubled = _boxed(tokenizer, problem["answer"] * 2)
    expected = task.dataset.score_answer(problem["answer"] * 2, problem["entry"])
    assert 0.0 < expected < 1.0 and expected == pytest.approx(0.5)
    assert task.score(problem, doubled) == expected
    assert task.reward(problem, [doubled], doubled) == expected


def test_partial_score_of_any_dataset_is_not_rounded(tokenizer, monkeypatch):
    task = ReasoningGymTask(tokenizer, "chain_sum", TINY_SUMS, train_size=20, eval_size=5, seed=0)
    seen = []

    def score_answer(answer, entry):
        seen.append((answer, entry))
        return 0.37

    monkeypatch.setattr(task.dataset, "score_answer", score_answer)
    problem = task.eval_rows[0]
    response = _boxed(tokenizer, "12")
    assert task.score(problem, response) == 0.37 and task.reward(problem, [response], response) == 0.37
    assert seen[0] == ("12", problem["entry"])  # the extracted answer and the generator's own entry


@pytest.mark.parametrize(
    "name, config, match",
    [
        ("no_such_dataset", {}, "no dataset 'no_such_dataset'"),
        ("chain_sum", {"min_termz": 2}, r"takes no \['min_termz'\]"),
        ("chain_sum", {"seed": 1}, "must not set"),
        ("chain_sum", {"min_terms": 5, "max_terms": 2}, "rejects"),
    ],
)
def test_wrong_name_or_config_is_a_value_error(tokenizer, name, config, match):
    with pytest.raises(ValueError, match=match):
        check_reasoning_gym(name, config)
    with pytest.raises(ValueError, match=match):
        ReasoningGymTask(tokenizer, name, config, train_size=5, eval_size=5)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (['data.task="no_such_dataset"'], "no dataset"),
        (['data.task="chain_sum"', "data.task_config={ min_termz = 2 }"], "min_termz"),
        ([], "task is required"),
    ],
)
def test_config_errors_before_any_model_loads(overrides, match):
    # load_config loads nothing: the error comes before the model
    with pytest.raises(ValueError, match=match):
        load_config(EXAMPLE, ['data.source="reasoning_gym"', *overrides])


def test_config_builds_the_fields():
    cfg = load_config(
        EXAMPLE,
        [
            'data.source="reasoning_gym"',
            'data.task="chain_sum"',
            "data.task_config={ min_terms = 2, max_terms = 2 }",
            "data.train_size=30",
            "data.eval_size=7",
        ],
    )
    d = cfg.data
    assert (d.source, d.task, d.task_config, d.train_size, d.eval_size) == (
        "reasoning_gym",
        "chain_sum",
        {"min_terms": 2, "max_terms": 2},
        30,
        7,
    )


def test_sizes_are_checked(tokenizer):
    with pytest.raises(ValueError, match="train_size"):
        ReasoningGymTask(tokenizer, "chain_sum", TINY_SUMS, train_size=0, eval_size=5)
    with pytest.raises(ValueError, match="eval_size"):
        ReasoningGymTask(tokenizer, "chain_sum", TINY_SUMS, train_size=5, eval_size=-1)
    assert ReasoningGymTask(tokenizer, "chain_sum", TINY_SUMS, train_size=5, eval_size=0).eval_rows == []
