"""CUDA backends of tree_attention (triton, flex, varlen) against the dense-mask reference, in bf16 and
fp16 (and fp32 where the backend supports it), values and gradients under a random upstream gradient.
Auto-skipped without CUDA."""
from __future__ import annotations

import pytest
import torch
from packing_cases import random_forest
from test_tree_attention import FORESTS, check_backend_against_reference, make_inputs

import spiral_fast

# larger forests than the CPU ones: long shared prefixes, partial blocks, GQA, head dims 64 and 128
FORESTS_GPU = {**FORESTS, **{
    "gpu-shared-d64": (random_forest(11, num_seqs=24, vocab=3, max_len=300), "trie", 8, 2, 64),
    "gpu-shared-d128": (random_forest(12, num_seqs=16, vocab=2, max_len=200, share_prob=0.9), "trie", 4, 1, 128),
    "gpu-unshared-d96": (random_forest(13, num_seqs=8, vocab=100, max_len=150), "none", 4, 4, 96),
}}
GPU_FORESTS = ["gpu-shared-d64", "gpu-shared-d128", "gpu-unshared-d96", "deep-chain-1tok", "shared-gqa"]
LOWP = [torch.bfloat16, torch.float16]


def _params(backends_dtypes):
    return [pytest.param(name, b, d, id=f"{name}-{b}-{str(d)[6:]}")
            for b, dtypes in backends_dtypes for d in dtypes for name in GPU_FORESTS]


@pytest.mark.gpu
@pytest.mark.parametrize("name,backend,dtype", _params([("triton", LOWP + [torch.float32]), ("flex", LOWP),
                                                        ("varlen", LOWP)]))
def test_cuda_backend_matches_reference(name, backend, dtype):
    check_backend_against_reference(name, backend, dtype, device="cuda", forests=FORESTS_GPU)


@pytest.mark.gpu
def test_auto_is_triton_on_cuda_and_layouts_are_cached():
    packed, q, k, v, _ = make_inputs("gpu-shared-d64", torch.bfloat16, "cuda", FORESTS_GPU)
    out = spiral_fast.tree_attention(q, k, v, packed)
    torch.testing.assert_close(out, spiral_fast.tree_attention(q, k, v, packed, backend="triton"), rtol=0, atol=0)
    keys = set(packed._cache)
    spiral_fast.tree_attention(q, k, v, packed)
    assert set(packed._cache) == keys and any("blocks" in key for key in keys)
