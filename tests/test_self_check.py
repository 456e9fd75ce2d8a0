"""``spiral_fast.self_check`` and the fallback of ``backend="auto"`` (issue 12, section 3).

The CUDA decision path runs here on the CPU: ``dispatch.prefers_triton`` (the predicate "auto would
pick Triton on this device") is replaced, and kernels run under the interpreter. A failing and a
wrong kernel are injected; auto must warn once, naming the op and the reason, and use torch.
Each op registers its own check with ``spiral_fast.ops.self_check`` beside its definition;
``self_check()`` (``spiral_fast.ops.checks``) imports every op module and runs every registered check.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import spiral_fast as sf
from spiral_fast.ops import dispatch
from spiral_fast.ops import self_check as registry
from spiral_fast.ops.checks import self_check
from spiral_fast.ops.tree_attention.op import check_case

OPS = ("token_logprobs", "logprobs_from_logits", "tree_attention", "policy_loss")


@pytest.fixture
def cuda_path(monkeypatch):
    """auto takes its CUDA path on CPU tensors; self-check results start empty and are forgotten after."""
    monkeypatch.setattr(dispatch, "prefers_triton", lambda device, choices: "triton" in choices)
    monkeypatch.delenv("SPIRAL_FAST_SELF_CHECK", raising=False)
    dispatch.reset()
    yield
    dispatch.reset()


def _policy_inputs(rows=64, seqs=5):
    logp = (torch.randn(rows) - 1.0).requires_grad_()
    old = logp.detach() + 0.3 * torch.randn(rows)
    token_seq = torch.randint(0, seqs, (rows,))
    return logp, old, token_seq, torch.randn(seqs), torch.rand(seqs) + 0.5


def _loss_and_grad(backend, inputs):
    logp, *rest = inputs
    leaf = logp.detach().requires_grad_()
    loss, _ = sf.policy_loss(leaf, *rest, backend=backend)
    loss.backward()
    return loss.detach(), leaf.grad


@pytest.mark.interpret
def test_auto_keeps_triton_when_the_check_passes(cuda_path):
    inputs = _policy_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with dispatch.recording() as used:
            _loss_and_grad("auto", inputs)
    assert used == {"policy_loss": "triton"}


@pytest.mark.interpret
def test_wrong_kernel_falls_back_to_torch_with_one_warning(cuda_path, monkeypatch):
    from spiral_fast.kernels import policy_loss as kernel

    real = kernel.policy_loss_fwd

    def wrong(*args, **kwargs):
        grad, partials = real(*args, **kwargs)
        return grad * 1.01, partials  # a gradient 1% off: within no tolerance

    monkeypatch.setattr(kernel, "policy_loss_fwd", wrong)
    inputs = _policy_inputs()
    with pytest.warns(RuntimeWarning, match=r"policy_loss.*mismatch: float32 d_logp"):
        with dispatch.recording() as used:
            loss, grad = _loss_and_grad("auto", inputs)
    assert used == {"policy_loss": "torch"}
    ref_loss, ref_grad = _loss_and_grad("torch", inputs)
    assert torch.equal(loss, ref_loss) and torch.equal(grad, ref_grad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process: the second call neither checks nor warns
        _loss_and_grad("auto", inputs)


@pytest.mark.interpret
def test_failing_kernel_falls_back_to_torch(cuda_path, monkeypatch):
    from spiral_fast.kernels import logprobs as kernel

    def failing(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(kernel, "token_logprobs_fwd", failing)
    hidden, weight = torch.randn(6, 16, requires_grad=True), torch.randn(40, 16)
    targets = torch.randint(0, 40, (6,))
    with pytest.warns(RuntimeWarning, match=r"token_logprobs.*error: float32: RuntimeError: CUDA error"):
        with dispatch.recording() as used:
            logp = sf.token_logprobs(hidden, weight, targets, backend="auto")
    assert used == {"token_logprobs": "torch"}
    assert torch.equal(logp, sf.token_logprobs(hidden, weight, targets, backend="torch"))
    # the other ops are checked on their own, when first used
    assert "logprobs_from_logits" not in dispatch._STATUS


@pytest.mark.interpret
def test_self_check_off_trusts_triton(cuda_path, monkeypatch):
    from spiral_fast.kernels import policy_loss as kernel

    def failing(*args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(kernel, "policy_loss_fwd", failing)
    monkeypatch.setenv("SPIRAL_FAST_SELF_CHECK", "0")
    with pytest.raises(RuntimeError, match="injected"):
        _loss_and_grad("auto", _policy_inputs())


def test_explicit_backends_and_cpu_auto_are_not_checked(monkeypatch):
    dispatch.reset()
    monkeypatch.setattr("spiral_fast.ops.self_check.check_op", lambda op, device: pytest.fail("checked"))
    with dispatch.recording() as used:
        _loss_and_grad("auto", _policy_inputs())
        _loss_and_grad("torch", _policy_inputs())
    assert used == {"policy_loss": "torch"}


@pytest.mark.interpret
def test_self_check_reports_errors_per_op(monkeypatch):
    from spiral_fast.kernels import tree_attention as kernel

    monkeypatch.setattr(kernel, "tree_attention_bwd", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad")))
    status = registry.check_op("tree_attention", torch.device("cpu"))
    assert status == "error: float32: ValueError: bad"
    with pytest.raises(ValueError, match="op must be one of"):
        registry.check_op("attention", torch.device("cpu"))


@pytest.fixture
def extra_op():
    """A made-up op whose registered check always finds a mismatch (unregistered afterwards)."""

    def check(device, dtype, gen):
        raise registry.Mismatch(f"{registry.dtype_name(dtype)} out: made up")

    registry.register_self_check("made_up", check, dtypes=registry.float32_only)
    yield "made_up"
    del registry._REGISTRY["made_up"]


def test_a_registered_op_is_checked_by_self_check_and_auto(extra_op, cuda_path):
    assert set(OPS) <= set(registry.registered())
    assert registry.check_op(extra_op, torch.device("cpu")) == "mismatch: float32 out: made up"
    with pytest.warns(RuntimeWarning, match="made_up failed its self-check.*mismatch: float32 out: made up"):
        assert dispatch.resolve(extra_op, "auto", torch.device("cpu"), ("torch", "triton")) == "torch"


def test_auto_without_a_registered_check_runs_torch(cuda_path):
    with pytest.warns(RuntimeWarning, match="no self-check registered for unknown_op"):
        assert dispatch.resolve("unknown_op", "auto", torch.device("cpu"), ("torch", "triton")) == "torch"


@pytest.mark.interpret
@pytest.mark.slow
def test_self_check_all_ops_ok_under_the_interpreter():
    rng = torch.get_rng_state()
    result = self_check("cpu")
    assert result == {op: "ok" for op in OPS}
    assert torch.equal(rng, torch.get_rng_state())  # the caller's random stream is untouched


def test_public_self_check_is_the_all_ops_one():
    assert sf.self_check is self_check
    from spiral_fast.packing.self_check import self_check as earlier_path

    assert earlier_path is self_check


def test_self_check_registers_every_op_by_itself():
    """``spiral_fast.ops.checks`` imports every op module, so a fresh process that imports nothing else
    (no packing, no step) still checks all of them."""
    import subprocess
    import sys

    code = (
        "import spiral_fast.ops.checks, spiral_fast.ops.self_check as r, sys; "
        "print(sorted(r.registered())); print('spiral_fast.packing' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split("\n")[:2] == [str(sorted(OPS)), "False"]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_tree_attention_check_layout_is_what_the_packer_builds(device):
    """The tree attention check writes its batch out segment by segment (the ops layer has no packer):
    it must be exactly the batch ``pack_sequences`` builds from the same sequences (the CUDA size too)."""
    long = 150 if device == "cuda" else 30
    prompt = list(range(1, long))
    expected = sf.pack_sequences([prompt + [50, 51, 52], prompt + [60] * long, prompt + [70], [80] * 25])
    assert check_case(torch.device(device)) == expected


def test_step_metrics_name_the_backend_of_each_op():
    from training_cases import random_batch, tiny_model

    out = sf.step(tiny_model("qwen2"), random_batch(8, problems=2, max_g=2, old=True))
    used = {k for k, v in out.metrics.items() if k.startswith("backend/") and v == 1.0}
    assert {"backend/token_logprobs/torch", "backend/policy_loss/torch"} <= used
