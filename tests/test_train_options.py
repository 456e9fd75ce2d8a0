"""spiral-fast train's options of issue 18 on the tiny model: samples.jsonl, the behaviour log-prob
mismatch and rollout.behaviour_logprobs="trainer", GRPO through the same command, a .gguf-less
model.path check, and `spiral-fast eval --config` before / after training."""

import json
import math

import pytest
from train_fixtures import setup

SHORT = [
    "train.steps=1",
    "rollout.problems_per_step=2",
    "rollout.max_new_tokens=3",
    "rollout.agg_max_new_tokens=3",
    "rollout.dynamic_sampling=false",
    "train.save_every=0",
]


def _train(config, overrides):
    from spiral_fast.cli import main

    args = ["train", "--config", config, "--no-progress"]
    for o in overrides:
        args += ["--set", o]
    main(args)


def _read(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def test_samples_and_the_sampler_trainer_mismatch(tmp_path):
    config, overrides = setup(str(tmp_path))
    out = tmp_path / "out"
    _train(config, overrides + SHORT + [f'train.output="{out}"'])
    (row,) = _read(out / "metrics.jsonl")
    # HF generate and the packed forward of the same weights: the same distribution up to float error
    assert 0.0 <= row["logprob_mismatch_mean"] <= row["logprob_mismatch_max"] < 1e-4
    samples = _read(out / "samples.jsonl")
    assert len(samples) == 2 and all(s["step"] == 1 for s in samples)
    for s in samples:
        assert set(s) == {"step", "problem", "answer", "traces", "sets", "aggregations", "rewards"}
        assert " + " in s["problem"] and s["answer"].isdigit() and len(s["traces"]) == 4
        assert all(isinstance(t, str) for t in s["traces"]) and len(s["sets"]) == len(s["aggregations"]) == 2
        assert all(len(zs) == len(rs) == 2 for zs, rs in zip(s["aggregations"], s["rewards"]))

    trainer = tmp_path / "trainer"
    _train(
        config,
        overrides
        + SHORT
        + [f'train.output="{trainer}"', 'rollout.behaviour_logprobs="trainer"', "train.log_samples_every=0"],
    )
    (again,) = _read(trainer / "metrics.jsonl")
    assert not (trainer / "samples.jsonl").exists()
    # the same rollout (same seeds); the mismatch is measured before the recomputed log-probs replace it
    assert math.isclose(again["logprob_mismatch_mean"], row["logprob_mismatch_mean"], rel_tol=1e-3, abs_tol=1e-7)
    assert math.isclose(again["loss"], row["loss"], rel_tol=1e-4, abs_tol=1e-7)


def test_grpo_runs_through_the_same_command(tmp_path):
    config, overrides = setup(str(tmp_path))
    out = tmp_path / "grpo"
    _train(config, overrides + SHORT + [f'train.output="{out}"', 'rollout.method="grpo"'])
    (row,) = _read(out / "metrics.jsonl")
    # N=4 traces of 3 tokens + M*G = 4 aggregations of 3 tokens: 8 single traces per problem, no trace role
    assert row["trace_loss"] == 0.0 and 2 * 8 <= row["trace_tokens_sampled"] <= 2 * 8 * 3
    assert row["agg_tokens_sampled"] == 0.0 and row["agg_tokens"] == row["trace_tokens_sampled"]  # the group


@pytest.mark.parametrize(
    "overrides,match",
    [
        (['model.path="/nonexistent.gguf"'], "model.path"),
        (['rollout.method="ppo"'], "rollout.method"),
        (['rollout.behaviour_logprobs="engine"'], "rollout.behaviour_logprobs"),
        (['rollout.dtype="int8"'], "rollout.dtype"),
        (["rollout.kv_cache_gb=0"], "rollout.kv_cache_gb"),
        (["train.log_samples_every=-1"], "train.log_samples_every"),
    ],
)
def test_new_keys_are_checked(tmp_path, overrides, match):
    from spiral_fast.recipe.config import load_config

    config, base = setup(str(tmp_path))
    with pytest.raises(ValueError, match=match):
        load_config(config, base + overrides)


def test_eval_config_before_and_after(tmp_path, capsys):
    from spiral_fast.cli import main

    config, overrides = setup(str(tmp_path))
    out = tmp_path / "out"
    _train(config, overrides + SHORT + [f'train.output="{out}"', "train.save_every=1"])
    sets = []
    for o in overrides + ["rollout.max_new_tokens=3", "rollout.agg_max_new_tokens=3"]:
        sets += ["--set", o]
    common = [
        "eval",
        "--config",
        config,
        *sets,
        "--problems",
        "3",
        "--samples",
        "2",
        "--population",
        "2",
        "--set-size",
        "2",
        "--steps",
        "1",
    ]
    main(common + ["--json", str(tmp_path / "base.json"), "--out", str(tmp_path / "base.png")])
    main(
        common
        + [
            "--checkpoint",
            str(out / "checkpoint-1"),
            "--json",
            str(tmp_path / "after.json"),
            "--out",
            str(tmp_path / "after.png"),
        ]
    )
    base = json.loads((tmp_path / "base.json").read_text())["base model"]
    after = json.loads((tmp_path / "after.json").read_text())["checkpoint-1"]
    for result in (base, after):
        assert len(result["pass_at_k"]) == len(result["majority"]) == 2 and len(result["rsa"]) == 2
        assert all(0.0 <= v <= 1.0 for v in result["pass_at_k"] + result["majority"] + result["rsa"])
    assert (tmp_path / "after.png").is_file() and "RSA step 1" in capsys.readouterr().out
