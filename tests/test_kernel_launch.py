"""Regressions a first H100/H200 run would hit (issue 12, section 1), checked on the CPU.

- torch's TF32 switch is read without the "mix of the legacy and new APIs" RuntimeError;
- every launcher makes the tensors' device current (Triton launches on the current device);
- the float32 log-prob configs are the ones that fit sm_90 (the ``sm90_compile`` test compiles them);
- fp16 gradients of the Triton log-prob backward do not flush to zero at a 1e-7 upstream gradient.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import spiral_fast as sf
from spiral_fast.ops.logprobs.reference import token_logprobs_reference


@pytest.fixture
def tf32_flags():
    """Leave torch's precision flags as they were (tests below set them through both APIs)."""
    matmul = torch.backends.cuda.matmul
    before = (matmul.fp32_precision, torch.backends.fp32_precision)
    yield matmul
    torch.backends.fp32_precision = before[1]
    matmul.fp32_precision = before[0]


def test_tf32_read_under_the_current_api(tf32_flags):
    from spiral_fast.kernels._launch import cuda_matmul_allows_tf32

    tf32_flags.fp32_precision = "tf32"
    with pytest.raises(RuntimeError):
        torch.backends.cuda.matmul.allow_tf32  # the legacy read that used to fail in the launcher
    assert cuda_matmul_allows_tf32() is True
    tf32_flags.fp32_precision = "ieee"
    assert cuda_matmul_allows_tf32() is False


def test_tf32_read_under_the_legacy_api_and_inherited(tf32_flags):
    from spiral_fast.kernels._launch import cuda_matmul_allows_tf32

    tf32_flags.allow_tf32 = True
    assert cuda_matmul_allows_tf32() is True
    tf32_flags.allow_tf32 = False
    assert cuda_matmul_allows_tf32() is False
    tf32_flags.fp32_precision = "none"
    torch.backends.fp32_precision = "tf32"  # the matmul flag inherits the global one
    assert cuda_matmul_allows_tf32() is True


@pytest.mark.interpret
@pytest.mark.parametrize("precision", ["tf32", "ieee"])
def test_triton_logprobs_after_the_current_tf32_api(tf32_flags, triton_device, precision):
    from spiral_fast.kernels import logprobs as K

    tf32_flags.fp32_precision = precision
    assert K._dot_precision(torch.float32) == precision
    assert K._dot_precision(torch.bfloat16) == "tf32"
    hidden = torch.randn(5, 16, device=triton_device, requires_grad=True)
    weight = torch.randn(40, 16, device=triton_device)
    targets = torch.randint(0, 40, (5,), device=triton_device)
    logp = sf.token_logprobs(hidden, weight, targets, backend="triton")
    logp.sum().backward()
    ref = token_logprobs_reference(hidden.detach().double(), weight.double(), targets, dtype=torch.float64)
    assert torch.allclose(logp.double(), ref, atol=1e-4)


def test_float32_logprob_configs_fit_sm90(tf32_flags):
    """The configs the ``sm90_compile`` test found to fit: a 32-wide hidden slice with TF32 (the
    64-wide one needed ~295 KB of shared memory), small FMA tiles without it."""
    from spiral_fast.kernels.logprobs import linear_config

    tf32_flags.fp32_precision = "tf32"
    assert linear_config("bwd", torch.float32, interpret=False)["BLOCK_H"] == 32
    tf32_flags.fp32_precision = "ieee"
    ieee = linear_config("bwd", torch.float32, interpret=False)
    assert ieee["BLOCK_N"] * ieee["BLOCK_V"] * ieee["BLOCK_H"] <= 128 * 64 * 16
    assert linear_config("bwd", torch.bfloat16, interpret=False)["BLOCK_H"] == 64


def test_device_guard_selects_the_tensors_device():
    from spiral_fast.kernels._launch import device_guard

    guard = device_guard(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert isinstance(device_guard(torch.device("cpu")), contextlib.nullcontext)


@pytest.mark.interpret
def test_every_launcher_enters_the_device_guard(monkeypatch, triton_device):
    """Each launcher opens the guard with its tensors' device before launching."""
    from spiral_fast.kernels import logprobs, policy_loss, tree_attention

    entered = []

    def recorder(device):
        entered.append(device)
        return contextlib.nullcontext()

    for module in (logprobs, policy_loss, tree_attention):
        monkeypatch.setattr(module, "device_guard", recorder)
    hidden = torch.randn(6, 16, device=triton_device, requires_grad=True)
    weight = torch.randn(40, 16, device=triton_device)
    targets = torch.randint(0, 40, (6,), device=triton_device)
    sf.token_logprobs(hidden, weight, targets, backend="triton").sum().backward()
    logits = torch.randn(6, 40, device=triton_device, requires_grad=True)
    sf.logprobs_from_logits(logits, targets, backend="triton").sum().backward()
    assert len(entered) == 4
    logp = torch.randn(8, device=triton_device, requires_grad=True)
    sf.policy_loss(
        logp,
        logp.detach(),
        torch.zeros(8, dtype=torch.int64, device=triton_device),
        torch.ones(1, device=triton_device),
        torch.ones(1, device=triton_device),
        backend="triton",
    )
    assert len(entered) == 5
    packed = sf.pack_sequences([[1, 2, 3], [4, 5]]).to(triton_device)
    q = torch.randn(5, 2, 16, device=triton_device, requires_grad=True)
    sf.tree_attention(q, q.detach()[:, :1], q.detach()[:, :1], packed, backend="triton").sum().backward()
    assert len(entered) == 7
    assert all(d == torch.device(triton_device) for d in entered)


@pytest.mark.gpu
def test_triton_ops_on_a_non_current_cuda_device():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    dev = torch.device("cuda", 1)
    hidden = torch.randn(64, 128, device=dev, requires_grad=True)
    weight = torch.randn(1000, 128, device=dev)
    targets = torch.randint(0, 1000, (64,), device=dev)
    with torch.cuda.device(0):
        logp = sf.token_logprobs(hidden, weight, targets, backend="triton")
        logp.sum().backward()
    ref = token_logprobs_reference(hidden.detach().double(), weight.double(), targets, dtype=torch.float64)
    assert torch.allclose(logp.double(), ref, atol=1e-3)


def _relative_error(x: torch.Tensor, truth: torch.Tensor) -> float:
    return float((x.double() - truth).abs().max() / truth.abs().max())


@pytest.mark.interpret
@pytest.mark.parametrize(
    "dtype",
    [
        pytest.param(torch.float16, id="float16"),
        # bf16 tl.dot is wrong under the interpreter (docs/platform_notes.md): the bf16 case needs a GPU
        pytest.param(torch.bfloat16, id="bfloat16", marks=pytest.mark.gpu),
    ],
)
def test_low_precision_gradients_survive_a_tiny_upstream_gradient(triton_device, dtype):
    """A token-mean over a large batch gives ~1e-7 per token: G = dL/dlogits is then below fp16's
    smallest subnormal (6e-8) for most entries. The backward's error must stay within 2x the error of
    merely storing the exact gradient in the input dtype (the torch backend's floor)."""
    n, h, v = 64, 32, 4096
    hidden = torch.randn(n, h, device=triton_device).to(dtype)
    weight = (torch.randn(v, h, device=triton_device) / h**0.5).to(dtype)
    targets = torch.randint(0, v, (n,), device=triton_device)
    upstream = (
        1e-7 * torch.empty(n, device=triton_device).uniform_(0.5, 1.5) * torch.randn(n, device=triton_device).sign()
    )

    leaves = [t.detach().double().requires_grad_() for t in (hidden, weight)]
    logp = token_logprobs_reference(*leaves, targets, dtype=torch.float64)
    truth = torch.autograd.grad((logp * upstream.double()).sum(), leaves)

    fast = [t.detach().requires_grad_() for t in (hidden, weight)]
    logp = sf.token_logprobs(*fast, targets, backend="triton")
    got = torch.autograd.grad((logp * upstream).sum(), fast)
    for name, g, t in zip(("d_hidden", "d_weight"), got, truth):
        assert g.dtype == dtype
        floor = _relative_error(t.to(dtype), t)
        err = _relative_error(g, t)
        assert err <= 2 * floor, f"{name}: relative error {err:.3g} > 2 x the {dtype} storage floor {floor:.3g}"


@pytest.mark.interpret
def test_vocab_split_forward_with_a_fully_masked_split(triton_device):
    """The forward splits the vocabulary across programs and merges their partial (max, sum, target)
    values; a split whose logits are all -inf must weigh nothing (and give no NaN)."""
    from test_logprobs import check_linear, make_linear_inputs

    from spiral_fast.kernels.logprobs import _vocab_splits

    assert _vocab_splits(1, 3, torch.device("cpu")) == 3  # the shape below: one token block, 3 splits
    hidden, weight, bias, targets = make_linear_inputs((12,), 16, 130, torch.float32, device=triton_device)
    bias[:64] = float("-inf")  # the whole first split
    targets[targets.clamp(min=0) < 64] = 100
    out = check_linear(hidden, weight, bias, targets, backend="triton", floor=1e-5)
    assert all(torch.isfinite(o[~torch.isinf(o)]).all() for o in out)
