"""Issue 20: a training run survives faults, on the tiny random Qwen2 of train_fixtures (CPU).

- untrusted checkpoints: a pickle with a ``__reduce__`` payload in rng/rank0.pt (or DCP's .metadata)
  is refused with an error naming the file, and the payload never runs;
- a crash mid-save: a checkpoint without state.json is skipped by --resume, metrics.jsonl is cut
  back, the redone step equals the uninterrupted run's;
- preemption: SIGTERM to the real command (a subprocess) finishes the step, saves, exits 0; --resume
  then equals the uninterrupted run;
- non-finite steps (``optim.lr=1e30``): skipped (weights and AdamW state unchanged), counted,
  and after ``train.max_nonfinite_steps`` in a row an error naming "non-finite", no checkpoint of them;
- rewards that raise or hang: scored 0, counted in reward_errors, logged once, the run goes on.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from helpers import assert_same_run
from train_fixtures import setup

FAST = ["rollout.problems_per_step=2", "rollout.max_new_tokens=3", "rollout.agg_max_new_tokens=3"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def args_of(config, overrides, *extra):
    args = ["--config", config, "--no-progress"]
    for o in overrides:
        args += ["--set", o]
    return args + list(extra)


def run(config, overrides, *extra):
    from spiral_fast.train import main

    return main(args_of(config, overrides, *extra))


def read_metrics(output):
    with open(os.path.join(output, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh]


class Payload:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.slow  # two tiny runs of a step: ~15 s
def test_resume_refuses_a_pickle_payload_in_the_rng_file_and_in_dcp_metadata(tmp_path):
    config, overrides = setup(str(tmp_path))
    out = str(tmp_path / "out")
    overrides += FAST + [f'train.output="{out}"', "train.save_every=1"]
    run(config, overrides + ["train.steps=1"])
    ckpt = os.path.join(out, "checkpoint-1")
    # what a checkpoint holds loads with weights_only=True; the Python / NumPy states are JSON
    assert set(torch.load(os.path.join(ckpt, "rng", "rank0.pt"), weights_only=True)) <= {"torch", "cuda"}
    with open(os.path.join(ckpt, "rng", "rank0.json")) as fh:
        assert {"python", "numpy"} >= set(json.load(fh)) >= {"python"}

    marker = str(tmp_path / "pwned")
    good = os.path.join(ckpt, "rng", "rank0.pt")
    os.replace(good, good + ".good")
    torch.save({"torch": torch.get_rng_state(), "python": Payload(marker)}, good)
    with pytest.raises(ValueError, match=r"rng/rank0\.pt"):
        run(config, overrides + ["train.steps=2"], "--resume")
    assert not os.path.exists(marker)

    os.replace(good + ".good", good)
    metadata = os.path.join(ckpt, "dcp", ".metadata")
    import pickle

    with open(metadata, "wb") as fh:
        pickle.dump(Payload(marker), fh)
    with pytest.raises(ValueError, match=r"dcp/\.metadata"):
        run(config, overrides + ["train.steps=2"], "--resume")
    assert not os.path.exists(marker)


@pytest.mark.slow  # 3 + 1 steps: ~20 s
def test_crash_mid_save_resume_redoes_the_step_from_the_last_complete_checkpoint(tmp_path):
    config, overrides = setup(str(tmp_path))
    out = str(tmp_path / "out")
    overrides += FAST + [f'train.output="{out}"', "train.save_every=1"]
    run(config, overrides)
    whole = read_metrics(out)
    assert [r["step"] for r in whole] == [1, 2, 3]
    from spiral_fast.recipe import checkpoint

    os.remove(os.path.join(out, "checkpoint-3", "state.json"))  # a crash before the save's last write
    assert checkpoint.latest(out) == os.path.join(out, "checkpoint-2")
    run(config, overrides, "--resume")
    resumed = read_metrics(out)
    assert [r["step"] for r in resumed] == [1, 2, 3]  # each step once: the old step 3 was cut
    assert_same_run(resumed[2:], whole[2:])  # tokens, rewards, counts exactly; float reductions within a tolerance
    assert os.path.isfile(os.path.join(out, "checkpoint-3", "state.json"))
    assert not [n for n in os.listdir(os.path.join(out, "checkpoint-3")) if ".tmp" in n]
    with open(os.path.join(out, "samples.jsonl")) as fh:
        # the problems step 3 trained (dynamic sampling may find fewer than 2), once
        assert [json.loads(line)["step"] for line in fh].count(3) == whole[2]["problems"]


@pytest.mark.slow  # a subprocess run interrupted, resumed, and an uninterrupted run: ~40 s
def test_sigterm_finishes_the_step_saves_and_resume_equals_the_uninterrupted_run(tmp_path):
    config, overrides = setup(str(tmp_path))
    overrides += FAST + ["train.steps=4", "train.save_every=0"]  # save_every=0: only the signal's save
    part, whole = str(tmp_path / "part"), str(tmp_path / "whole")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "spiral_fast.train"] + args_of(config, overrides + [f'train.output="{part}"']),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    metrics = os.path.join(part, "metrics.jsonl")
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:  # step 1 done: the loop is running
        if os.path.isfile(metrics) and os.path.getsize(metrics) > 0:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    stopped = read_metrics(part)
    n = stopped[-1]["step"]
    assert "received SIGTERM" in stderr and f"stopped by SIGTERM after step {n}" in stderr and "--resume" in stderr
    from spiral_fast.recipe import checkpoint

    assert n <= 2 and checkpoint.latest(part) == os.path.join(part, f"checkpoint-{n}")  # step 1 or 2 of 4
    run(config, overrides + [f'train.output="{part}"'], "--resume")
    run(config, overrides + [f'train.output="{whole}"'])
    assert_same_run(read_metrics(part), read_metrics(whole))


@pytest.mark.slow  # 5 tiny steps: ~15 s
def test_nonfinite_steps_are_skipped_counted_and_stop_the_run_without_a_checkpoint(tmp_path):
    config, overrides = setup(str(tmp_path))
    out = str(tmp_path / "out")
    overrides += FAST + [f'train.output="{out}"', "train.save_every=1", "optim.lr=1e30", "train.steps=20"]
    with pytest.raises(RuntimeError, match="non-finite"):
        run(config, overrides)
    rows = read_metrics(out)
    stepped = [r for r in rows if "nonfinite" in r]  # rows with an optimizer step
    assert stepped[0]["nonfinite"] == 0.0  # step 1 is finite and makes the weights huge: then inf/NaN
    assert [r["nonfinite"] for r in stepped[1:]] == [1.0, 1.0, 1.0]
    assert [r["nonfinite_steps"] for r in stepped] == [0.0, 1.0, 2.0, 3.0]
    assert not all(map(lambda r: r["loss"] == r["loss"], stepped[1:]))  # NaN losses
    from spiral_fast.recipe import checkpoint

    assert checkpoint.latest(out) == os.path.join(out, f"checkpoint-{stepped[0]['step']}")
    # one per step up to the last finite one (steps before it may have found nothing to train), none after
    assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint-")) == sorted(
        f"checkpoint-{r['step']}" for r in rows if r["step"] <= stepped[0]["step"]
    )
    assert len(rows) < 20


@pytest.mark.parametrize("fn_name", ["step", "step_reference"])
def test_a_nonfinite_step_leaves_weights_and_adamw_state_unchanged(fn_name):
    from training_cases import random_batch, tiny_model

    import spiral_fast
    from spiral_fast import SpiralConfig

    fn = getattr(spiral_fast, fn_name)
    model = tiny_model("qwen2")
    batch = random_batch(5, problems=2, max_g=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = fn(model, batch, config=SpiralConfig(max_grad_norm=1.0), optimizer=opt)
    assert first.metrics["nonfinite"] == 0.0
    param = next(p for n, p in model.named_parameters() if "embed" in n)
    with torch.no_grad():
        param[3, 0] = float("nan")  # every forward through token 3 ... and every gradient: NaN
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = {k: {s: v.clone() if torch.is_tensor(v) else v for s, v in st.items()} for k, st in opt.state.items()}
    for max_grad_norm in (1.0, None):
        out = fn(model, batch, config=SpiralConfig(max_grad_norm=max_grad_norm), optimizer=opt)
        assert out.metrics["nonfinite"] == 1.0
        for n, p in model.named_parameters():
            assert (
                torch.equal(p.detach(), before[n])
                or torch.equal(p.detach().isnan(), before[n].isnan())
                and torch.equal(p.detach().nan_to_num(), before[n].nan_to_num())
            ), n
            assert p.grad is None or not p.grad.nan_to_num(1.0).any(), n
        for k, st in opt.state.items():
            for s, v in st.items():
                assert torch.equal(v, state[k][s]) if torch.is_tensor(v) else v == state[k][s], s


def test_reward_that_raises_or_hangs_scores_zero_is_counted_and_logged_once(monkeypatch, caplog, tmp_path):
    from train_fixtures import save_tiny_model
    from transformers import AutoTokenizer

    from spiral_fast.tasks import rewards
    from spiral_fast.tasks.math import MathTask

    tok = AutoTokenizer.from_pretrained(save_tiny_model(str(tmp_path / "model")))
    task = MathTask(tok, [{"problem": "1 + 1 = ?", "answer": "2"}], reward_timeout_s=0.2)
    long = tok.encode(" ".join(["7"] * 300))
    calls = []

    def broken(response, answer):
        calls.append(response)
        raise RuntimeError("math-verify broke")

    monkeypatch.setitem(rewards.REWARDS, "math", broken)
    with caplog.at_level(logging.WARNING):
        assert task.score({"answer": "2"}, long) == 0.0
        assert task.score({"answer": "2"}, long) == 0.0
    assert task.reward_errors == 2
    logged = [r.getMessage() for r in caplog.records if "reward" in r.getMessage()]
    assert len(logged) == 1 and "RuntimeError: math-verify broke" in logged[0]
    text = calls[0]
    assert repr(text[:200]) in logged[0] and text[:201] not in logged[0] and len(text) > 200

    def hangs(response, answer):
        time.sleep(30)
        return 1.0

    monkeypatch.setitem(rewards.REWARDS, "math", hangs)
    caplog.clear()
    for where in ("main", "thread"):  # SIGALRM in the main thread, a deadline elsewhere
        got, start = [], time.perf_counter()
        if where == "main":
            got.append(task.score({"answer": "2"}, long))
        else:
            worker = threading.Thread(target=lambda: got.append(task.score({"answer": "2"}, long)))
            worker.start()
            worker.join()
        assert got == [0.0] and time.perf_counter() - start < 5, where
    assert task.reward_errors == 4
    assert len([r for r in caplog.records if "timed out" in r.getMessage()]) == 1

    monkeypatch.setitem(rewards.REWARDS, "math", rewards.math_reward)
    assert task.score({"answer": "7"}, tok.encode("\\boxed{ 7 }")) == 1.0 and task.reward_errors == 4


@pytest.mark.slow  # one tiny step: ~8 s
def test_a_run_with_a_raising_reward_goes_on_and_counts_reward_errors(monkeypatch, tmp_path):
    from spiral_fast.tasks import rewards

    def broken(response, answer):
        raise ValueError("adversarial output")

    monkeypatch.setitem(rewards.REWARDS, "math", broken)
    config, overrides = setup(str(tmp_path))
    out = str(tmp_path / "out")
    run(config, overrides + FAST + [f'train.output="{out}"', "train.steps=1", "rollout.dynamic_sampling=false"])
    (row,) = read_metrics(out)
    assert row["reward_errors"] > 0 and row["reward"] == 0.0


def test_config_keys_of_faults(tmp_path):
    from spiral_fast.recipe.config import SCHEMA, load_config

    assert SCHEMA["reward"]["timeout_s"][0] == 10.0 and SCHEMA["train"]["max_nonfinite_steps"][0] == 3
    config, overrides = setup(str(tmp_path))
    cfg = load_config(config, overrides)
    assert cfg.reward.timeout_s == 10.0 and cfg.train.max_nonfinite_steps == 3
    assert load_config(config, overrides + ['reward.timeout_s="none"']).reward.timeout_s is None
    for bad in ("reward.timeout_s=0", "train.max_nonfinite_steps=0"):
        with pytest.raises(ValueError, match=bad.split("=")[0]):
            load_config(config, overrides + [bad])
