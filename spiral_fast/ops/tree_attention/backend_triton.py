"""`triton` backend: autograd Function over the block-table kernels in `spiral_fast/kernels/tree_attention.py`."""

from __future__ import annotations

import torch

from spiral_fast.kernels.tree_attention_configs import configs
from spiral_fast.ops.tree_attention.layout import block_tables

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _configs(head_dim: int, dtype: torch.dtype) -> tuple[dict, dict]:
    return configs(head_dim, dtype)[0]


def _table_args(tables, reverse: bool):
    args = [tables.q_start, tables.q_end, tables.q_ptr, tables.q_mid, tables.kv_list_start, tables.kv_list_end]
    rev = [tables.k_start, tables.k_end, tables.k_ptr, tables.k_mid, tables.q_list_start, tables.q_list_end]
    return args + rev if reverse else args


def _kernels():
    from spiral_fast.kernels import tree_attention as kernels  # Triton is imported only when asked for

    return kernels


class _TreeAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, packed, scale):
        fwd, bwd = _configs(q.shape[-1], q.dtype)
        tables = block_tables(packed, fwd["block_m"], fwd["block_n"])
        o, lse = _kernels().tree_attention_fwd(q, k, v, *_table_args(tables, False), scale, **fwd)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.packed, ctx.scale, ctx.bwd = packed, scale, bwd
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        tables = block_tables(ctx.packed, ctx.bwd["block_m"], ctx.bwd["block_n"])
        dq, dk, dv = _kernels().tree_attention_bwd(
            do, q, k, v, o, lse, *_table_args(tables, True), ctx.scale, **ctx.bwd
        )
        return dq, dk, dv, None, None


def tree_attention_triton(q, k, v, packed, scale: float) -> torch.Tensor:
    """q [T, Hq, D], k/v [T, Hkv, D] (float32/float16/bfloat16) -> out [T, Hq, D]; forward and backward
    in Triton, walking host-built block tables (cached in `packed`)."""
    if q.dtype not in _DTYPES:
        raise ValueError(f"backend='triton' supports q dtypes {[str(d) for d in _DTYPES]}, got {q.dtype}")
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    return _TreeAttention.apply(q, k, v, packed, scale)
