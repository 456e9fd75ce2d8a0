"""Backend choice of the public ops, with a self-check before ``backend="auto"`` trusts Triton.

``resolve(op, backend, device, choices)`` maps ``"auto"`` to a concrete backend. Where auto would pick
Triton (CUDA tensors, Triton installed), the op's Triton path is first checked once per process
against its torch path on small random inputs, by the check its module registered with
``spiral_fast.ops.self_check``; an op that errors or mismatches (or has no registered check) gets one
``RuntimeWarning`` naming it and the reason, and runs on torch from then on.
``SPIRAL_FAST_SELF_CHECK=0`` skips the check. Explicit backends are never second-guessed.

``recording()`` collects which backend each op resolved to (the step reports it in its metrics).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence

import torch

from spiral_fast._utils import resolve_backend, triton_available
from spiral_fast.ops import self_check

_STATUS: dict[str, str] = {}  # op -> self-check status ("ok" | "mismatch: ..." | "error: ..."), per process
_RECORDERS: list[dict] = []


def prefers_triton(device: torch.device, choices: Sequence[str]) -> bool:
    """Whether ``"auto"`` would run Triton on ``device`` (replaced in tests to take the CUDA path on a CPU)."""
    return device.type == "cuda" and "triton" in choices and triton_available()


def self_check_enabled() -> bool:
    return os.environ.get("SPIRAL_FAST_SELF_CHECK", "1").strip() != "0"


def resolve(op: str, backend: str, device: torch.device, choices: Sequence[str], *, triton_ok: bool = True) -> str:
    """Concrete backend of ``op`` for ``backend`` ("auto" or one of ``choices``) on ``device``.

    ``triton_ok=False`` (an input dtype the Triton path does not take) makes auto pick torch.
    Raises ``ValueError`` as ``resolve_backend`` does for an unknown or unusable explicit backend.
    """
    if backend == "auto" and prefers_triton(device, choices):
        chosen = "triton" if triton_ok and _triton_trusted(op, device) else "torch"
    else:
        chosen = resolve_backend(backend, device, choices)
    for record in _RECORDERS:
        record[op] = chosen
    return chosen


def _triton_trusted(op: str, device: torch.device) -> bool:
    if not self_check_enabled():
        return True
    if op not in _STATUS:
        if op in self_check.registered():
            status = self_check.check_op(op, device)
        else:
            status = f"error: no self-check registered for {op}"
        _STATUS[op] = status
        if status != "ok":
            warnings.warn(
                f"spiral_fast: the Triton path of {op} failed its self-check on {device} ({status}); "
                f"backend='auto' runs {op} on torch from now on in this process "
                "(SPIRAL_FAST_SELF_CHECK=0 skips the check)",
                RuntimeWarning,
                stacklevel=4,
            )
    return _STATUS[op] == "ok"


def reset() -> None:
    """Forget the self-check results (the next auto call of each op checks it again)."""
    _STATUS.clear()


@contextlib.contextmanager
def recording():
    """``with recording() as used:`` -> ``used`` maps each op resolved inside the block to its backend."""
    used: dict[str, str] = {}
    _RECORDERS.append(used)
    try:
        yield used
    finally:
        _RECORDERS.remove(used)
