"""``self_check``: run each Triton op against its torch path on small random inputs, on one device.

Per op and input dtype, outputs and gradients (random upstream gradients on every output) of
``backend="triton"`` are compared with float64 truth from ``backend="torch"``, under STYLE.md's rule:
``|triton - truth| <= 2 |torch in the dtype - truth| + floor``. A kernel that raises gives
``"error: ..."``, one outside the tolerance ``"mismatch: ..."``. Inputs come from a private seeded
generator (the caller's RNG stream is untouched); gradients are enabled and autocast is off inside.

Under the CPU interpreter bf16 ``tl.dot`` is wrong (FACTS.md), so on a CPU the dot-based ops
(token log-probs, tree attention) are checked in float32 and float16 only.
"""
from __future__ import annotations

import torch

OPS = ("token_logprobs", "logprobs_from_logits", "tree_attention", "policy_loss")
_FLOOR = 1e-4   # relative to the truth's largest magnitude: float32 kernels differ from it by ~1e-6


class _Mismatch(Exception):
    pass


def self_check(device=None) -> dict[str, str]:
    """Check every Triton op against its torch path on ``device`` (default: the current CUDA device,
    else the CPU, where Triton needs TRITON_INTERPRET=1 set before it is imported).

    Returns ``{op name: "ok" | "mismatch: ..." | "error: ..."}`` with one entry per op
    (``token_logprobs`` and ``tree_attention`` forward and backward, ``logprobs_from_logits``,
    ``policy_loss``), each over float32, float16 and bfloat16 inputs (bf16 not for dot-based ops on
    a CPU). Never raises for a failing op.
    """
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    return {op: check_op(op, device) for op in OPS}


def check_op(op: str, device: torch.device) -> str:
    """Self-check status of one op (see ``self_check``)."""
    if op not in OPS:
        raise ValueError(f"op must be one of {list(OPS)}, got {op!r}")
    gen = torch.Generator().manual_seed(0)
    dtypes = (torch.float32,) if op == "policy_loss" else _dtypes(op, device)
    dtype = dtypes[0]
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            for dtype in dtypes:
                _CHECKS[op](device, dtype, gen)
    except _Mismatch as exc:
        return f"mismatch: {exc}"
    except Exception as exc:  # noqa: BLE001 - any failure of the kernel path is the finding
        return f"error: {dtype_name(dtype)}: {type(exc).__name__}: {exc}"
    return "ok"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _dtypes(op: str, device: torch.device):
    if device.type != "cuda" and op in ("token_logprobs", "tree_attention"):
        return (torch.float32, torch.float16)
    return (torch.float32, torch.float16, torch.bfloat16)


def _randn(gen, *shape, device, scale=1.0):
    return torch.randn(*shape, generator=gen).mul_(scale).to(device)


def _compare(what: str, dtype, fast, truth, lowp, *, mult=2.0):
    """STYLE.md's rule on each pair of tensors; raises _Mismatch naming the first that fails."""
    for name, f, t, low in zip(what, fast, truth, lowp):
        if f.shape != t.shape:
            raise _Mismatch(f"{dtype_name(dtype)} {name}: shape {tuple(f.shape)} != {tuple(t.shape)}")
        t = t.double()
        err = float((f.double() - t).abs().max()) if f.numel() else 0.0
        tol = mult * (float((low.double() - t).abs().max()) if low.numel() else 0.0)
        tol += _FLOOR * (float(t.abs().max()) if t.numel() else 0.0) + 1e-7
        if not err <= tol:   # also catches NaN
            raise _Mismatch(f"{dtype_name(dtype)} {name}: max error {err:.3g} > tolerance {tol:.3g}")


def _run(fn, leaves, upstream):
    """Outputs of ``fn(*leaves)`` and the gradients of sum(out * upstream) for every leaf."""
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    loss = sum((o.double() * u).sum() for o, u in zip(outs, upstream))
    grads = torch.autograd.grad(loss, leaves)
    return [o.detach() for o in outs] + list(grads)


def _three_ways(fn, inputs, upstream, dtype):
    """fn on (triton, dtype), (torch, float64), (torch, dtype) leaves."""
    def leaves(dt):
        return [x.detach().to(dt).requires_grad_() for x in inputs]

    return (_run(lambda *a: fn(*a, backend="triton"), leaves(dtype), upstream),
            _run(lambda *a: fn(*a, backend="torch"), leaves(torch.float64), upstream),
            _run(lambda *a: fn(*a, backend="torch"), leaves(dtype), upstream))


def _check_token_logprobs(device, dtype, gen):
    from spiral_fast.ops.logprobs.op import token_logprobs

    # on a GPU over one 128-wide block of every kind; under the interpreter (16 x 64 x 32 blocks) small
    n, h, v = (150, 80, 300) if device.type == "cuda" else (20, 40, 130)
    targets = torch.randint(0, v, (n,), generator=gen).to(device)
    targets[3::7] = -100
    inputs = [_randn(gen, n, h, device=device), _randn(gen, v, h, device=device, scale=3.0 / h ** 0.5),
              _randn(gen, v, device=device)]
    upstream = [_randn(gen, n, device=device).double(), _randn(gen, n, device=device).double()]

    def fn(hidden, weight, bias, backend):
        return token_logprobs(hidden, weight, targets, bias=bias, temperature=0.7, return_entropy=True,
                              backend=backend)

    _compare(("logp", "entropy", "d_hidden", "d_weight", "d_bias"), dtype,
             *_three_ways(fn, inputs, upstream, dtype))


def _check_logprobs_from_logits(device, dtype, gen):
    from spiral_fast.ops.logprobs.op import logprobs_from_logits

    n, v = (29, 1100) if device.type == "cuda" else (9, 130)   # over one row block (1024 on a GPU, 64 here)
    targets = torch.randint(0, v, (n,), generator=gen).to(device)
    targets[2::5] = -100
    inputs = [_randn(gen, n, v, device=device, scale=3.0)]
    upstream = [_randn(gen, n, device=device).double(), _randn(gen, n, device=device).double()]

    def fn(logits, backend):
        return logprobs_from_logits(logits, targets, temperature=1.3, return_entropy=True, backend=backend)

    _compare(("logp", "entropy", "d_logits"), dtype, *_three_ways(fn, inputs, upstream, dtype))


def _check_tree_attention(device, dtype, gen):
    from spiral_fast.ops.tree_attention.op import tree_attention
    from spiral_fast.packing import pack_sequences

    # a shared prompt with three branches (one a single token) and an unrelated sequence
    long = 150 if device.type == "cuda" else 30   # over one (64-token on a GPU) block of every kind
    prompt = list(range(1, long))
    packed = pack_sequences([prompt + [50, 51, 52], prompt + [60] * long, prompt + [70], [80] * 25]).to(device)
    t, hq, hkv, d = packed.num_tokens, 4, 2, 64
    inputs = [_randn(gen, t, hq, d, device=device), _randn(gen, t, hkv, d, device=device),
              _randn(gen, t, hkv, d, device=device)]
    upstream = [_randn(gen, t, hq, d, device=device).double()]

    def fn(q, k, v, backend):
        return tree_attention(q, k, v, packed, backend=backend)

    _compare(("out", "dq", "dk", "dv"), dtype, *_three_ways(fn, inputs, upstream, dtype))


def _check_policy_loss(device, dtype, gen):
    from spiral_fast.algorithm.policy_loss import policy_loss

    rows, seqs = 300, 7
    logp = _randn(gen, rows, device=device, scale=0.5) - 1.0
    old = logp + _randn(gen, rows, device=device, scale=0.3)
    ref = logp + _randn(gen, rows, device=device, scale=0.3)
    token_seq = torch.randint(0, seqs, (rows,), generator=gen).to(device)
    adv, weight = _randn(gen, seqs, device=device), _randn(gen, seqs, device=device).abs()
    upstream = torch.randn((), generator=gen).item()
    results = []
    for backend in ("triton", "torch"):
        leaf = logp.detach().requires_grad_()
        loss, stats = policy_loss(leaf, old, token_seq, adv, weight, ref_logp=ref, kl_coef=0.05, backend=backend)
        (grad,) = torch.autograd.grad(loss * upstream, leaf)
        results.append([loss.detach(), grad, stats.clip_frac_low, stats.clip_frac_high, stats.ratio_mean,
                        stats.kl_mean])
    # the torch path is float32 too (no float64 twin): the kernel must agree with it to the floor
    _compare(("loss", "d_logp", "clip_frac_low", "clip_frac_high", "ratio_mean", "kl_mean"), dtype,
             results[0], results[1], results[1])


_CHECKS = {"token_logprobs": _check_token_logprobs, "logprobs_from_logits": _check_logprobs_from_logits,
           "tree_attention": _check_tree_attention, "policy_loss": _check_policy_loss}
