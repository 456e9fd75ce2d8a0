"""Public per-token log-prob ops: validation, one autograd Function per op, backend dispatch.

Shapes: ``...`` leading dims (N tokens once flattened), H hidden, V vocab.
Backends: ``"torch"`` (``chunked``: bounded token x vocabulary chunks, the CPU path) and
``"triton"`` (``spiral_fast.kernels.logprobs``: blockwise kernels, CUDA or TRITON_INTERPRET=1).
Both backends return, per token, (m, log_s, entropy, E_p[z] - m, z_t) with lse = m + log_s and z_t
the target's scaled logit (m kept apart so z - lse stays exact for large |z|); the Functions here
turn those into outputs and zero ignored rows, so ignore handling lives in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from spiral_fast._utils import check_index_range, check_same_device, check_tensor
from spiral_fast.ops import dispatch
from spiral_fast.ops.logprobs import chunked
from spiral_fast.ops.self_check import compare, dot_dtypes, randn, register_self_check, three_ways

BACKENDS = ("torch", "triton")
_FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_TRITON_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class LogprobOptions:
    """Hyper-parameters that travel together through the autograd Functions."""

    temperature: float
    ignore_index: int
    return_entropy: bool
    backend: str


def _kernels():
    from spiral_fast.kernels import logprobs as kernels  # Triton is imported only when asked for

    return kernels


def _outputs(results, valid, opts, out_dtype):
    """Backend results (m, log_s, entropy, E_p[z] - m, z_t) -> (logp[, entropy]) and the per-token
    stats (m, log_s, E_p[z] - m) that backward needs."""
    m, log_s, ent, mean_shifted, zt = results
    zero = torch.zeros((), device=m.device, dtype=m.dtype)
    logp = torch.where(valid, (zt - m) - log_s, zero).to(out_dtype)
    if not opts.return_entropy:
        return logp, (m, log_s, None)
    return (logp, torch.where(valid, ent, zero).to(out_dtype)), (m, log_s, mean_shifted)


def _forward(ctx, opts, inputs, targets, torch_impl, triton_name):
    """Shared forward of both Functions: run the backend on ``inputs`` and the ignore-safe targets,
    save ``inputs``, targets, the valid mask and the per-token stats for backward."""
    valid = targets != opts.ignore_index
    safe = torch.where(valid, targets, torch.zeros_like(targets))
    impl = getattr(_kernels(), triton_name) if opts.backend == "triton" else torch_impl
    results = impl(*inputs, safe, opts.temperature, opts.return_entropy)
    out, stats = _outputs(results, valid, opts, chunked._math_dtype(inputs[0].dtype))
    ctx.save_for_backward(*inputs, safe, valid, *stats)
    ctx.opts = opts
    ctx.set_materialize_grads(False)
    return out


def _upstream(valid, dlogp, dent, dtype):
    """Per-token upstream gradients in ``dtype``, zero on ignored rows (no gradient flows there)."""
    zero = torch.zeros((), device=valid.device, dtype=dtype)
    dl = torch.zeros(valid.shape, device=valid.device, dtype=dtype) if dlogp is None else dlogp.to(dtype)
    dl = torch.where(valid, dl, zero).contiguous()
    de = None if dent is None else torch.where(valid, dent.to(dtype), zero).contiguous()
    return dl, de


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, opts: LogprobOptions):
        return _forward(ctx, opts, (hidden, weight, bias), targets, chunked.linear_fwd, "token_logprobs_fwd")

    @staticmethod
    @once_differentiable
    def backward(ctx, dlogp, dent=None):
        hidden, weight, bias, safe, valid, *stats = ctx.saved_tensors
        opts = ctx.opts
        need_dh, need_dw, need_db = ctx.needs_input_grad[:3]
        if dlogp is None and dent is None:
            return None, None, None, None, None
        dl, de = _upstream(valid, dlogp, dent, stats[0].dtype)
        impl = _kernels().token_logprobs_bwd if opts.backend == "triton" else chunked.linear_bwd
        dh, dw, db = impl(hidden, weight, bias, safe, stats, dl, de, opts.temperature, need_dh, need_dw, need_db)
        dh = None if dh is None else dh.to(hidden.dtype)
        dw = None if dw is None else dw.to(weight.dtype)
        db = None if db is None else db.to(bias.dtype)
        return dh, dw, db, None, None


class _LogitsLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, opts: LogprobOptions):
        return _forward(ctx, opts, (logits,), targets, chunked.logits_fwd, "logits_logprobs_fwd")

    @staticmethod
    @once_differentiable
    def backward(ctx, dlogp, dent=None):
        logits, safe, valid, *stats = ctx.saved_tensors
        opts = ctx.opts
        if dlogp is None and dent is None:
            return None, None, None
        dl, de = _upstream(valid, dlogp, dent, stats[0].dtype)
        impl = _kernels().logits_logprobs_bwd if opts.backend == "triton" else chunked.logits_bwd
        dz = impl(logits, safe, stats, dl, de, opts.temperature)
        return dz, None, None


# --------------------------------------------------------------------------- validation
def _check_options(temperature, ignore_index, return_entropy):
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be positive and finite, got {temperature!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
    if not isinstance(return_entropy, bool):
        raise ValueError(f"return_entropy must be a bool, got {return_entropy!r}")


def _check_targets(targets, lead_shape, vocab, ignore_index):
    check_tensor("targets", targets, dtypes=(torch.int64,))
    if tuple(targets.shape) != tuple(lead_shape):
        raise ValueError(f"targets must have shape {tuple(lead_shape)}, got {tuple(targets.shape)}")
    # one host sync: out-of-vocabulary ids must fail loudly rather than read out of bounds
    check_index_range("targets", targets, vocab, ignore_value=ignore_index)


def _resolve(backend, device, dtype, name, op):
    if not isinstance(backend, str):
        raise ValueError(f"backend must be 'auto' or one of {list(BACKENDS)}, got {backend!r}")
    backend = dispatch.resolve(op, backend, device, BACKENDS, triton_ok=dtype in _TRITON_FLOATS)
    if backend == "triton" and dtype not in _TRITON_FLOATS:
        raise ValueError(f"{name} must be float32, bfloat16 or float16 for backend='triton', got {dtype}")
    return backend


def _finish(out, lead_shape):
    if isinstance(out, tuple):
        return tuple(o.reshape(lead_shape) for o in out)
    return out.reshape(lead_shape)


# --------------------------------------------------------------------------- public API
def token_logprobs(
    hidden, weight, targets, *, temperature=1.0, ignore_index=-100, return_entropy=False, bias=None, backend="auto"
):
    """Log-probability of each target token, without materialising [N, V] logits.

    Computes log_softmax((hidden @ weight.T + bias) / temperature)[targets] in float32.
    hidden [..., H], weight [V, H], bias [V] or None, targets [...] int64 -> logp [...] float32,
    0 where ``targets == ignore_index``. With ``return_entropy=True`` returns ``(logp, entropy)``,
    entropy [...] float32 of the tempered distribution (0 where ignored). Both are differentiable
    for hidden, weight and bias under any per-token upstream gradient; ignored rows get none.

    backend: ``"auto"`` (Triton on CUDA once it passed its self-check, see ``spiral_fast.self_check``;
    torch on CPU and for float64), ``"torch"`` (chunked, float32 math) or
    ``"triton"`` (CUDA, or CPU under TRITON_INTERPRET=1). Raises ``ValueError`` naming the argument
    on a shape/dtype/device mismatch, a target outside [0, V) other than ``ignore_index``, a
    non-positive temperature or an unknown backend.

    float16: gradients come back in float16, whose smallest subnormal is 6e-8, so train with loss
    scaling (``torch.amp.GradScaler``) as for any fp16 model; the Triton backward scales its
    gradient tiles by powers of two internally so that it loses no more than storing the exact
    gradient in float16 does. bfloat16 has float32's range and needs neither.
    """
    check_tensor("hidden", hidden, dtypes=_FLOATS)
    if hidden.dim() < 1:
        raise ValueError(f"hidden must have shape [..., H], got {tuple(hidden.shape)}")
    h = hidden.shape[-1]
    check_tensor("weight", weight, ndim=2, dtypes=(hidden.dtype,), shape=(None, h))
    vocab = weight.shape[0]
    if bias is not None:
        check_tensor("bias", bias, dtypes=(weight.dtype,), shape=(vocab,))
    check_same_device(hidden=hidden, weight=weight, targets=targets, bias=bias)
    _check_options(temperature, ignore_index, return_entropy)
    _check_targets(targets, hidden.shape[:-1], vocab, ignore_index)
    backend = _resolve(backend, hidden.device, hidden.dtype, "hidden", "token_logprobs")
    opts = LogprobOptions(float(temperature), int(ignore_index), return_entropy, backend)
    out = _TokenLogprobs.apply(hidden.reshape(-1, h), weight, bias, targets.reshape(-1), opts)
    return _finish(out, targets.shape)


def logprobs_from_logits(logits, targets, *, temperature=1.0, ignore_index=-100, return_entropy=False, backend="auto"):
    """Log-probability of each target token from logits that already exist.

    Computes log_softmax(logits / temperature)[targets] in float32, blockwise over V (no float32
    copy of the logits). logits [..., V], targets [...] int64 -> logp [...] float32 (0 where
    ignored); with ``return_entropy=True`` ``(logp, entropy)``. Differentiable for logits under
    any per-token upstream gradient. Backends and errors as for ``token_logprobs``.
    """
    check_tensor("logits", logits, dtypes=_FLOATS)
    if logits.dim() < 1:
        raise ValueError(f"logits must have shape [..., V], got {tuple(logits.shape)}")
    vocab = logits.shape[-1]
    if vocab == 0:
        raise ValueError(f"logits must have a non-empty vocabulary dim, got shape {tuple(logits.shape)}")
    check_same_device(logits=logits, targets=targets)
    _check_options(temperature, ignore_index, return_entropy)
    _check_targets(targets, logits.shape[:-1], vocab, ignore_index)
    backend = _resolve(backend, logits.device, logits.dtype, "logits", "logprobs_from_logits")
    opts = LogprobOptions(float(temperature), int(ignore_index), return_entropy, backend)
    out = _LogitsLogprobs.apply(logits.reshape(-1, vocab), targets.reshape(-1), opts)
    return _finish(out, targets.shape)


# Self-checks of the Triton paths against the torch paths (``spiral_fast.ops.self_check``).


def _check_token_logprobs(device, dtype, gen):
    # on a GPU over one 128-wide block of every kind; under the interpreter (16 x 64 x 32 blocks) small
    n, h, v = (150, 80, 300) if device.type == "cuda" else (20, 40, 130)
    targets = torch.randint(0, v, (n,), generator=gen).to(device)
    targets[3::7] = -100
    inputs = [
        randn(gen, n, h, device=device),
        randn(gen, v, h, device=device, scale=3.0 / h**0.5),
        randn(gen, v, device=device),
    ]
    upstream = [randn(gen, n, device=device).double(), randn(gen, n, device=device).double()]

    def fn(hidden, weight, bias, backend):
        return token_logprobs(hidden, weight, targets, bias=bias, temperature=0.7, return_entropy=True, backend=backend)

    compare(("logp", "entropy", "d_hidden", "d_weight", "d_bias"), dtype, *three_ways(fn, inputs, upstream, dtype))


def _check_logprobs_from_logits(device, dtype, gen):
    n, v = (29, 1100) if device.type == "cuda" else (9, 130)  # over one row block (1024 on a GPU, 64 here)
    targets = torch.randint(0, v, (n,), generator=gen).to(device)
    targets[2::5] = -100
    inputs = [randn(gen, n, v, device=device, scale=3.0)]
    upstream = [randn(gen, n, device=device).double(), randn(gen, n, device=device).double()]

    def fn(logits, backend):
        return logprobs_from_logits(logits, targets, temperature=1.3, return_entropy=True, backend=backend)

    compare(("logp", "entropy", "d_logits"), dtype, *three_ways(fn, inputs, upstream, dtype))


register_self_check("token_logprobs", _check_token_logprobs, dtypes=dot_dtypes)
register_self_check("logprobs_from_logits", _check_logprobs_from_logits)
