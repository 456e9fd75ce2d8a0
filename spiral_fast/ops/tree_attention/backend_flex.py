"""`flex` backend: FlexAttention with a BlockMask derived from the tree (built once per batch).

Mask: key j is visible to query i iff j <= i < token_subtree_end[j] (segments are in DFS pre-order,
so the tokens that may see j are j itself, the rest of its segment after it, and its segment's
subtree). A DAG batch (parallel-encoded aggregation) has no such intervals: there the mask reads a
[G, G] segment visibility at (segment of i, segment of j), with j <= i for causality. On CUDA the
attention is compiled (the eager path materialises scores); on the CPU only the forward exists in
PyTorch."""

from __future__ import annotations

import functools

import torch

from spiral_fast.ops.tree_attention.layout import segment_visibility, token_segments, token_subtree_end


def _build_block_mask(packed):
    from torch.nn.attention.flex_attention import create_block_mask

    t = packed.num_tokens
    if packed.is_dag:
        visible = segment_visibility(packed).to(packed.device)
        seg = token_segments(packed).to(packed.device)

        def dag_mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) & visible[seg[q_idx], seg[kv_idx]]

        return create_block_mask(dag_mask_mod, None, None, t, t, device=packed.device)
    end = token_subtree_end(packed).to(torch.int64)

    def tree_mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx < end[kv_idx])

    return create_block_mask(tree_mask_mod, None, None, t, t, device=packed.device)


def tree_block_mask(packed):
    """FlexAttention `BlockMask` of the batch on its device (cached in `packed`)."""
    return packed.cached(("tree_attention", "flex_block_mask"), _build_block_mask)


@functools.cache
def _flex_fn(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention) if compiled else flex_attention


def tree_attention_flex(q, k, v, packed, scale: float) -> torch.Tensor:
    """q [T, Hq, D], k/v [T, Hkv, D] -> out [T, Hq, D]; differentiable on CUDA (forward-only on CPU)."""
    fn = _flex_fn(q.device.type == "cuda")
    out = fn(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        block_mask=tree_block_mask(packed),
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return out[0].transpose(0, 1)
