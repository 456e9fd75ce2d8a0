"""The C++ layout builder (`spiral_fast._native`, built from csrc/packing.cpp) with a fallback to
the pure-Python reference when the extension was not compiled. Both return the same fields."""
from __future__ import annotations

import torch

from spiral_fast.packing import reference

try:
    from spiral_fast import _native as _extension
except ImportError:  # no compiler at install time: same results, slower
    _extension = None


def _native():
    """The compiled extension, or None; one left over from an older build (before `pip install -e .`
    rebuilt it) is not used."""
    return _extension if hasattr(_extension, "pack_layout") else None


def native_available() -> bool:
    """Whether the compiled builder is importable."""
    return _native() is not None


def pack_layout(sequences: list[torch.Tensor], share: bool, *, builder: str = "auto"):
    """PackedBatch fields for validated sequences (1-D int64 CPU tensors), as in
    `reference.pack_layout`. builder: "auto" (C++ when built, else Python), "cpp" or "python"."""
    if builder not in ("auto", "cpp", "python"):
        raise ValueError(f"builder must be 'auto', 'cpp' or 'python', got {builder!r}")
    mod = None if builder == "python" else _native()
    if mod is None:
        if builder == "cpp":
            raise ValueError("builder='cpp' but spiral_fast._native is not built (pip install -e . rebuilds it)")
        return reference.pack_layout(sequences, share)
    arrays = mod.pack_layout([s.numpy() for s in sequences], share)  # zero-copy views of the tensors
    return tuple(torch.from_numpy(a) for a in arrays)
