"""DemoConfig is documented and validated like the config sections (field metadata), derives the loop's
RolloutConfig (one-token responses, GRPO matched by count), and the demo writes under runs/."""

import dataclasses

import pytest

from spiral_fast.recipe.demo import DemoConfig
from spiral_fast.rollout.config import RolloutConfig


def test_every_field_documented_and_the_cli_help_is_that_documentation():
    from spiral_fast.cli import build_parser

    docs = DemoConfig.help()
    assert list(docs) == [f.name for f in dataclasses.fields(DemoConfig)] and all(docs.values())
    demo = build_parser()._subparsers._group_actions[0].choices["demo"]
    helps = {a.dest: a.help for a in demo._actions}
    for name, doc in docs.items():
        assert helps[name] == doc, name


def test_rollout_is_derived_with_the_demos_documented_grpo_match():
    c = DemoConfig(
        problems=3,
        traces=5,
        sets=2,
        set_size=2,
        aggregations=3,
        temperature=0.7,
        method="grpo",
        dynamic_sampling=True,
        max_extra_rounds=2,
    )
    assert c.rollout == RolloutConfig(
        engine="hf",
        method="grpo",
        grpo_match="count",
        problems_per_step=3,
        num_traces=5,
        set_size=2,
        num_sets=2,
        num_aggregations=3,
        max_new_tokens=1,
        agg_max_new_tokens=1,
        temperature=0.7,
        candidate_order="random",
        dynamic_sampling=True,
        oversample=0.0,
        max_extra_rounds=2,
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"traces": 0}, r"^traces must be an int >= 1"),
        ({"sets": 100, "traces": 4, "set_size": 2}, r"^sets must be <= C\(traces, set_size\) = 6"),
        ({"set_size": 9}, r"^set_size must be <= traces"),
        ({"lr": 0.0}, r"^lr must be a finite number > 0"),
        ({"method": "ppo"}, r"^method must be one of"),
        ({"engine": "sglang"}, r"^engine must be one of"),
        ({"dynamic_sampling": 1}, r"^dynamic_sampling must be a bool"),
        ({"aggregation": "parallel", "engine": "vllm"}, r"needs engine='hf'"),
    ],
)
def test_errors_name_the_demos_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DemoConfig(**kwargs)


def test_demo_writes_under_runs_by_default():
    from spiral_fast.cli import build_parser

    assert build_parser().parse_args(["demo"]).out == "runs/spiral_demo.png"
    assert build_parser().parse_args(["demo", "--compare", "grpo"]).out == "runs/spiral_demo.png"
