"""policy_loss normalisers are global: any split of a batch (micro-batches, gloo ranks) sums to the
whole-batch loss and gradient, for every normaliser."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import end_rank, file_rendezvous
from test_policy_loss import make_batch

import spiral_fast
from spiral_fast.algorithm.reference import NORMALIZERS

ROWS, SEQS = 900, 11


def global_kwargs(b: dict, normalizer: str) -> dict:
    """What a trainer knows about the whole batch when it packs it, passed to every piece."""
    if normalizer == "token-mean":
        return dict(total_tokens=b["logp"].shape[0])
    if normalizer == "constant":
        return dict(constant=512.0)
    return dict(seq_tokens=torch.bincount(b["token_seq"], minlength=b["seq_adv"].shape[0]))


def piece_loss(b: dict, lo: int, hi: int, logp: torch.Tensor, normalizer: str, backend: str = "torch"):
    """Loss of rows [lo, hi) of the batch, rows of logp being this piece's own (differentiable) rows."""
    ref = b["ref_logp"][lo:hi] if b["ref_logp"] is not None else None
    loss, _ = spiral_fast.policy_loss(
        logp,
        b["old_logp"][lo:hi],
        b["token_seq"][lo:hi],
        b["seq_adv"],
        b["seq_weight"],
        ref_logp=ref,
        kl_coef=0.1,
        normalizer=normalizer,
        backend=backend,
        **global_kwargs(b, normalizer),
    )
    return loss


def sorted_batch(seed: int) -> dict:
    # rows grouped by sequence, as packing lays them out: split points then cut sequences in two
    b = make_batch(ROWS, SEQS, seed=seed)
    b["token_seq"] = b["token_seq"].sort().values
    return b


SPLITS = [
    pytest.param([0, 450, 900], id="halves"),
    pytest.param([0, 1, 333, 334, 700, 900], id="ragged"),
    pytest.param([0, 900, 900], id="empty-piece"),
]


@pytest.mark.parametrize("layout", ["sorted", "scattered"])
@pytest.mark.parametrize("splits", SPLITS)
@pytest.mark.parametrize("normalizer", NORMALIZERS)
def test_micro_batches_sum_to_whole_batch(normalizer, splits, layout):
    b = sorted_batch(4) if layout == "sorted" else make_batch(ROWS, SEQS, seed=4)
    grad_out = torch.randn(())
    whole_logp = b["logp"].clone().requires_grad_()
    whole = piece_loss(b, 0, ROWS, whole_logp, normalizer)
    whole.backward(grad_out)

    total, grads = torch.zeros(()), []
    for lo, hi in zip(splits[:-1], splits[1:]):
        logp = b["logp"][lo:hi].clone().requires_grad_()
        loss = piece_loss(b, lo, hi, logp, normalizer)
        loss.backward(grad_out)
        total += loss.detach()
        grads.append(logp.grad)
    torch.testing.assert_close(total, whole.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.cat(grads), whole_logp.grad, rtol=1e-5, atol=1e-10)


# --------------------------------------------------------------------------- two gloo ranks on the CPU
def model_logp(theta: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """A tiny 'policy': log-probs of the rows as a function of shared parameters theta [D]."""
    return -torch.nn.functional.softplus(feats @ theta)


def _rank_main(rank: int, world: int, out_dir: str):
    dist.init_process_group("gloo", init_method=file_rendezvous(out_dir), rank=rank, world_size=world)
    try:
        b, theta0, feats, grad_out = torch.load(os.path.join(out_dir, "inputs.pt"))
        lo, hi = rank * ROWS // world, (rank + 1) * ROWS // world
        results = {}
        for normalizer in NORMALIZERS:  # one spawn for all: starting processes is the slow part
            theta = theta0.clone().requires_grad_()
            loss = piece_loss(b, lo, hi, model_logp(theta, feats[lo:hi]), normalizer)
            loss.backward(grad_out)
            # data-parallel all-reduce: SUM, no division by world size (the normaliser is already global)
            loss = loss.detach()
            dist.all_reduce(loss)
            dist.all_reduce(theta.grad)
            results[normalizer] = (loss, theta.grad)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        end_rank()
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_single_process(tmp_path):
    b = sorted_batch(6)  # ROWS // 2 falls inside a sequence
    assert b["token_seq"][ROWS // 2 - 1] == b["token_seq"][ROWS // 2]
    theta0, feats, grad_out = torch.randn(8), torch.randn(ROWS, 8), torch.randn(())
    torch.save((b, theta0, feats, grad_out), tmp_path / "inputs.pt")
    mp.spawn(_rank_main, args=(2, str(tmp_path)), nprocs=2, join=True)

    for normalizer in NORMALIZERS:
        theta = theta0.clone().requires_grad_()
        whole = piece_loss(b, 0, ROWS, model_logp(theta, feats), normalizer)
        whole.backward(grad_out)
        for rank in range(2):
            loss, grad = torch.load(tmp_path / f"rank{rank}.pt")[normalizer]
            torch.testing.assert_close(loss, whole.detach(), rtol=1e-5, atol=1e-7, msg=f"{normalizer} loss")
            torch.testing.assert_close(grad, theta.grad, rtol=1e-5, atol=1e-8, msg=f"{normalizer} grad")
