"""What every launcher needs around a kernel launch: the tensors' CUDA device and torch's TF32 switch.

Imports torch only (no triton), so the dispatch code can call these without importing a kernel.
"""

from __future__ import annotations

import contextlib

import torch


def device_guard(device: torch.device):
    """Context that makes ``device`` the current CUDA device for the launches inside it.

    Triton launches on the *current* device: tensors on ``cuda:1`` while the current device is 0
    (``device_map="auto"``, one rank driving two GPUs) would otherwise fault. CPU tensors (the
    interpreter) need no guard.
    """
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def cuda_matmul_allows_tf32() -> bool:
    """Whether torch's float32 CUDA matmuls may use TF32, under both of torch's flag APIs.

    Reading the legacy ``torch.backends.cuda.matmul.allow_tf32`` raises RuntimeError ("mix of the
    legacy and new APIs") once a user has set the current ``fp32_precision`` API, so the current API
    is read first; ``"none"`` there means "inherit", from ``torch.backends.fp32_precision``, and a
    flag left at its default on both levels falls back to the legacy read (torch < 2.9 has only it).
    """
    matmul = torch.backends.cuda.matmul
    try:
        precision = getattr(matmul, "fp32_precision", None)
        if precision in (None, "none"):
            precision = getattr(torch.backends, "fp32_precision", None)
    except RuntimeError:
        precision = None
    if precision == "tf32":
        return True
    if precision == "ieee":
        return False
    try:
        return bool(matmul.allow_tf32)
    except RuntimeError:
        # a mixed state that neither API resolves: ieee is never less exact than the user asked for
        return False
