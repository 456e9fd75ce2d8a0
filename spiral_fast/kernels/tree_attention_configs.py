"""Launch configs of the tree-attention kernels (``spiral_fast.kernels.tree_attention``).

Imports torch only (no triton), so the op's backend and ``compile_check`` read the configs without
importing a kernel.
"""

from __future__ import annotations

import os

import torch

from spiral_fast._utils import triton_interpreting


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
        return [
            (
                dict(block_m=32, block_n=16, num_warps=8, num_stages=1),
                dict(block_m=16, block_n=16, num_warps=8 if head_dim > 128 else 4, num_stages=1),
            )
        ]
    if head_dim > 128:
        # wide heads need smaller blocks to fit shared memory and registers
        return [
            (
                dict(block_m=64, block_n=32, num_warps=4, num_stages=1),
                dict(block_m=32, block_n=32, num_warps=4, num_stages=1),
            )
        ]
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
