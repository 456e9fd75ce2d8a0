"""`triton` backend: autograd Function over the block-table kernels in `spiral_fast/kernels/tree_attention.py`."""
from __future__ import annotations

import os

import torch

from spiral_fast._utils import triton_interpreting
from spiral_fast.ops.tree_attention.layout import block_tables

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def configs(head_dim: int, dtype: torch.dtype, interpret: bool | None = None) -> list[tuple[dict, dict]]:
    """Every (forward, backward) launch config the backend can choose for this head dim and dtype;
    the first is the default. Small blocks under the CPU interpreter."""
    if triton_interpreting() if interpret is None else interpret:
        small = dict(block_m=16, block_n=16, num_warps=1, num_stages=1)
        return [(small, small)]
    if dtype == torch.float32:
        # IEEE float32 dots run on FMA units with their operands in registers: only small tiles avoid
        # spills on sm_90 (64 x 32 spilled 31 KB/thread at D = 128). fp32 is the exactness path of the
        # tests, not a fast path.
        return [(dict(block_m=32, block_n=16, num_warps=8, num_stages=1),
                 dict(block_m=16, block_n=16, num_warps=8 if head_dim > 128 else 4, num_stages=1))]
    if head_dim > 128:
        # wide heads need smaller blocks to fit shared memory and registers
        return [(dict(block_m=64, block_n=32, num_warps=4, num_stages=1),
                 dict(block_m=32, block_n=32, num_warps=4, num_stages=1))]
    # the forward keeps one q tile and one accumulator per program: a tall query block amortises the
    # K/V loads; the backward holds two fp32 accumulators per program, so smaller tiles. Chosen by
    # compiling for sm_90 offline (``python -m spiral_fast.kernels.compile_check``): wgmma, no spills.
    # The backward's two stages overlap the next block's loads with this block's dots (its loads
    # depend on the token range read from the block list, so one stage leaves them exposed); one stage is
    # kept as the A/B peer (SPIRAL_FAST_TREE_BWD_STAGES=1). 32-row key blocks: with the GQA group loop
    # inside the dK/dV program, 64-row ones spilled 112 B (two stages) to 312 B (one stage) at D = 128.
    # Not yet timed on a GPU.
    fwd = dict(block_m=128, block_n=64, num_warps=8, num_stages=3)
    bwd = [dict(block_m=64, block_n=32, num_warps=8, num_stages=stages) for stages in (2, 1)]
    if _bwd_stages() == 1:
        bwd.reverse()
    return [(fwd, b) for b in bwd]


def _bwd_stages() -> int:
    value = os.environ.get("SPIRAL_FAST_TREE_BWD_STAGES", "2")
    if value not in ("1", "2"):
        raise ValueError(f"SPIRAL_FAST_TREE_BWD_STAGES must be 1 or 2, got {value!r}")
    return int(value)


def _configs(head_dim: int, dtype: torch.dtype) -> tuple[dict, dict]:
    return configs(head_dim, dtype)[0]


def _table_args(tables, reverse: bool):
    args = [tables.q_start, tables.q_end, tables.q_ptr, tables.q_mid, tables.kv_list_start, tables.kv_list_end]
    rev = [tables.k_start, tables.k_end, tables.k_ptr, tables.k_mid, tables.q_list_start, tables.q_list_end]
    return args + rev if reverse else args


class _TreeAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, packed, scale):
        from spiral_fast.kernels.tree_attention import tree_attention_fwd

        fwd, bwd = _configs(q.shape[-1], q.dtype)
        tables = block_tables(packed, fwd["block_m"], fwd["block_n"])
        o, lse = tree_attention_fwd(q, k, v, *_table_args(tables, False), scale, **fwd)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.packed, ctx.scale, ctx.bwd = packed, scale, bwd
        return o

    @staticmethod
    def backward(ctx, do):
        from spiral_fast.kernels.tree_attention import tree_attention_bwd

        q, k, v, o, lse = ctx.saved_tensors
        tables = block_tables(ctx.packed, ctx.bwd["block_m"], ctx.bwd["block_n"])
        dq, dk, dv = tree_attention_bwd(do, q, k, v, o, lse, *_table_args(tables, True), ctx.scale, **ctx.bwd)
        return dq, dk, dv, None, None


def tree_attention_triton(q, k, v, packed, scale: float) -> torch.Tensor:
    """q [T, Hq, D], k/v [T, Hkv, D] (float32/float16/bfloat16) -> out [T, Hq, D]; forward and backward
    in Triton, walking host-built block tables (cached in `packed`)."""
    if q.dtype not in _DTYPES:
        raise ValueError(f"backend='triton' supports q dtypes {[str(d) for d in _DTYPES]}, got {q.dtype}")
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    return _TreeAttention.apply(q, k, v, packed, scale)
