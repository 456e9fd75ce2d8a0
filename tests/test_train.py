"""spiral-fast train on a tiny random Qwen2 (word-level tokenizer, chat template, 20 arithmetic
problems): 3 steps with metrics, evaluation, checkpoints with a peft-loadable adapter, resume
equal to an uninterrupted run, the command line."""

import json
import os

import pytest
import torch
from train_fixtures import setup

FAST = ["rollout.problems_per_step=2", "rollout.max_new_tokens=3", "rollout.agg_max_new_tokens=3"]
EVAL = [
    "train.eval_every=3",
    "eval.rsa_population=2",
    "eval.rsa_set_size=2",
    "eval.rsa_steps=1",
    "eval.pass_k=[1, 2]",
    "eval.num_problems=2",
]
TIMING = ("seconds_rollout", "seconds_step", "seconds_sync")


def run(config, overrides, *extra):
    from spiral_fast.cli import main

    args = ["train", "--config", config, "--no-progress"]
    for o in overrides:
        args += ["--set", o]
    main(args + list(extra))


def read_metrics(output):
    with open(os.path.join(output, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def without_timing(row):
    return {k: v for k, v in row.items() if k not in TIMING}


@pytest.mark.slow  # ~6 training steps of a tiny model, generate per problem: ~30 s on a quiet 2-core CPU
def test_three_steps_metrics_checkpoints_and_resume_equal_to_uninterrupted(tmp_path):
    config, overrides = setup(str(tmp_path))
    overrides += FAST
    whole = str(tmp_path / "whole")
    run(config, overrides + EVAL + [f'train.output="{whole}"'])
    rows = read_metrics(whole)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in (
        "loss",
        "problems",
        "problems_sampled",
        "problems_dropped",
        "rounds",
        "trace_tokens_sampled",
        "agg_tokens_sampled",
        "lr",
    ) + TIMING:
        assert all(isinstance(r[key], float) for r in rows), key
    # a tiny random model answers few problems right: dynamic sampling may find nothing to train in a step
    trained = [r for r in rows if r["problems"] > 0]
    assert trained and all(r["problems_sampled"] >= r["problems"] + r["problems_dropped"] for r in rows)
    for key in ("agg_loss", "trace_loss", "agg_reward_mean", "tokens_trained", "grad_norm"):
        assert all(isinstance(r[key], float) for r in trained), key
    # warm-up over 2 optimizer steps (a step that found nothing to train does not count), then constant
    before = [sum(r["problems"] > 0 for r in rows[:k]) for k in range(len(rows))]
    assert [r["lr"] for r in rows] == pytest.approx([1e-2 * min(1.0, (n + 1) / 2) for n in before])
    assert {"eval/rsa_acc_0", "eval/rsa_acc_1", "eval/pass@1", "eval/pass@2", "eval/majority"} <= rows[2].keys()
    outputs = sorted(set(os.listdir(whole)) - {"tensorboard"})  # tensorboard/: where tensorboard is installed
    assert outputs == ["checkpoint-2", "checkpoint-3", "config.toml", "metrics.jsonl", "samples.jsonl"]
    ckpt = os.path.join(whole, "checkpoint-3")
    assert {"adapter", "dcp", "rng", "scheduler.pt", "state.json"} <= set(os.listdir(ckpt))
    with open(os.path.join(ckpt, "state.json")) as fh:
        state = json.load(fh)
    # 2 problems a step, more where dynamic sampling replaced dropped ones
    assert state["step"] == 3 and state["world_size"] == 1 and state["data_position"] >= 6

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tmp_path / "model")), os.path.join(ckpt, "adapter")
    )
    lora_b = [p for n, p in adapter.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().max() > 0 for p in lora_b)  # trained (LoRA B starts at 0)

    # interrupted after step 2, resumed: step 3 is the uninterrupted run's step 3
    part = str(tmp_path / "part")
    run(config, overrides + [f'train.output="{part}"', "train.steps=2"])
    run(config, overrides + [f'train.output="{part}"'], "--resume")
    resumed = read_metrics(part)
    assert [r["step"] for r in resumed] == [1, 2, 3]
    assert [without_timing(r) for r in resumed] == [without_timing(r) for r in rows[:2]] + [
        without_timing({k: v for k, v in rows[2].items() if not k.startswith("eval/")})
    ]
    a = (
        torch.load(os.path.join(ckpt, "adapter", "adapter_model.bin"))
        if os.path.isfile(os.path.join(ckpt, "adapter", "adapter_model.bin"))
        else None
    )
    if a is None:
        from safetensors.torch import load_file

        a = load_file(os.path.join(ckpt, "adapter", "adapter_model.safetensors"))
        b = load_file(os.path.join(part, "checkpoint-3", "adapter", "adapter_model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_config_is_written_and_reloads(tmp_path):
    from spiral_fast.recipe.config import load_config, to_toml

    config, overrides = setup(str(tmp_path))
    cfg = load_config(
        config, overrides + ['algorithm.clip="none"', 'algorithm.length_gate=[3, "none"]', 'algorithm.scale="none"']
    )
    assert cfg.algorithm.clip is None and cfg.algorithm.length_gate == (3, None) and cfg.algorithm.scale == "none"
    path = tmp_path / "again.toml"
    path.write_text(to_toml(cfg.raw))
    assert load_config(str(path)).raw == cfg.raw
