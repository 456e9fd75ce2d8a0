"""Which backend ``backend="auto"`` picks on each device (``spiral_fast.ops.dispatch``: Triton on CUDA tensors once its
self-check passed, the torch path on the CPU), for every public op with a backend choice, told apart
by their outputs: each case first checks that the candidate backends give different bits on its
inputs, then that auto's output is bit for bit the expected backend's (a wrong pick cannot pass) and
that the dispatcher recorded that backend."""

from __future__ import annotations

import pytest
import torch

import spiral_fast as sf
from spiral_fast.ops import dispatch


def _logprob_inputs(device):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 45, generator=gen)
    weight = torch.randn(300, 45, generator=gen) / 3
    targets = torch.randint(0, 300, (37,), generator=gen)
    return hidden.to(device), weight.to(device), targets.to(device)


def _token_logprobs(device, backend):
    hidden, weight, targets = _logprob_inputs(device)
    return sf.token_logprobs(hidden, weight, targets, temperature=0.7, backend=backend)


def _logprobs_from_logits(device, backend):
    hidden, weight, targets = _logprob_inputs(device)
    return sf.logprobs_from_logits(hidden @ weight.T, targets, temperature=0.7, backend=backend)


def _policy_loss(device, backend):
    gen = torch.Generator().manual_seed(1)
    rows = 4000
    logp = (-torch.rand(rows, generator=gen) * 5).to(device)
    old = (logp.cpu() + torch.randn(rows, generator=gen) * 0.3).to(device)
    token_seq = torch.sort(torch.randint(0, 40, (rows,), generator=gen)).values.to(device)
    adv = torch.randn(40, generator=gen).to(device)
    loss, _ = sf.policy_loss(logp, old, token_seq, adv, torch.ones(40, device=device), backend=backend)
    return loss


def _tree_attention(device, backend):
    gen = torch.Generator().manual_seed(2)
    packed = sf.pack_sequences([[1, 2, 3, 4, 5, 6], [1, 2, 3, 7, 8], [1, 9], [4, 5, 6, 7, 8, 9, 1, 2]]).to(device)
    q, k, v = (torch.randn(packed.num_tokens, h, 16, generator=gen).to(device) for h in (4, 2, 2))
    return sf.tree_attention(q, k, v, packed, backend=backend)


OPS = {
    "token_logprobs": _token_logprobs,
    "logprobs_from_logits": _logprobs_from_logits,
    "policy_loss": _policy_loss,
    "tree_attention": _tree_attention,
}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.detach().cpu(), b.detach().cpu())


def _auto(run, device):
    """auto's output and the backends the dispatcher says it used."""
    with dispatch.recording() as used:
        out = run(device, "auto")
    return out, set(used.values())


@pytest.mark.interpret
@pytest.mark.parametrize("op", list(OPS))
def test_auto_picks_torch_on_the_cpu(op):
    run = OPS[op]
    torch_out, triton_out = run("cpu", "torch"), run("cpu", "triton")  # triton under TRITON_INTERPRET=1
    assert not _same_bits(torch_out, triton_out)  # the two are told apart on these inputs
    out, used = _auto(run, "cpu")
    assert _same_bits(out, torch_out) and used == {"torch"}


@pytest.mark.gpu
@pytest.mark.parametrize("op", list(OPS))
def test_auto_picks_triton_on_cuda(op):
    run = OPS[op]
    torch_out, triton_out = run("cuda", "torch"), run("cuda", "triton")
    assert not _same_bits(torch_out, triton_out)
    out, used = _auto(run, "cuda")  # Triton once its self-check passed (a GPU where it fails: a real failure)
    assert _same_bits(out, triton_out) and used == {"triton"}
