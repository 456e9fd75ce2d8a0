"""`tree_attention`: attention over a prefix-shared packed batch (validation and backend dispatch).

The packed batch is a `spiral_fast.packing.PackedBatch`; the packing layer sits above this one, so it
is recognised here by the attributes the backends read (`num_tokens`, `device`, `host`, `cached`), not
imported. Its self-check is registered in `spiral_fast.packing.self_check`, next to the packer that
builds its inputs (importing `spiral_fast.packing` registers it).
"""
from __future__ import annotations

import math

import torch

from spiral_fast._utils import check_same_device, check_tensor
from spiral_fast.ops import dispatch
from spiral_fast.ops.tree_attention.backend_flex import tree_attention_flex
from spiral_fast.ops.tree_attention.backend_triton import tree_attention_triton
from spiral_fast.ops.tree_attention.backend_varlen import tree_attention_varlen
from spiral_fast.ops.tree_attention.reference import tree_attention_segments

BACKENDS = ("torch", "varlen", "flex", "triton")
_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_PACKED_ATTRS = ("num_tokens", "device", "host", "cached")   # what the backends read of a PackedBatch


def _validate(q, k, v, packed, scale):
    if not all(hasattr(packed, name) for name in _PACKED_ATTRS):
        raise ValueError(f"packed must be a PackedBatch (from spiral_fast.pack_sequences), got {type(packed).__name__}")
    check_tensor("q", q, ndim=3, dtypes=_DTYPES)
    t, hq, d = q.shape
    check_tensor("k", k, ndim=3, dtypes=_DTYPES)
    check_tensor("v", v, shape=tuple(k.shape))
    if t != packed.num_tokens:
        raise ValueError(f"q has {t} tokens but packed.num_tokens is {packed.num_tokens}")
    if k.shape[0] != t:
        raise ValueError(f"k must have q's {t} tokens, got shape {tuple(k.shape)}")
    if k.shape[2] != d:
        raise ValueError(f"k must have q's head dim {d}, got shape {tuple(k.shape)}")
    if k.shape[1] == 0 or hq % k.shape[1] != 0:
        raise ValueError(f"q's {hq} heads must be a multiple of k's {k.shape[1]} heads (GQA)")
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise ValueError(f"{name} must have q's dtype {q.dtype}, got {x.dtype}")
    check_same_device(q=q, k=k, v=v)
    if packed.device != q.device:
        raise ValueError(f"packed is on {packed.device} but q is on {q.device}: call packed.to(q.device)")
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number or None, got {scale!r}")
    return float(scale)


def tree_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed, *, scale: float | None = None,
                   backend: str = "auto") -> torch.Tensor:
    """Attention over a prefix-shared packed batch: every token attends to all tokens of its ancestor
    segments and, causally, to its own segment's tokens up to itself (nothing else).

    q [T, Hq, D], k and v [T, Hkv, D] (Hq a multiple of Hkv: GQA), packed: the `PackedBatch` of the T
    tokens, on q's device. Returns out [T, Hq, D] in q's dtype. scale defaults to 1/sqrt(D).
    backend: "auto" (triton on CUDA once it passed its self-check, see `spiral_fast.self_check`; torch on
    CPU and for float64), "torch" (per-segment SDPA; CPU and GPU), "varlen"
    (FlashAttention varlen over gathered ancestor contexts; CUDA), "flex" (FlexAttention with a tree
    BlockMask; CUDA, forward-only on CPU), "triton" (block-table kernels, forward and backward).
    Layouts are built on the host once per batch and cached in `packed`.
    """
    scale = _validate(q, k, v, packed, scale)
    backend = dispatch.resolve("tree_attention", backend, q.device, BACKENDS, triton_ok=q.dtype != torch.float64)
    if backend == "torch":
        return tree_attention_segments(q, k, v, packed, scale)
    if backend == "varlen":
        return tree_attention_varlen(q, k, v, packed, scale)
    if backend == "flex":
        return tree_attention_flex(q, k, v, packed, scale)
    return tree_attention_triton(q, k, v, packed, scale)
