"""`varlen` backend: per segment, queries = its tokens, keys = its ancestors' tokens then its own
(gathered once per call through the cached host-built index), causal attention aligned bottom-right,
through FlashAttention varlen (`flash_attn` when installed, else PyTorch's `varlen_attn`). CUDA only."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import math

import torch

from spiral_fast.ops.tree_attention.layout import segment_contexts


@functools.cache
def _varlen_impl():
    """("flash_attn", fn) when flash-attn is installed, else ("torch", varlen_attn, its parameter names)."""
    if importlib.util.find_spec("flash_attn") is not None:
        from flash_attn import flash_attn_varlen_func

        return "flash_attn", flash_attn_varlen_func, ()
    from torch.nn.attention.varlen import varlen_attn

    return "torch", varlen_attn, tuple(inspect.signature(varlen_attn).parameters)


def tree_attention_varlen(q, k, v, packed, scale: float) -> torch.Tensor:
    """q [T, Hq, D], k/v [T, Hkv, D] (float16/bfloat16, CUDA) -> out [T, Hq, D]; differentiable."""
    if q.device.type != "cuda":
        raise ValueError(
            f"backend='varlen' needs CUDA tensors (FlashAttention varlen has no CPU kernel), "
            f"got q on {q.device}; use backend='torch' or 'auto' on the CPU"
        )
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"backend='varlen' needs float16 or bfloat16 q (FlashAttention), got {q.dtype}")
    ctx = segment_contexts(packed)
    kc = k.index_select(0, ctx.ctx_index)
    vc = v.index_select(0, ctx.ctx_index)
    cu_q = packed.cu_seqlens
    kind, fn, params = _varlen_impl()
    if kind == "flash_attn":
        # flash-attn >= 2.1 aligns the causal mask bottom-right when seqlen_q < seqlen_k: what we need
        return fn(
            q, kc, vc, cu_q, ctx.cu_ctx, packed.max_seqlen, ctx.max_ctx, dropout_p=0.0, softmax_scale=scale, causal=True
        )
    kwargs = {}
    if "window_size" in params:
        kwargs["window_size"] = (-1, 0)  # causal, aligned bottom-right (FlashAttention's convention)
    else:
        kwargs["is_causal"] = True
    if "scale" in params:
        kwargs["scale"] = scale
    else:  # older torch: fold the scale into q (softmax((c q) k^T / sqrt(D)) with c = scale sqrt(D))
        q = q * (scale * math.sqrt(q.shape[-1]))
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            group = q.shape[1] // k.shape[1]
            kc, vc = kc.repeat_interleave(group, dim=1), vc.repeat_interleave(group, dim=1)
    return fn(q, kc, vc, cu_q, ctx.cu_ctx, packed.max_seqlen, ctx.max_ctx, **kwargs)
