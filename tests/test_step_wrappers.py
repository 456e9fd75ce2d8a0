"""Wrapped models in spiral_fast.step / step_reference / batch_logprobs: FSDP2 and DDP on two gloo
ranks (each with its own problems) against one process on all of them (same loss, gradients and SGD
update, same log-probs), torch.compile'd models, and clear errors for the wrappers the step cannot
drive."""

import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import end_rank, file_rendezvous
from training_cases import assert_grads_close, grads, random_batch, tiny_model

import spiral_fast
from spiral_fast import SpiralBatch, SpiralConfig

PROBLEMS = 5  # odd: the ranks get different numbers of problems, tokens, sequences and micro-batches
CONFIG = SpiralConfig(max_tokens_per_micro_batch=70, max_grad_norm=1e6)
LR = 0.5


def share(batch: SpiralBatch, rank: int, world: int) -> SpiralBatch:
    return SpiralBatch(batch.problems[rank::world])


def full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def _fsdp2(model):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _ddp(model):
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def _run(wrap, step_fn, batch):
    """(loss, metrics, full gradients, full parameters after one SGD step) of a wrapped tiny model."""
    model = wrap(tiny_model("qwen2"))
    out = step_fn(model, batch, config=CONFIG)
    g = {n.replace("module.", ""): full(p.grad) for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    after = step_fn(model, batch, config=CONFIG, optimizer=opt)
    params = {n.replace("module.", ""): full(p) for n, p in model.named_parameters()}
    return out.loss, out.metrics, g, params, after.metrics["grad_norm"]


def _rank_main(rank: int, world: int, out_dir: str, tests_dir: str):
    sys.path.insert(0, tests_dir)
    dist.init_process_group("gloo", init_method=file_rendezvous(out_dir), rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        batch = share(random_batch(11, problems=PROBLEMS, max_g=3, old=True), rank, world)
        results = {
            f"{name}-{fn.__name__}": _run(wrap, fn, batch)
            for name, wrap in (("fsdp2", _fsdp2), ("ddp", _ddp))
            for fn in (spiral_fast.step, spiral_fast.step_reference)
        }
        logprobs = spiral_fast.batch_logprobs(_fsdp2(tiny_model("qwen2")), batch, config=CONFIG)
        torch.save((results, (logprobs.traces, logprobs.aggregations)), os.path.join(out_dir, f"rank{rank}.pt"))
        end_rank()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing transformers: ~30 s on a quiet 2-core CPU
def test_fsdp2_and_ddp_on_two_gloo_ranks_equal_one_process(tmp_path):
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    mp.spawn(_rank_main, args=(2, str(tmp_path), tests_dir), nprocs=2, join=True)
    batch = random_batch(11, problems=PROBLEMS, max_g=3, old=True)
    loss, metrics, g_whole, params, norm = _run(lambda m: m, spiral_fast.step, batch)
    for rank in range(2):
        results, (traces, aggregations) = torch.load(tmp_path / f"rank{rank}.pt")
        want = spiral_fast.batch_logprobs(tiny_model("qwen2"), share(batch, rank, 2), config=CONFIG)
        for got_p, want_p in zip(traces + aggregations, want.traces + want.aggregations, strict=True):
            for got_t, want_t in zip(
                torch.utils._pytree.tree_leaves(got_p), torch.utils._pytree.tree_leaves(want_p), strict=True
            ):
                torch.testing.assert_close(got_t, want_t, rtol=0, atol=1e-5)
        assert len(results) == 4
        for key, (r_loss, r_metrics, r_g, r_params, r_norm) in results.items():
            assert abs(r_loss.item() - loss.item()) <= 1e-5, key
            for m in ("agg_loss", "trace_loss", "tokens_trained", "entropy_mean", "clip_frac"):
                assert abs(r_metrics[m] - metrics[m]) <= 1e-5 * max(1.0, abs(metrics[m])), (key, m)
            assert abs(r_norm - norm) <= 1e-5 * norm, key
            assert_grads_close(r_g, g_whole, rel=1e-5)  # averaged exactly once: not halved, not doubled
            assert r_params.keys() == params.keys()
            for n in params:
                torch.testing.assert_close(r_params[n], params[n], rtol=0, atol=1e-5, msg=f"{key}: {n}")


def test_torch_compiled_model_is_unwrapped():
    batch = random_batch(3, problems=2, max_g=2, old=True)
    model = tiny_model("qwen2")
    plain = spiral_fast.step(model, batch, config=CONFIG)
    g_plain = grads(model)
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model)
    out = spiral_fast.step(compiled, batch, config=CONFIG)
    assert out.loss.item() == plain.loss.item()
    assert_grads_close(grads(model), g_plain, rel=0)


def test_data_parallel_is_rejected_with_what_to_pass():
    model = torch.nn.DataParallel(tiny_model("qwen2"))
    with pytest.raises(ValueError, match="DataParallel.*pass model.module"):
        spiral_fast.step(model, random_batch(3, problems=1))
