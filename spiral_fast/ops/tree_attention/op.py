"""`tree_attention`: attention over a prefix-shared packed batch (validation and backend dispatch).

The packed batch is a `PackedBatch` (`spiral_fast.ops.packed`, the container; `spiral_fast.pack_sequences`
builds it, one layer up). The op's self-check is registered here, beside the op, on a layout written out
segment by segment (`_check_layout`), so that checking it needs no packer.
"""

from __future__ import annotations

import math

import torch

from spiral_fast._utils import check_same_device, check_tensor
from spiral_fast.ops import dispatch
from spiral_fast.ops.packed import PackedBatch, assemble
from spiral_fast.ops.self_check import compare, dot_dtypes, randn, register_self_check, three_ways
from spiral_fast.ops.tree_attention.backend_flex import tree_attention_flex
from spiral_fast.ops.tree_attention.backend_triton import tree_attention_triton
from spiral_fast.ops.tree_attention.backend_varlen import tree_attention_varlen
from spiral_fast.ops.tree_attention.reference import tree_attention_segments

BACKENDS = ("torch", "varlen", "flex", "triton")
_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _validate(q, k, v, packed, scale):
    if not isinstance(packed, PackedBatch):
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


def tree_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed, *, scale: float | None = None, backend: str = "auto"
) -> torch.Tensor:
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


# Self-check of the Triton path against the torch path (``spiral_fast.ops.self_check``).
def _check_layout(segments: list[list[int]], parents: list[int], seq_segment: list[int]) -> PackedBatch:
    """The `PackedBatch` of a tree given segment by segment, in DFS pre-order (parents[g] < g, -1 for a
    root): sequence i is the tokens of the segments on the path root -> seq_segment[i]. What
    `pack_sequences` gives for those sequences (tests/test_self_check.py holds them equal); written out
    here so that the ops layer checks its op without the packer above it."""
    starts, cu = [], [0]
    for g, seg in enumerate(segments):
        starts.append(0 if parents[g] < 0 else starts[parents[g]] + len(segments[parents[g]]))
        cu.append(cu[-1] + len(seg))
    paths = []
    for last in seq_segment:
        path = [last]
        while parents[path[-1]] >= 0:
            path.append(parents[path[-1]])
        paths.append(path[::-1])
    idx = [[t for g in path for t in range(cu[g], cu[g + 1])] for path in paths]
    tokens = [[tok for g in path for tok in segments[g]] for path in paths]
    rows = [(ix[p - 1], tok[p], i, p) for i, (ix, tok) in enumerate(zip(idx, tokens)) for p in range(1, len(tok))]
    as_tensor = lambda xs, dtype=torch.int64: torch.tensor(xs, dtype=dtype)  # noqa: E731
    fields = (
        as_tensor([t for seg in segments for t in seg]),
        as_tensor([s0 + j for s0, seg in zip(starts, segments) for j in range(len(seg))]),
        as_tensor(cu, torch.int32),
        as_tensor(parents),
        as_tensor(seq_segment),
        *(as_tensor(list(col)) for col in zip(*rows)),
    )
    return assemble(fields, as_tensor([len(t) for t in tokens]), "trie")


def check_case(device: torch.device) -> PackedBatch:
    """The self-check's batch: a shared prompt with three branches (one a single token) and an
    unrelated sequence, each segment over one (64-token on a GPU) block of every kind."""
    long = 150 if device.type == "cuda" else 30
    segments = [list(range(1, long)), [50, 51, 52], [60] * long, [70], [80] * 25]
    return _check_layout(segments, [-1, 0, 0, 0, -1], [1, 2, 3, 4])


def _check_tree_attention(device, dtype, gen):
    packed = check_case(device).to(device)
    t, hq, hkv, d = packed.num_tokens, 4, 2, 64
    inputs = [
        randn(gen, t, hq, d, device=device),
        randn(gen, t, hkv, d, device=device),
        randn(gen, t, hkv, d, device=device),
    ]
    upstream = [randn(gen, t, hq, d, device=device).double()]

    def fn(q, k, v, backend):
        return tree_attention(q, k, v, packed, backend=backend)

    compare(("out", "dq", "dk", "dv"), dtype, *three_ways(fn, inputs, upstream, dtype))


register_self_check("tree_attention", _check_tree_attention, dtypes=dot_dtypes)
