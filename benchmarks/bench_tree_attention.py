"""Tree attention (issue 4): forward+backward over a SPIRAL-shaped prefix-shared packed batch.

GPU (gpu marker; preset SPIRAL["packing-issue"], 16 heads x 128, GQA with 2 kv heads, bf16): Triton
block-table kernels ("spiral_fast") vs FlexAttention with the tree BlockMask vs FlashAttention varlen
over gathered ancestor contexts vs SDPA with the dense [T, T] tree mask; forward alone and forward+backward.
CPU (preset SPIRAL["attention-cpu"]): the torch backend (per-segment SDPA, "spiral_fast") vs the
dense-mask reference vs a per-sequence loop of causal SDPA (every shared prefix encoded again).

TFLOP/s of *useful* attention: only allowed (query, key) pairs P count (P = sum over segments of
L_g * A_g + L_g (L_g + 1) / 2, from the tree). Forward: 4 * D * Hq * P (QK^T and PV, 2 flops per MAC);
forward+backward: 2.5x that (the backward's 5 matmuls vs the forward's 2). Every peer of a group is
credited the same useful flops, so the rate is directly comparable (a peer doing wasted work is slower).
"""
import pytest
import torch
import torch.nn.functional as F
from bench_packing import spiral_sequences
from presets import ATTENTION_HEADS, SPIRAL

import spiral_fast
from spiral_fast.ops.tree_attention.layout import allowed_pairs
from spiral_fast.ops.tree_attention.reference import tree_attention_reference

VOCAB = 32000  # random ids: prefixes are shared only where SPIRAL shares them


def make_case(shape_name: str, heads_name: str, dtype, device):
    """(packed, q, k, v, dO, useful forward flops) for a preset tree and head shape."""
    heads = ATTENTION_HEADS[heads_name]
    packed = spiral_fast.pack_sequences(spiral_sequences(SPIRAL[shape_name], vocab=VOCAB)).to(device)
    t = packed.num_tokens
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(t, h, heads.head_dim, generator=g).to(device, dtype).requires_grad_(True)
               for h in (heads.q_heads, heads.kv_heads, heads.kv_heads))
    do = torch.randn(t, heads.q_heads, heads.head_dim, generator=g).to(device, dtype)
    return packed, q, k, v, do, 4 * heads.head_dim * heads.q_heads * allowed_pairs(packed)


def timed(attn, q, k, v, do, backward: bool):
    """A callable running attn(q, k, v) (+ its backward under the per-token upstream gradient dO)."""
    if hasattr(attn, "upstream_index"):
        do = do[attn.upstream_index]

    def run():
        if not backward:
            with torch.no_grad():
                return attn(q, k, v)
        return torch.autograd.grad(attn(q, k, v), (q, k, v), do)
    return run


def per_sequence_loop(packed):
    """Causal SDPA over each sequence alone (its tokens gathered once; shared prefixes recomputed per
    sequence). Returns [sum len_i, Hq, D]: every sequence's outputs, one after the other."""
    index = [packed.token_index(i) for i in range(packed.num_sequences)]
    flat = torch.cat(index)
    lengths = [len(idx) for idx in index]

    def attn(q_, k_, v_):
        gqa = q_.shape[1] != k_.shape[1]
        # [1, H, tokens, D]: 4-D inputs reach SDPA's fused CPU kernel
        qs, ks, vs = (x.index_select(0, flat).transpose(0, 1)[None].split(lengths, 2) for x in (q_, k_, v_))
        outs = [F.scaled_dot_product_attention(a, b, c, is_causal=True, enable_gqa=gqa) for a, b, c in zip(qs, ks, vs)]
        return torch.cat(outs, 2)[0].transpose(0, 1)
    attn.upstream_index = flat  # its dO: the packed dO of each sequence's tokens
    return attn


def backend(packed, name):
    return lambda q, k, v: spiral_fast.tree_attention(q, k, v, packed, backend=name)


def dense(packed):
    return lambda q, k, v: tree_attention_reference(q, k, v, packed, q.shape[-1] ** -0.5)


CPU_PEERS = {
    "spiral_fast": lambda packed: backend(packed, "torch"),
    "dense-mask-sdpa": dense,
    "per-sequence-sdpa": per_sequence_loop,
}


@pytest.mark.parametrize("peer", list(CPU_PEERS))
def test_tree_attention_cpu_fwd_bwd(compare, peer):
    packed, q, k, v, do, flops = make_case("attention-cpu", "cpu-4x32-gqa2", torch.float32, "cpu")
    fn = timed(CPU_PEERS[peer](packed), q, k, v, do, backward=True)
    compare(f"tree-attn fwd+bwd cpu T={packed.num_tokens} dedup={packed.dedup_ratio:.2f}", peer, fn,
            rounds=5, flops=2.5 * flops, note="useful-pair flops")


GPU_PEERS = {
    "spiral_fast": lambda packed: backend(packed, "triton"),
    "flex": lambda packed: backend(packed, "flex"),
    "varlen": lambda packed: backend(packed, "varlen"),
    "dense-mask-sdpa": dense,
}


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("peer", list(GPU_PEERS))
def test_tree_attention_gpu(compare, peer, mode):
    packed, q, k, v, do, flops = make_case("packing-issue", "gpu-16x128-gqa2", torch.bfloat16, "cuda")
    fn = timed(GPU_PEERS[peer](packed), q, k, v, do, backward=mode == "fwd+bwd")
    compare(f"tree-attn {mode} bf16 T={packed.num_tokens} 16x128/2", peer, fn, device="cuda", rounds=10,
            warmup=3, flops=flops * (2.5 if mode == "fwd+bwd" else 1.0), note="useful-pair flops")
