"""The SPIRAL algorithm: advantages vs a verl-style Python-loop GRPO, and the fused policy loss vs the
unfused torch expression (materialised per-token advantage, separate ops, autograd backward).

The "verl-style-loop" peer is RE-IMPLEMENTED, not imported: verl 0.9.1 (PyPI) imports ray at package
import and pins transformers < 5.11, which cannot sit beside the dev extra's transformers 5.25 and TRL
(checked 2026-12-07). It follows the loop of verl's ``compute_grpo_outcome_advantage``
(``verl/trainer/ppo/core_algos.py``): group by index in Python, then mean and std per group.

    pytest benchmarks/bench_algorithm.py          (GPU groups run only on CUDA)

CPU groups run with one intra-op thread for every peer: on a shared, oversubscribed CPU, OpenMP
barriers between two threads turn each op into scheduler waits and the timings into noise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections import defaultdict

import pytest
import torch
from presets import ALGORITHM_ADV, ALGORITHM_LOSS

import spiral_fast


def trim_heap() -> None:
    """Return freed heap memory to the OS (glibc) before a CPU peak-RSS measurement: otherwise a peer
    reuses what the previous peer freed and its peak reads near 0, whatever it allocates."""
    name = ctypes.util.find_library("c")
    if name:
        libc = ctypes.CDLL(name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


# --------------------------------------------------------------------------- advantages
def make_adv_batch(shape, seed: int = 0) -> dict:
    """Problems of N traces, M sets of K distinct traces each, G responses per set, 0/1 rewards."""
    g = torch.Generator().manual_seed(seed)
    P, N, M, K, G = shape.problems, shape.traces, shape.sets, shape.set_size, shape.aggregations
    local = torch.rand(P * M, N, generator=g).argsort(dim=1)[:, :K]  # K distinct traces per set
    set_problem = torch.arange(P).repeat_interleave(M)
    return dict(
        rewards=torch.randint(0, 2, (P * M * G,), generator=g).float(),
        agg_set=torch.arange(P * M).repeat_interleave(G),
        set_problem=set_problem,
        set_members=(local + (set_problem * N)[:, None]).reshape(-1),
        set_offsets=torch.arange(0, P * M * K + 1, K),
        trace_problem=torch.arange(P).repeat_interleave(N),
    )


def verl_grpo(scores: torch.Tensor, index: list, epsilon: float = 1e-6) -> torch.Tensor:
    """As verl's compute_grpo_outcome_advantage (scores already summed per response): dict of lists
    per group, a mean / std per group, then a loop over responses."""
    scores = scores.clone()
    id2score, id2mean, id2std = defaultdict(list), {}, {}
    for i in range(scores.shape[0]):
        id2score[index[i]].append(scores[i])
    for idx, group in id2score.items():
        if len(group) == 1:
            id2mean[idx], id2std[idx] = torch.tensor(0.0), torch.tensor(1.0)
        else:
            id2mean[idx], id2std[idx] = torch.mean(torch.tensor(group)), torch.std(torch.tensor([group]))
    for i in range(scores.shape[0]):
        scores[i] = (scores[i] - id2mean[index[i]]) / (id2std[index[i]] + epsilon)
    return scores


def verl_style_spiral(b: dict):
    """The same three advantages the way a loop-based trainer writes them."""
    agg_set, set_problem = b["agg_set"].tolist(), b["set_problem"].tolist()
    agg = verl_grpo(b["rewards"], [set_problem[s] for s in agg_set])
    per_set = defaultdict(list)
    for a, s in enumerate(agg_set):
        per_set[s].append(b["rewards"][a])
    set_value = torch.stack([torch.stack(per_set[s]).mean() for s in range(len(set_problem))])
    set_adv = verl_grpo(set_value, set_problem)
    offsets, members = b["set_offsets"].tolist(), b["set_members"].tolist()
    credit = defaultdict(list)
    for s in range(len(set_problem)):
        for k in range(offsets[s], offsets[s + 1]):
            credit[members[k]].append(set_adv[s])
    trace = torch.zeros(b["trace_problem"].shape[0])
    for t, c in credit.items():
        trace[t] = torch.stack(c).mean()
    return agg, set_value, set_adv, trace


def spiral_fast_advantages(b: dict):
    # the peer's settings (verl GRPO: std-scaled, one group per problem), explicit since issue 8
    return spiral_fast.spiral_advantages(
        b["rewards"],
        b["agg_set"],
        b["set_problem"],
        b["set_members"],
        b["set_offsets"],
        b["trace_problem"],
        scale="std",
        agg_baseline="problem",
    )


def advantage_values(fn, b: dict):
    def values():
        out = fn(b)
        if not isinstance(out, tuple):
            out = (out.agg, out.set_value, out.set, out.trace)
        return dict(zip(("agg", "set_value", "set", "trace"), (t.float() for t in out)))

    return values


ADV_PEERS = {"spiral_fast": spiral_fast_advantages, "verl-style-loop": verl_style_spiral}


@pytest.mark.parametrize("peer", list(ADV_PEERS))
def test_advantages(compare, peer, one_cpu_thread):
    shape = ALGORITHM_ADV["issue"]
    b = make_adv_batch(shape)
    fn = ADV_PEERS[peer]
    slow = peer != "spiral_fast"
    trim_heap()
    compare(
        f"advantages {shape.problems}p x {shape.sets}s x {shape.aggregations}g",
        peer,
        lambda: fn(b),
        rounds=1 if slow else 5,
        warmup=0 if slow else 1,
        note="1 thread",
        rel=1e-5,
        values=advantage_values(fn, b),
        expected=advantage_values(spiral_fast_advantages, b),
    )


# --------------------------------------------------------------------------- fused policy loss
def make_loss_batch(shape, device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    R, Q = shape.tokens, shape.sequences
    logp = -3 * torch.rand(R, generator=g)
    b = dict(
        logp=logp,
        old_logp=logp + 0.3 * torch.randn(R, generator=g),
        ref_logp=logp + 0.3 * torch.randn(R, generator=g),
        token_seq=torch.randint(0, Q, (R,), generator=g).sort().values,
        seq_adv=torch.randn(Q, generator=g),
        seq_weight=torch.ones(Q),
    )
    return {k: v.to(device) for k, v in b.items()}


def unfused_loss(b: dict, logp, clip=(0.2, 0.28), kl_coef=0.1):
    """The usual trainer expression: per-token advantage materialised, one op per step, autograd."""
    adv = b["seq_adv"][b["token_seq"]]
    weight = b["seq_weight"][b["token_seq"]]
    ratio = torch.exp(logp - b["old_logp"])
    pg = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip[0], 1 + clip[1]))
    delta = b["ref_logp"] - logp
    kl = torch.exp(delta) - delta - 1
    loss = ((pg + kl_coef * kl) * weight).sum() / logp.shape[0]
    stats = ((ratio < 1 - clip[0]) & (adv < 0)).float().mean(), ((ratio > 1 + clip[1]) & (adv > 0)).float().mean()
    return loss, stats


def fused_loss(b: dict, logp, kl_coef=0.1):
    return spiral_fast.policy_loss(
        logp, b["old_logp"], b["token_seq"], b["seq_adv"], b["seq_weight"], ref_logp=b["ref_logp"], kl_coef=kl_coef
    )


LOSS_PEERS = {"spiral_fast": fused_loss, "unfused-torch": unfused_loss}
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("peer", list(LOSS_PEERS))
def test_policy_loss_fwd_bwd(compare, peer, device, request):
    if device == "cpu":
        request.getfixturevalue("one_cpu_thread")
    shape = ALGORITHM_LOSS["1M"]
    b = make_loss_batch(shape, device)
    fn = LOSS_PEERS[peer]
    grad_out = torch.tensor(1.0, device=device)

    def step():
        logp = b["logp"].detach().requires_grad_()
        loss, _ = fn(b, logp)
        loss.backward(grad_out)

    def values(loss_fn):
        def run():
            logp = b["logp"].detach().requires_grad_()
            loss, stats = loss_fn(b, logp)
            loss.backward(grad_out)
            return {"loss": loss.detach(), "d_logp": logp.grad}

        return run

    trim_heap()
    compare(
        f"policy_loss fwd+bwd {shape.name} tokens {device}",
        peer,
        step,
        device=device,
        rounds=5,
        rel=1e-5,
        values=values(fn),
        expected=values(fused_loss),
        **({"note": "1 thread"} if device == "cpu" else {}),
    )


def _rows_bytes(rows: int) -> int:
    # read logp, old_logp, ref_logp (fp32) and token_seq (int64); write d loss / d logp (fp32)
    return rows * (4 * 3 + 8 + 4)


@pytest.mark.gpu
@pytest.mark.parametrize("peer", ["spiral_fast", "copy"])
def test_policy_loss_kernel_bandwidth(compare, peer):
    """The kernel alone (no validation) against a device copy moving the same bytes."""
    from spiral_fast.kernels.policy_loss import policy_loss_fwd

    shape = ALGORITHM_LOSS["16M"]
    b = make_loss_batch(shape, "cuda")
    nbytes = _rows_bytes(shape.tokens)
    if peer == "copy":
        src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        fn = lambda: dst.copy_(src)  # noqa: E731  reads nbytes / 2 and writes nbytes / 2
    else:
        fn = lambda: policy_loss_fwd(
            b["logp"],
            b["old_logp"],
            b["ref_logp"],
            b["token_seq"],  # noqa: E731
            b["seq_adv"],
            b["seq_weight"],
            clip_low=0.2,
            clip_high=0.28,
            kl_coef=0.1,
        )
    compare(
        f"policy_loss kernel {shape.name} tokens cuda",
        peer,
        fn,
        device="cuda",
        rounds=20,
        warmup=3,
        bytes=nbytes,
        note="GB/s vs copy: see the copy row",
    )
