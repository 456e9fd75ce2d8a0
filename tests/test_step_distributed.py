"""Data parallelism does not change the step: two gloo ranks on the CPU, each with a share of the
problems, give the 1-process whole-batch loss, gradients (averaged over ranks, the DDP / FSDP2
convention) and, with an optimizer, the same updated parameters."""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import end_rank, file_rendezvous
from training_cases import assert_grads_close, grads, random_batch, tiny_model

import spiral_fast
from spiral_fast import SpiralBatch, SpiralConfig

PROBLEMS = 5  # odd: the ranks get different numbers of problems and tokens
CONFIG = SpiralConfig(max_tokens_per_micro_batch=70, max_grad_norm=1e6)


def share(batch: SpiralBatch, rank: int, world: int) -> SpiralBatch:
    return SpiralBatch(batch.problems[rank::world])


def _rank_main(rank: int, world: int, out_dir: str, tests_dir: str):
    sys.path.insert(0, tests_dir)
    dist.init_process_group("gloo", init_method=file_rendezvous(out_dir), rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = tiny_model("qwen2")
        batch = share(random_batch(11, problems=PROBLEMS, max_g=3, old=True), rank, world)
        out = spiral_fast.step(model, batch, config=CONFIG)
        g = grads(model)
        for v in g.values():  # what DDP / FSDP2 do: average over ranks
            dist.all_reduce(v)
            v /= world
        model.zero_grad(set_to_none=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        spiral_fast.step(model, batch, config=CONFIG, optimizer=opt)
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        torch.save((out.loss, out.metrics, g, params), os.path.join(out_dir, f"rank{rank}.pt"))
        end_rank()
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    mp.spawn(_rank_main, args=(2, str(tmp_path), tests_dir), nprocs=2, join=True)

    model = tiny_model("qwen2")
    batch = random_batch(11, problems=PROBLEMS, max_g=3, old=True)
    whole = spiral_fast.step(model, batch, config=CONFIG)
    g_whole = grads(model)
    model.zero_grad(set_to_none=True)
    spiral_fast.step(model, batch, config=CONFIG, optimizer=torch.optim.SGD(model.parameters(), lr=0.5))
    for rank in range(2):
        loss, metrics, g, params = torch.load(tmp_path / f"rank{rank}.pt")
        assert abs(loss.item() - whole.loss.item()) <= 1e-6
        for key in (
            "agg_loss",
            "trace_loss",
            "tokens_trained",
            "agg_reward_mean",
            "set_value_mean",
            "entropy_mean",
            "clip_frac_low",
            "clip_frac_high",
        ):
            assert abs(metrics[key] - whole.metrics[key]) <= 1e-5 * max(1.0, abs(whole.metrics[key])), key
        assert_grads_close(g, g_whole, rel=1e-5)
        for n, p in model.named_parameters():
            torch.testing.assert_close(params[n], p.detach(), rtol=0, atol=1e-6)
