"""rollout(sampler, task, problems, config): sizes and sampling settings from the RolloutConfig;
prompts, template, reward, EOS and padding from the Task; the keyword form of earlier releases still
works, equals it, and warns; bad arguments are named."""

import warnings

import pytest
import torch

import spiral_fast as sf
from spiral_fast.recipe.tiny_model import tiny_qwen2
from spiral_fast.rollout import AggregationTemplate, RolloutConfig, draw_sets, rollout
from spiral_fast.tasks import ToyTask

TASK = ToyTask(base=4, num_digits=1)
PROBLEMS = [(1,), (2,), (3,)]


class RecordingTask(ToyTask):
    """ToyTask whose reward records its calls and whose EOS is the separator token (so that responses
    stop early)."""

    def __init__(self):
        super().__init__(base=4, num_digits=1)
        self.eos_token_id = self.tokenizer.sep_id
        self.calls = []

    def reward(self, problem, set_traces, response):
        self.calls.append((problem, [list(t) for t in set_traces], list(response)))
        return float(len(response) % 2)


def _model():
    return tiny_qwen2(len(TASK.tokenizer), seed=3, hidden_size=16, num_layers=1)


def _as_lists(batch):
    return [
        (
            pr.sets,
            [y.tolist() for y in pr.traces],
            [a.tolist() for a in pr.agg_prompts],
            [[z.tolist() for z in zs] for zs in pr.aggregations],
            pr.rewards,
        )
        for pr in batch.problems
    ]


def test_config_form_takes_sizes_from_config_and_the_rest_from_the_task():
    task = RecordingTask()
    config = RolloutConfig(
        num_traces=4,
        set_size=2,
        num_sets=3,
        num_aggregations=2,
        max_new_tokens=4,
        agg_max_new_tokens=2,
        temperature=0.8,
    )
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the documented form does not warn
        batch = rollout(
            sf.HFSampler(_model(), pad_token_id=task.pad_token_id),
            task,
            PROBLEMS,
            config,
            generator=torch.Generator().manual_seed(0),
            seed=5,
            on_progress=lambda phase, done, total: seen.append((phase, done, total)),
        )
    assert isinstance(batch, sf.SpiralBatch) and len(batch.problems) == 3
    assert seen == [("traces", 3, 3), ("aggregations", 3, 3)]
    eos, ended = task.eos_token_id, 0
    for problem, pr in zip(PROBLEMS, batch.problems):
        assert pr.prompt.tolist() == task.prompt(problem)
        traces = [y.tolist() for y in pr.traces]
        assert len(traces) == 4 and all(1 <= len(y) <= 4 and eos not in y[:-1] for y in traces)
        assert len(pr.sets) == 3 and len({frozenset(s) for s in pr.sets}) == 3
        for s, a, zs, rs in zip(pr.sets, pr.agg_prompts, pr.aggregations, pr.rewards, strict=True):
            assert a.tolist() == task.template(task.prompt(problem), [traces[i] for i in s])
            assert len(zs) == 2 and all(1 <= z.numel() <= 2 for z in zs)
            assert rs == [float(z.numel() % 2) for z in zs]
        ended += sum(y[-1] == eos for y in traces)
    assert ended > 0  # the task's EOS stopped some traces
    # every reward call got its problem (not an index), its set's traces and its response
    assert len(task.calls) == 3 * 3 * 2 and {c[0] for c in task.calls} == set(PROBLEMS)


def test_keyword_form_warns_and_equals_the_config_form():
    config = RolloutConfig(
        num_traces=3,
        set_size=2,
        num_sets=2,
        num_aggregations=2,
        max_new_tokens=3,
        agg_max_new_tokens=2,
        candidate_order="random",
    )
    model = _model()
    new = rollout(model, TASK, PROBLEMS, config, generator=torch.Generator().manual_seed(1), seed=9)
    with pytest.warns(DeprecationWarning, match=r"rollout\(sampler, task, problems, config\)"):
        old = sf.rollout(
            model,
            [TASK.prompt(p) for p in PROBLEMS],
            template=TASK.template,
            reward_fn=lambda i, s, z: TASK.reward(PROBLEMS[i], s, z),
            num_traces=3,
            num_sets=2,
            set_size=2,
            num_aggregations=2,
            max_new_tokens=3,
            agg_max_new_tokens=2,
            eos_token_id=TASK.eos_token_id,
            pad_token_id=TASK.pad_token_id,
            generator=torch.Generator().manual_seed(1),
            seed=9,
        )
    assert _as_lists(old) == _as_lists(new)


def test_keyword_form_keeps_the_drawn_order_and_config_defaults_to_shared():
    assert RolloutConfig().candidate_order == "shared"
    model = _model()
    with pytest.warns(DeprecationWarning):
        batch = sf.rollout(
            model,
            [TASK.prompt(p) for p in PROBLEMS],
            template=TASK.template,
            reward_fn=lambda *a: 0.0,
            num_traces=4,
            num_sets=5,
            set_size=2,
            num_aggregations=1,
            max_new_tokens=1,
            generator=torch.Generator().manual_seed(2),
        )
    gen = torch.Generator().manual_seed(2)
    assert [pr.sets for pr in batch.problems] == [draw_sets(4, 5, 2, generator=gen) for _ in PROBLEMS]


def test_seeded_config_form_is_reproducible():
    config = RolloutConfig(
        num_traces=3, set_size=2, num_sets=2, num_aggregations=1, max_new_tokens=3, agg_max_new_tokens=2
    )
    runs = [_as_lists(rollout(_model(), TASK, PROBLEMS, config, seed=[4, 5, 6])) for _ in range(2)]
    assert runs[0] == runs[1]


def test_public_names_still_resolve():
    import spiral_fast.rollout as module

    assert callable(module) and sf.rollout is module and module.rollout is rollout
    assert module.AggregationTemplate is AggregationTemplate and module.draw_sets is draw_sets
    assert module.RolloutConfig is RolloutConfig


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda m: rollout(m, TASK, PROBLEMS, {"num_traces": 4}), "config"),
        (lambda m: rollout(m, TASK, [], RolloutConfig()), "problems"),
        (lambda m: rollout(m, TASK, PROBLEMS, RolloutConfig(), num_traces=4), "settings from config"),
        (lambda m: rollout(m, [[1, 2]], PROBLEMS, RolloutConfig()), "spiral_fast.Task"),
        (
            lambda m: rollout(
                m,
                TASK,
                PROBLEMS,
                RolloutConfig(num_traces=2, set_size=2, num_sets=1, max_new_tokens=1),
                aggregation="beam",
            ),
            "aggregation",
        ),
        (lambda m: rollout(m, TASK, PROBLEMS, RolloutConfig(), seed="x"), "seed"),
    ],
    ids=["config-dict", "no-problems", "keyword-with-config", "prompts-with-config", "aggregation", "seed"],
)
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call(_model())
