"""spiral-fast train under FSDP2: 2 CPU processes (gloo, LoRA, fully_shard per decoder layer) against
1 process on the same problems and seed: same loss and the same updated adapter within 1e-5; a
world-size-2 checkpoint resumed at world size 1 continues like the 1-process run."""

import json
import os
import sys

import pytest
import torch
from helpers import spawn_with_free_port
from train_fixtures import setup

TWO = [
    "rollout.problems_per_step=4",
    "rollout.dynamic_sampling=false",
    "rollout.max_new_tokens=3",
    "rollout.agg_max_new_tokens=3",
    "train.save_every=1",
]


def _args(config, overrides, *extra):
    args = ["--config", config, "--no-progress"]
    for o in overrides:
        args += ["--set", o]
    return args + list(extra)


def _rank_main(rank, world, port, config, overrides, tests_dir):
    sys.path.insert(0, tests_dir)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    from spiral_fast.train import main

    try:
        main(_args(config, overrides))
        assert not torch.distributed.is_initialized()  # the command ends the process group it started
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def metrics(output):
    with open(os.path.join(output, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def adapter(path):
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "adapter", "adapter_model.safetensors"))


@pytest.mark.slow  # two spawned processes + three tiny runs: ~1 min on a quiet 2-core CPU
def test_fsdp2_two_ranks_equal_one_process_and_resume_at_world_size_one(tmp_path):
    config, overrides = setup(str(tmp_path))
    two, one = str(tmp_path / "two"), str(tmp_path / "one")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    run_args = overrides + TWO + [f'train.output="{two}"', "train.steps=1"]
    # the training command rendezvouses through MASTER_PORT (env://): a port race is retried
    spawn_with_free_port(_rank_main, lambda port: (2, port, config, run_args, tests_dir), nprocs=2)
    from spiral_fast.train import main

    main(_args(config, overrides + TWO + [f'train.output="{one}"', "train.steps=2"]))
    rows_two, rows_one = metrics(two), metrics(one)
    assert [r["step"] for r in rows_two] == [1]
    for key in (
        "loss",
        "agg_loss",
        "trace_loss",
        "tokens_trained",
        "agg_reward_mean",
        "grad_norm",
        "problems",
        "trace_tokens_sampled",
        "agg_tokens_sampled",
    ):
        assert abs(rows_two[0][key] - rows_one[0][key]) <= 1e-5 * max(1.0, abs(rows_one[0][key])), key
    with open(os.path.join(two, "checkpoint-1", "state.json")) as fh:
        assert json.load(fh)["world_size"] == 2
    a2, a1 = adapter(os.path.join(two, "checkpoint-1")), adapter(os.path.join(one, "checkpoint-1"))
    assert a2.keys() == a1.keys() and a1
    for k in a1:
        torch.testing.assert_close(a2[k], a1[k], rtol=0, atol=1e-5)

    main(_args(config, overrides + TWO + [f'train.output="{two}"', "train.steps=2"], "--resume"))
    rows_two = metrics(two)
    assert [r["step"] for r in rows_two] == [1, 2]
    for key in ("loss", "agg_loss", "trace_loss", "tokens_trained", "grad_norm"):
        assert abs(rows_two[1][key] - rows_one[1][key]) <= 1e-5 * max(1.0, abs(rows_one[1][key])), key
    a2, a1 = adapter(os.path.join(two, "checkpoint-2")), adapter(os.path.join(one, "checkpoint-2"))
    for k in a1:
        torch.testing.assert_close(a2[k], a1[k], rtol=0, atol=1e-5)


def _rank_main_signalled(rank, world, port, config, overrides, tests_dir):
    """_rank_main, and rank 0 alone gets SIGTERM once step 1 is logged: both ranks must stop and save."""
    import signal
    import threading
    import time

    if rank == 0:
        output = next(o.split("=", 1)[1].strip('"') for o in overrides if o.startswith("train.output="))

        def send():
            path = os.path.join(output, "metrics.jsonl")
            while not (os.path.isfile(path) and os.path.getsize(path) > 0):
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=send, daemon=True).start()
    _rank_main(rank, world, port, config, overrides, tests_dir)


@pytest.mark.slow  # two spawned processes, 1 or 2 tiny steps: ~30 s on a quiet 2-core CPU
def test_sigterm_to_one_rank_stops_both_and_both_take_part_in_the_save(tmp_path):
    config, overrides = setup(str(tmp_path))
    out = str(tmp_path / "out")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    run_args = overrides + TWO + [f'train.output="{out}"', "train.steps=4", "train.save_every=0"]
    spawn_with_free_port(_rank_main_signalled, lambda port: (2, port, config, run_args, tests_dir), nprocs=2)
    rows = metrics(out)
    n = rows[-1]["step"]
    assert n <= 2  # stopped at step 1 or 2 of 4 (rank 1 learnt of the signal through the all-reduce)
    ckpt = os.path.join(out, f"checkpoint-{n}")
    with open(os.path.join(ckpt, "state.json")) as fh:
        # without dynamic sampling every step trains, so the optimizer has stepped (optimizer_fresh False)
        assert json.load(fh) == {
            "step": n,
            "data_position": 4 * n,
            "world_size": 2,
            "nonfinite_steps": 0,
            "optimizer_fresh": False,
        }
    assert {"rank0.pt", "rank1.pt", "rank0.json", "rank1.json"} <= set(os.listdir(os.path.join(ckpt, "rng")))
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata"} <= set(os.listdir(os.path.join(ckpt, "dcp")))
    assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint-")) == [f"checkpoint-{n}"]
