"""Self-check registry: each op registers, next to its definition, a check of its Triton path
against its torch path on small random inputs; ``check_op`` runs one on one device.

``register_self_check(op, check, dtypes=...)``: ``check(device, dtype, gen)`` builds inputs from the
seeded generator ``gen`` and raises ``Mismatch`` (via ``compare``) when the Triton path is off.
Outputs and gradients (random upstream gradients on every output) of ``backend="triton"`` are
compared with float64 truth from ``backend="torch"`` under the accuracy rule of docs/testing.md:
``|triton - truth| <= 2 |torch in the dtype - truth| + floor``. A kernel that raises gives
``"error: ..."``, one outside the tolerance ``"mismatch: ..."``. Inputs come from a private seeded
generator (the caller's RNG stream is untouched); gradients are enabled and autocast is off inside.

Under the CPU interpreter bf16 ``tl.dot`` is wrong (docs/platform_notes.md), so on a CPU the
dot-based ops register ``dtypes=dot_dtypes`` and are checked in float32 and float16 only.

This module imports no op: ``backend="auto"`` (``dispatch``) looks up the check of the op that is
resolving, whose module has therefore registered it. ``self_check`` here checks the ops registered
so far; ``spiral_fast.self_check()`` (``spiral_fast.ops.checks``) first imports every op module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

_FLOOR = 1e-4  # relative to the truth's largest magnitude: float32 kernels differ from it by ~1e-6

Check = Callable[[torch.device, torch.dtype, torch.Generator], None]


class Mismatch(Exception):
    """Raised by a check when the Triton path is outside the tolerance."""


def every_dtype(device: torch.device) -> tuple[torch.dtype, ...]:
    return (torch.float32, torch.float16, torch.bfloat16)


def dot_dtypes(device: torch.device) -> tuple[torch.dtype, ...]:
    """Dtypes of an op built on ``tl.dot``: no bfloat16 under the CPU interpreter."""
    return every_dtype(device) if device.type == "cuda" else (torch.float32, torch.float16)


def float32_only(device: torch.device) -> tuple[torch.dtype, ...]:
    return (torch.float32,)


_REGISTRY: dict[str, tuple[Check, Callable[[torch.device], Sequence[torch.dtype]]]] = {}


def register_self_check(
    op: str, check: Check, *, dtypes: Callable[[torch.device], Sequence[torch.dtype]] = every_dtype
) -> None:
    """Register ``check`` as the self-check of ``op`` (run over ``dtypes(device)``); a module that is
    imported again replaces its own entry."""
    _REGISTRY[op] = (check, dtypes)


def registered() -> tuple[str, ...]:
    """The ops with a registered self-check, in registration order."""
    return tuple(_REGISTRY)


def self_check(device=None) -> dict[str, str]:
    """``{op: check_op(op, device)}`` for every registered op (those whose modules are imported);
    ``device`` defaults to ``default_device()``. ``spiral_fast.self_check`` imports all of them first."""
    device = default_device() if device is None else torch.device(device)
    return {op: check_op(op, device) for op in registered()}


def check_op(op: str, device: torch.device) -> str:
    """Self-check status of one registered op on ``device``: ``"ok" | "mismatch: ..." | "error: ..."``.

    Raises ``ValueError`` for an op with no registered check (its module was not imported).
    """
    if op not in _REGISTRY:
        raise ValueError(f"op must be one of {list(_REGISTRY)} (the ops whose modules are imported), got {op!r}")
    check, dtypes = _REGISTRY[op]
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    dtypes = tuple(dtypes(device))
    dtype = dtypes[0]
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            for dtype in dtypes:
                check(device, dtype, gen)
    except Mismatch as exc:
        return f"mismatch: {exc}"
    except Exception as exc:  # noqa: BLE001 - any failure of the kernel path is the finding
        return f"error: {dtype_name(dtype)}: {type(exc).__name__}: {exc}"
    return "ok"


def default_device() -> torch.device:
    """The current CUDA device, else the CPU (where Triton needs TRITON_INTERPRET=1 set before import)."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def randn(gen: torch.Generator, *shape, device, scale: float = 1.0) -> torch.Tensor:
    """Standard normal draws from ``gen`` (on the CPU, then moved), times ``scale``."""
    return torch.randn(*shape, generator=gen).mul_(scale).to(device)


def compare(what: Sequence[str], dtype, fast, truth, lowp, *, mult: float = 2.0) -> None:
    """The accuracy rule on each (fast, truth, low-precision torch) triple; raises ``Mismatch``
    naming the first that fails."""
    for name, f, t, low in zip(what, fast, truth, lowp):
        if f.shape != t.shape:
            raise Mismatch(f"{dtype_name(dtype)} {name}: shape {tuple(f.shape)} != {tuple(t.shape)}")
        t = t.double()
        err = float((f.double() - t).abs().max()) if f.numel() else 0.0
        tol = mult * (float((low.double() - t).abs().max()) if low.numel() else 0.0)
        tol += _FLOOR * (float(t.abs().max()) if t.numel() else 0.0) + 1e-7
        if not err <= tol:  # also catches NaN
            raise Mismatch(f"{dtype_name(dtype)} {name}: max error {err:.3g} > tolerance {tol:.3g}")


def _run(fn, leaves, upstream):
    """Outputs of ``fn(*leaves)`` and the gradients of sum(out * upstream) for every leaf."""
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    loss = sum((o.double() * u).sum() for o, u in zip(outs, upstream))
    grads = torch.autograd.grad(loss, leaves)
    return [o.detach() for o in outs] + list(grads)


def three_ways(fn, inputs, upstream, dtype):
    """Outputs and input gradients of ``fn(*leaves, backend=...)`` on (triton, dtype),
    (torch, float64) and (torch, dtype) leaves: the (fast, truth, lowp) arguments of ``compare``."""

    def leaves(dt):
        return [x.detach().to(dt).requires_grad_() for x in inputs]

    return (
        _run(lambda *a: fn(*a, backend="triton"), leaves(dtype), upstream),
        _run(lambda *a: fn(*a, backend="torch"), leaves(torch.float64), upstream),
        _run(lambda *a: fn(*a, backend="torch"), leaves(dtype), upstream),
    )
