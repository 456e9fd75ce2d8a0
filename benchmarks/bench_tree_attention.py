"""Tree attention (issue 4): forward+backward over a SPIRAL-shaped prefix-shared packed batch.

GPU (gpu marker; preset SPIRAL["packing-issue"], 16 heads x 128, GQA with 2 kv heads, bf16): Triton
block-table kernels ("spiral_fast") vs spiral_fast's own flex backend (torch FlexAttention with the tree
BlockMask) and varlen backend (FlashAttention varlen over gathered ancestor contexts: flash-attn when
installed, else torch's varlen_attn; the table prints which) vs SDPA with the dense [T, T] tree mask vs
causal SDPA per sequence (no sharing); forward alone and forward+backward.
Every peer's values (output, and gradients where it covers each packed token once) must match
spiral_fast's before it is timed.
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
    q, k, v = (
        torch.randn(t, h, heads.head_dim, generator=g).to(device, dtype).requires_grad_(True)
        for h in (heads.q_heads, heads.kv_heads, heads.kv_heads)
    )
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


def make_values(attn, q, k, v, do, packed):
    """A callable giving the peer's output and (when it covers every packed token once) its
    gradients, under dO; a per-sequence peer gives its outputs mapped back onto packed tokens, each
    sequence's copy of a shared prefix being the same value."""

    def values():
        leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
        out = attn(*leaves)
        index = getattr(attn, "upstream_index", None)
        if index is not None:  # per sequence: out rows are the packed tokens `index`, shared ones repeated
            return {"out": out.detach().float()}
        grads = torch.autograd.grad(out, leaves, do)
        return {"out": out.detach().float(), **{f"d{n}": g.float() for n, g in zip("qkv", grads)}}

    return values


def expected_values(attn, q, k, v, do, packed, peer_attn):
    """spiral_fast's values in the shape the peer gives them (see ``make_values``)."""
    sf_values = make_values(attn, q, k, v, do, packed)
    index = getattr(peer_attn, "upstream_index", None)
    if index is None:
        return sf_values
    return lambda: {"out": sf_values()["out"][index]}


def varlen_impl() -> str:
    """What the varlen backend runs: flash-attn's varlen kernel when installed, else torch's varlen_attn."""
    from spiral_fast.ops.tree_attention.backend_varlen import _varlen_impl

    return {"flash_attn": "flash_attn.flash_attn_varlen_func", "torch": "torch varlen_attn"}[_varlen_impl()[0]]


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
    attn = CPU_PEERS[peer](packed)
    fn = timed(attn, q, k, v, do, backward=True)
    compare(
        f"tree-attn fwd+bwd cpu T={packed.num_tokens} dedup={packed.dedup_ratio:.2f}",
        peer,
        fn,
        rounds=5,
        flops=2.5 * flops,
        note="useful-pair flops",
        rel=1e-4,
        values=make_values(attn, q, k, v, do, packed),
        expected=expected_values(CPU_PEERS["spiral_fast"](packed), q, k, v, do, packed, attn),
        **({"impl": "tree_attention backend torch (per-segment SDPA)"} if peer == "spiral_fast" else {}),
    )


GPU_PEERS = {
    "spiral_fast": lambda packed: backend(packed, "triton"),
    # spiral_fast's other backends: FlexAttention with our tree BlockMask, FlashAttention varlen over
    # our gathered ancestor contexts (flash-attn or torch's varlen_attn, see IMPL)
    "sf flex backend": lambda packed: backend(packed, "flex"),
    "sf varlen backend": lambda packed: backend(packed, "varlen"),
    "dense-mask-sdpa": dense,
    # what a trainer without prefix sharing runs: each sequence alone through causal SDPA
    "per-sequence-sdpa": per_sequence_loop,
}
IMPL = {
    "spiral_fast": lambda: "tree_attention backend triton",
    "sf flex backend": lambda: "torch flex_attention + tree BlockMask",
    "sf varlen backend": varlen_impl,
    "dense-mask-sdpa": lambda: "SDPA with a dense [T, T] mask",
    "per-sequence-sdpa": lambda: "causal SDPA per sequence",
}


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("peer", list(GPU_PEERS))
def test_tree_attention_gpu(compare, peer, mode):
    packed, q, k, v, do, flops = make_case("packing-issue", "gpu-16x128-gqa2", torch.bfloat16, "cuda")
    attn = GPU_PEERS[peer](packed)
    fn = timed(attn, q, k, v, do, backward=mode == "fwd+bwd")
    try:
        impl = IMPL[peer]()
    except ImportError as exc:
        pytest.skip(f"{peer} unavailable: {exc}")
    compare(
        f"tree-attn {mode} bf16 T={packed.num_tokens} 16x128/2",
        peer,
        fn,
        device="cuda",
        rounds=10,
        warmup=3,
        flops=flops * (2.5 if mode == "fwd+bwd" else 1.0),
        note="useful-pair flops",
        impl=impl,
        rel=3e-2,
        values=make_values(attn, q, k, v, do, packed),
        expected=expected_values(GPU_PEERS["spiral_fast"](packed), q, k, v, do, packed, attn),
    )
