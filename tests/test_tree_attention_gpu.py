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
FORESTS_GPU = {
    **FORESTS,
    **{
        "gpu-shared-d64": (random_forest(11, num_seqs=24, vocab=3, max_len=300), "trie", 8, 2, 64),
        "gpu-shared-d128": (random_forest(12, num_seqs=16, vocab=2, max_len=200, share_prob=0.9), "trie", 4, 1, 128),
        "gpu-unshared-d96": (random_forest(13, num_seqs=8, vocab=100, max_len=150), "none", 4, 4, 96),
    },
}
ALL = ["gpu-shared-d64", "gpu-shared-d128", "gpu-unshared-d96", "deep-chain-1tok", "shared-gqa"]
TWO = ["gpu-shared-d128", "deep-chain-1tok"]
BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
# every (backend, dtype) pair, on fewer forests where each case costs a compile (flex: torch.compile per
# shape; triton: per dtype and head dim), so the GPU run stays within its few minutes
CASES = (
    [("triton", BF16, n) for n in ALL]
    + [("triton", FP16, n) for n in TWO]
    + [("triton", FP32, n) for n in TWO]
    + [("flex", BF16, n) for n in TWO]
    + [("flex", FP16, "gpu-shared-d64")]
    + [("varlen", d, n) for d in (BF16, FP16) for n in ALL]
)


@pytest.mark.gpu
@pytest.mark.parametrize("backend,dtype,name", [pytest.param(b, d, n, id=f"{b}-{str(d)[6:]}-{n}") for b, d, n in CASES])
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
