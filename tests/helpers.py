"""Shared test helpers (imported by test modules as ``from helpers import ...``)."""
from __future__ import annotations

import torch


def assert_within_tolerance(out, ref64, ref_lowp, *, mult: float = 2.0, floor: float = 1e-6, name: str = "out"):
    """STYLE.md's accuracy rule: the fast path's error against float64 truth may be at most
    ``mult`` times plain PyTorch's own error in the op's dtype, plus ``floor``."""
    out = out.double()
    ref64 = ref64.double()
    ref_lowp = ref_lowp.double()
    err = (out - ref64).abs().max().item() if out.numel() else 0.0
    base = (ref_lowp - ref64).abs().max().item() if out.numel() else 0.0
    bound = mult * base + floor
    assert err <= bound, f"{name}: max abs error {err:.3e} > {mult} * torch error {base:.3e} + {floor:.1e}"


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a torch.distributed rendezvous (MASTER_PORT)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
