"""The C++ layout builder (`spiral_fast._native`, built from csrc/packing.cpp) with a fallback to
the pure-Python reference when the extension was not compiled. Both return the same layout."""
from __future__ import annotations

import functools

import torch

from spiral_fast.packing import reference


@functools.lru_cache(maxsize=None)
def _native():
    try:
        from spiral_fast import _native
    except ImportError:  # no compiler at install time: same results, slower
        return None
    return _native


def native_available() -> bool:
    """Whether the compiled builder is importable."""
    return _native() is not None


def trie_layout(flat_tokens: torch.Tensor, offsets: torch.Tensor, *, builder: str = "auto"):
    """Layout of S sequences (`flat_tokens [N] int64`, `offsets [S+1] int64`) as in
    `reference.trie_layout`: (token_index [N], cu_seqlens [G+1], segment_parent [G], seq_segment [S]).

    builder: "auto" (C++ when built, else Python), "cpp" or "python".
    """
    if builder not in ("auto", "cpp", "python"):
        raise ValueError(f"builder must be 'auto', 'cpp' or 'python', got {builder!r}")
    mod = None if builder == "python" else _native()
    if mod is None:
        if builder == "cpp":
            raise ValueError("builder='cpp' but spiral_fast._native is not built (pip install -e . rebuilds it)")
        return reference.trie_layout(flat_tokens, offsets)
    arrays = mod.trie_layout(flat_tokens.contiguous().numpy(), offsets.contiguous().numpy())
    return tuple(torch.from_numpy(a) for a in arrays)
