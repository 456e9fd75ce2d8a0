"""Fused per-token log-probs: forward+backward of logp = log_softmax(h @ W.T)[target] with a random
per-token upstream gradient, spiral_fast against its peers on the same inputs.

Peers, imported from the packages users install (skipped where not installed): TRL's fused LM head
(``trl.kernels.ChunkedLogProbFunction``, what ``trl.trainer.utils.add_fused_lm_head`` runs; log-probs
and entropy as GRPOTrainer asks for) and its ``selective_log_softmax`` over full logits (its non-fused
path); ``F.linear_cross_entropy(reduction="none")`` (logp = -loss); "naive" = what a plain
transformers forward does, ``log_softmax(h @ W.T).gather``; on CUDA also Liger Kernel's fused linear
cross-entropy and Cut Cross-Entropy. No peer is re-implemented. Shapes: cpu-small, the LM heads of
SmolLM2-135M (V=49152, H=576) and Qwen3-4B (V=151936, H=2560; 512 tokens on the CPU, 16k on CUDA). Rate: 8 N H V flops per forward+backward (forward 2NHV, backward dH + dW 4NHV, plus the
2NHV recompute that fused ops pay and the naive path does not — all peers are credited the same).

    pytest benchmarks/bench_logprobs.py            cpu-small (every peer) + GPU groups on CUDA
    pytest benchmarks/bench_logprobs.py -m slow    the CPU target (N=4096, H=1024, V=65536; minutes)

CPU peak memory is the process's peak-RSS delta (see harness.py); spiral_fast runs first in each
group so that memory freed by other peers cannot be reused by it and under-count its peak.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from presets import LM_HEAD

import spiral_fast


def naive(h, w, t):
    return torch.log_softmax(h @ w.T, dim=-1).gather(-1, t[:, None]).squeeze(-1)


def linear_cross_entropy(h, w, t):
    return -F.linear_cross_entropy(h, w, t, reduction="none")


def trl_fused_lm_head(h, w, t):
    """TRL 1.16's fused LM head as ``add_fused_lm_head`` calls it under GRPOTrainer (outputs log-probs
    and entropy; its default tile of 32768 tokens)."""
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    return ChunkedLogProbFunction.apply(
        h, w, None, t, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, ("log_probs", "entropy")
    )[0]


def trl_selective_log_softmax(h, w, t):
    """TRL's non-fused path: full logits, then its ``selective_log_softmax``."""
    from trl.trainer.utils import selective_log_softmax

    return selective_log_softmax(h @ w.T, t)


def spiral_fast_op(h, w, t):
    return spiral_fast.token_logprobs(h, w, t)


def liger(h, w, t):
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    out = liger_fused_linear_cross_entropy(h, w, t, reduction="none")
    return -(out[0] if isinstance(out, tuple) else out)


def cut_cross_entropy(h, w, t):
    from cut_cross_entropy import linear_cross_entropy as cce

    return -cce(h, w, t, reduction="none")


CPU_PEERS = {"spiral_fast": spiral_fast_op, "naive": naive, "linear_cross_entropy": linear_cross_entropy}
OPTIONAL_PEERS = {"trl_fused_lm_head": trl_fused_lm_head, "trl_selective_log_softmax": trl_selective_log_softmax}
CPU_ALL = {**CPU_PEERS, **OPTIONAL_PEERS}
GPU_PEERS = {**CPU_ALL, "liger": liger, "cut_cross_entropy": cut_cross_entropy}
NOTES = {
    "liger": "grads computed in forward, scaled by grad_output",
    "cut_cross_entropy": "default gradient filtering (filter_eps='auto')",
}


def make_inputs(shape, device, dtype):
    """hidden [N, H], weight [V, H] (leaves), targets [N], upstream gradient [N] of one preset (seeded)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    n, h, v = shape.tokens, shape.hidden, shape.vocab
    hidden = torch.randn(n, h, generator=g).to(device=device, dtype=dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * h**-0.5).to(device=device, dtype=dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    upstream = torch.randn(n, generator=g).to(device)
    return hidden, weight, targets, upstream


def make_step(peer_fn, shape, device, dtype):
    """A closure running forward + backward with a per-token gradient on the preset's inputs."""
    hidden, weight, targets, upstream = make_inputs(shape, device, dtype)

    def step():
        hidden.grad = weight.grad = None
        logp = peer_fn(hidden, weight, targets)
        logp.backward(upstream.to(logp.dtype))

    return step


def make_values(peer_fn, shape, device, dtype):
    """A callable giving the peer's logp, dH and dW on the preset's inputs (checked against spiral_fast)."""

    def values():
        hidden, weight, targets, upstream = make_inputs(shape, device, dtype)
        logp = peer_fn(hidden, weight, targets)
        logp.backward(upstream.to(logp.dtype))
        return {"logp": logp.detach().float(), "d_hidden": hidden.grad.float(), "d_weight": weight.grad.float()}

    return values


@pytest.fixture(scope="module", autouse=True)
def _warm_libraries():
    """One tiny forward+backward per CPU peer before anything is measured: BLAS and autograd
    initialise on first use and would otherwise add their one-time RSS to the first peer's peak."""
    tiny = LM_HEAD["cpu-small"].__class__("warmup", tokens=64, hidden=32, vocab=256)
    for fn in CPU_PEERS.values():
        make_step(fn, tiny, "cpu", torch.float32)()


def _run(compare, group, peer, fn, shape, device, dtype, rounds, warmup):
    step = make_step(fn, shape, device, dtype)
    if peer not in CPU_PEERS:
        try:  # optional peers: skip cleanly when missing or when they reject the call
            step()
        except Exception as exc:  # noqa: BLE001 - any failure of an optional peer means "skip"
            pytest.skip(f"{peer} unavailable: {type(exc).__name__}: {exc}"[:200])
    extra = dict(flops=8 * shape.tokens * shape.hidden * shape.vocab, preset=shape.name)
    if peer in NOTES:
        extra["note"] = NOTES[peer]
    if peer == "spiral_fast":
        extra["impl"] = resolved_backends(make_step(fn, shape, device, dtype))
    # bf16 peers round logits and gradients differently (and CCE filters tiny gradients): 5e-2
    rel = 1e-3 if dtype == torch.float32 else 5e-2
    compare(
        group,
        peer,
        step,
        device=device,
        rounds=rounds,
        warmup=warmup,
        rel=rel,
        values=make_values(fn, shape, device, dtype),
        expected=make_values(spiral_fast_op, shape, device, dtype),
        **extra,
    )


def resolved_backends(fn) -> str:
    """The backend each spiral_fast op resolved to in one call of ``fn`` (e.g. "token_logprobs=triton")."""
    from spiral_fast.ops import dispatch

    with dispatch.recording() as used:
        fn()
    return ", ".join(f"{op}={backend}" for op, backend in sorted(used.items()))


@pytest.mark.parametrize("peer", list(CPU_ALL))
def test_logprobs_cpu_small(compare, peer):
    _run(
        compare,
        "logprobs cpu-small fp32",
        peer,
        CPU_ALL[peer],
        LM_HEAD["cpu-small"],
        "cpu",
        torch.float32,
        rounds=3,
        warmup=1,
    )


@pytest.mark.slow  # real LM heads (V=49152 and 151936): 20-90 s (SmolLM2), minutes (Qwen3-4B) a peer on a 2-core CPU
@pytest.mark.parametrize("preset", ["smollm2", "qwen3-4b-cpu"])
@pytest.mark.parametrize("peer", list(CPU_ALL))
def test_logprobs_real_shapes_cpu(compare, peer, preset, one_cpu_thread):
    """The LM heads of SmolLM2-135M and Qwen3-4B (issue 19), fp32, one thread."""
    shape = LM_HEAD[preset]
    _run(compare, f"logprobs {preset} fp32", peer, CPU_ALL[peer], shape, "cpu", torch.float32, rounds=2, warmup=1)


@pytest.mark.slow
@pytest.mark.parametrize("peer", list(CPU_ALL))
def test_logprobs_cpu_target(compare, peer, request):
    if "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("the CPU target takes minutes per peer: run with -m slow")
    _run(
        compare,
        "logprobs cpu-target fp32",
        peer,
        CPU_ALL[peer],
        LM_HEAD["cpu-target"],
        "cpu",
        torch.float32,
        rounds=1,
        warmup=1,
    )


@pytest.mark.gpu
@pytest.mark.parametrize("peer", list(GPU_PEERS))
def test_logprobs_qwen_bf16(compare, peer):
    _run(
        compare,
        "logprobs qwen2.5-7b bf16",
        peer,
        GPU_PEERS[peer],
        LM_HEAD["qwen2.5-7b"],
        "cuda",
        torch.bfloat16,
        rounds=3,
        warmup=1,
    )


@pytest.mark.gpu
@pytest.mark.parametrize("peer", list(GPU_PEERS))
def test_logprobs_qwen3_4b_bf16(compare, peer):
    _run(
        compare,
        "logprobs qwen3-4b bf16",
        peer,
        GPU_PEERS[peer],
        LM_HEAD["qwen3-4b"],
        "cuda",
        torch.bfloat16,
        rounds=3,
        warmup=1,
    )


@pytest.mark.gpu
def test_bf16_matmul_rate(compare):
    """The physical floor to read the rates above against: one large bf16 GEMM of LM-head shape."""
    shape = LM_HEAD["qwen2.5-7b"]
    n, h, v = 8192, shape.hidden, 16384
    a = torch.randn(n, h, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(v, h, device="cuda", dtype=torch.bfloat16)
    compare("bf16 matmul (floor)", "torch.mm", lambda: a @ b.T, device="cuda", rounds=10, warmup=3, flops=2 * n * h * v)


def fresh_process_peak(peer: str, preset: str) -> int:
    """Peak extra RSS (bytes) of one forward + backward of ``peer`` on ``preset`` in a new Python
    process: the in-process groups above measure every peer after the first in a process whose
    allocator already holds the pages earlier peers freed, which under-counts its peak."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json, sys, torch; sys.path.insert(0, sys.argv[3]); torch.set_num_threads(1)\n"
        "import bench_logprobs as b, harness\n"
        "from presets import LM_HEAD\n"
        "tiny = LM_HEAD['cpu-small'].__class__('warmup', tokens=64, hidden=32, vocab=256)\n"
        "fn = b.CPU_ALL[sys.argv[1]]; b.make_step(fn, tiny, 'cpu', torch.float32)()\n"
        "step = b.make_step(fn, LM_HEAD[sys.argv[2]], 'cpu', torch.float32)\n"
        "print(json.dumps(harness.peak_memory(step)))\n"
    )
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", code, peer, preset, here], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    # python benchmarks/bench_logprobs.py [preset ...]: each CPU peer's peak memory in its own process
    import sys

    for preset in sys.argv[1:] or ["smollm2", "qwen3-4b-cpu"]:
        shape = LM_HEAD[preset]
        print(
            f"== {preset}: N={shape.tokens} H={shape.hidden} V={shape.vocab}, fp32, peak extra RSS per peer "
            f"(fresh process; the call only: dW [V, H] = {shape.vocab * shape.hidden * 4 / 2**20:.0f} MiB included, inputs not) =="
        )
        base = None
        for peer in CPU_ALL:
            try:
                peak = fresh_process_peak(peer, preset)
            except Exception as exc:  # noqa: BLE001 - an optional peer missing: say so and go on
                print(f"{peer:<28} unavailable: {str(exc)[-200:]}")
                continue
            base = peak if base is None else base
            print(f"{peer:<28} {peak / 2**20:9.1f} MiB  {peak / base:5.2f}x spiral_fast", flush=True)
