"""Tree attention in plain PyTorch: the spec (dense tree mask), and the per-segment form used as the
`torch` backend (the same math, at the cost of the allowed query-key pairs only).

Shapes: T packed tokens, Hq query heads, Hkv key/value heads (Hq a multiple of Hkv), D head dim.
A token of segment g attends to every token of every ancestor segment of g (its parent chain, or a
DAG's explicit ancestors) and, causally, to the tokens of g up to and including itself:
    out[i, h] = sum_j softmax_j(scale * q[i, h] . k[j, h // (Hq/Hkv)] over allowed j) v[j, h // (Hq/Hkv)]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spiral_fast.ops.tree_attention.layout import segment_contexts, segment_visibility, token_segments


def _build_dense_mask(packed) -> torch.Tensor:
    host = packed.host
    visible = segment_visibility(host)  # visible[g, h]: g's tokens may see h's tokens
    seg = token_segments(host)
    idx = torch.arange(host.num_tokens)
    causal = idx[None, :] <= idx[:, None]
    same = seg[:, None] == seg[None, :]
    mask = visible[seg[:, None], seg[None, :]] & (~same | causal)
    return mask.to(packed.device)


def tree_mask(packed) -> torch.Tensor:
    """[T, T] bool on packed's device: mask[i, j] is True iff query token i may attend to key token j.

    Built from the ancestor lists alone (parent pointers, or a DAG's `segment_ancestors`), not from
    the DFS-order shortcuts the kernels use; cached.
    """
    return packed.cached(("tree_attention", "dense_mask"), _build_dense_mask)


def tree_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed, scale: float) -> torch.Tensor:
    """The spec: SDPA over all T tokens with the dense [T, T] tree mask (memory O(T^2)).

    q [T, Hq, D], k/v [T, Hkv, D] -> out [T, Hq, D] in q's dtype; differentiable via autograd.
    """
    # 4-D inputs (batch of 1): PyTorch routes 3-D ones to its unfused math kernel on the CPU
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        attn_mask=tree_mask(packed),
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return out[0].transpose(0, 1)


def tree_attention_segments(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed, scale: float) -> torch.Tensor:
    """Per segment g: queries = its L_g tokens, keys = the C_g tokens of its ancestors and itself
    (a gathered copy), causal attention aligned bottom-right. Cost and memory follow the allowed pairs.

    q [T, Hq, D], k/v [T, Hkv, D] -> out [T, Hq, D] in q's dtype; differentiable via autograd.
    """
    ctx = segment_contexts(packed)
    gqa = q.shape[1] != k.shape[1]
    # [1, H, tokens, D]: 4-D inputs reach SDPA's fused CPU kernel (3-D ones take the math path)
    kc = k.index_select(0, ctx.ctx_index).transpose(0, 1)[None]
    vc = v.index_select(0, ctx.ctx_index).transpose(0, 1)[None]
    qt = q.transpose(0, 1)[None]
    # split, not slice: the backward of G slices zero-fills G full-size gradients, that of split
    # concatenates once
    q_lens = [qe - qs for qs, qe, _, _ in ctx.seg_slices]
    c_lens = [ce - cs for _, _, cs, ce in ctx.seg_slices]
    outs = [
        # causal aligned bottom-right: a root segment is plain causal attention, others need the mask
        F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=gqa)
        for qg, kg, vg, mask in zip(qt.split(q_lens, 2), kc.split(c_lens, 2), vc.split(c_lens, 2), ctx.masks)
    ]
    return torch.cat(outs, dim=2)[0].transpose(0, 1)
