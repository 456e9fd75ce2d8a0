"""Triton backend of token_logprobs / logprobs_from_logits against the float64 reference.

On a CPU the kernels run under TRITON_INTERPRET=1 (``interpret``: tiny shapes, float32/float16,
since bf16 ``tl.dot`` is wrong under the interpreter); bf16 and larger shapes are ``gpu`` tests.
Interpreter block sizes are small (16 tokens x 64 vocab x 32 hidden), so N <= 33, V <= 300 still
cross every block boundary.
"""

from __future__ import annotations

import pytest
import torch
from test_logprobs import check_from_logits, check_linear, make_linear_inputs, upstream_grads

import spiral_fast as sf


def _id(lead, h, v, dtype, temperature, bias):
    return "N{}-H{}-V{}-{}-T{}{}".format(
        "x".join(map(str, lead)), h, v, str(dtype)[6:], temperature, "-bias" if bias else ""
    )


INTERPRET_LINEAR = [
    # (lead, H, V, dtype, temperature, bias)
    ((33,), 45, 300, torch.float32, 1.0, True),
    ((20,), 40, 257, torch.float32, 0.3, False),
    ((20,), 40, 257, torch.float16, 3.0, True),
    ((2, 3, 5), 32, 130, torch.float32, 1.0, True),
    ((1,), 16, 100, torch.float32, 1.0, True),
]


@pytest.mark.interpret
@pytest.mark.parametrize("lead,h,v,dtype,temperature,bias", [pytest.param(*c, id=_id(*c)) for c in INTERPRET_LINEAR])
def test_token_logprobs_triton_matches_reference(triton_device, lead, h, v, dtype, temperature, bias):
    hidden, weight, b, targets = make_linear_inputs(lead, h, v, dtype, bias=bias, scale=4.0, device=triton_device)
    check_linear(hidden, weight, b, targets, backend="triton", temperature=temperature, floor=1e-5)


@pytest.mark.interpret
@pytest.mark.parametrize(
    "n,v,dtype,temperature",
    [
        pytest.param(33, 300, torch.float32, 1.0, id="N33-V300-float32-T1"),
        pytest.param(17, 130, torch.float16, 0.3, id="N17-V130-float16-T0.3"),
        pytest.param(17, 130, torch.bfloat16, 3.0, id="N17-V130-bfloat16-T3"),
        pytest.param(1, 50, torch.float32, 1.0, id="N1-V50-float32-T1"),
    ],
)
def test_logprobs_from_logits_triton_matches_reference(triton_device, n, v, dtype, temperature):
    logits = (torch.randn(n, v, device=triton_device) * 4).to(dtype)
    targets = torch.randint(0, v, (n,), device=triton_device)
    targets[1::4] = -100
    check_from_logits(logits, targets, backend="triton", temperature=temperature, floor=1e-5)


@pytest.mark.interpret
def test_triton_all_negative_and_peaked_rows(triton_device):
    hidden, weight, _, targets = make_linear_inputs((20,), 32, 200, torch.float32, device=triton_device)
    bias = torch.full((200,), -3000.0, device=triton_device) + torch.randn(200, device=triton_device)
    bias[targets[::3].clamp(min=0)] += 80.0  # some rows peaked on their target
    out = check_linear(hidden, weight, bias, targets, backend="triton", floor=1e-4)
    assert all(torch.isfinite(o).all() for o in out)


@pytest.mark.interpret
def test_triton_masked_vocabulary_minus_inf(triton_device):
    logits = torch.randn(12, 200, device=triton_device) * 3
    logits[:, :70] = float("-inf")  # a whole first block and more
    logits[::3, 100:150] = float("-inf")
    targets = torch.randint(150, 200, (12,), device=triton_device)
    out = check_from_logits(logits, targets, backend="triton", floor=1e-5)
    assert all(torch.isfinite(o).all() for o in out)


@pytest.mark.interpret
def test_triton_all_rows_ignored_and_inputs_untouched(triton_device):
    hidden, weight, bias, targets = make_linear_inputs((9,), 16, 100, torch.float32, device=triton_device)
    targets.fill_(-100)
    before = [t.clone() for t in (hidden, weight, bias)]
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    logp, ent = sf.token_logprobs(
        leaves[0], leaves[1], targets, bias=leaves[2], temperature=0.5, return_entropy=True, backend="triton"
    )
    assert torch.count_nonzero(logp) == 0 and torch.count_nonzero(ent) == 0
    gl, ge = upstream_grads((9,), triton_device)
    grads = torch.autograd.grad((logp * gl).sum() + (ent * ge).sum(), leaves)
    assert all(torch.count_nonzero(g) == 0 for g in grads)
    for b, leaf in zip(before, leaves):
        assert torch.equal(leaf.detach(), b)


@pytest.mark.interpret
def test_triton_rejects_float64(triton_device):
    hidden, weight, bias, targets = make_linear_inputs((4,), 8, 20, torch.float64, device=triton_device)
    with pytest.raises(ValueError, match="hidden"):
        sf.token_logprobs(hidden, weight, targets, backend="triton")
    with pytest.raises(ValueError, match="logits"):
        sf.logprobs_from_logits(
            torch.randn(4, 20, dtype=torch.float64, device=triton_device), targets, backend="triton"
        )


# --------------------------------------------------------------------------- GPU only
GPU_LINEAR = [
    ((512,), 256, 50257, torch.bfloat16, 1.0, True),
    ((4, 97), 123, 5003, torch.bfloat16, 0.3, False),
    ((300,), 123, 5003, torch.float16, 3.0, True),
    ((300,), 123, 5003, torch.float32, 1.0, True),
]


@pytest.mark.gpu
@pytest.mark.parametrize("lead,h,v,dtype,temperature,bias", [pytest.param(*c, id=_id(*c)) for c in GPU_LINEAR])
def test_token_logprobs_triton_gpu(lead, h, v, dtype, temperature, bias):
    hidden, weight, b, targets = make_linear_inputs(lead, h, v, dtype, bias=bias, scale=4.0, device="cuda")
    check_linear(hidden, weight, b, targets, backend="triton", temperature=temperature, floor=1e-5)


@pytest.mark.gpu
def test_token_logprobs_auto_is_triton_on_cuda_and_matches_torch_backend():
    hidden, weight, bias, targets = make_linear_inputs((256,), 128, 5003, torch.bfloat16, device="cuda")
    auto = sf.token_logprobs(hidden, weight, targets, bias=bias)
    chunked = sf.token_logprobs(hidden, weight, targets, bias=bias, backend="torch")
    torch.testing.assert_close(auto, chunked, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_logprobs_from_logits_triton_gpu(dtype):
    logits = (torch.randn(257, 50257, device="cuda") * 4).to(dtype)
    targets = torch.randint(0, 50257, (257,), device="cuda")
    targets[::7] = -100
    check_from_logits(logits, targets, backend="triton", temperature=0.7, floor=1e-5)
