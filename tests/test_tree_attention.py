"""tree_attention on the CPU: the dense-mask reference against a per-sequence loop of plain causal
attention, every backend that runs here against the reference (values and gradients under a random
upstream gradient), and input validation. Triton kernels: test_tree_attention_triton.py (interpreter);
CUDA backends: test_tree_attention_gpu.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_within_tolerance
from packing_cases import deep_chain, random_forest

import spiral_fast
from spiral_fast.ops.tree_attention.layout import allowed_pairs, token_subtree_end
from spiral_fast.ops.tree_attention.reference import tree_attention_reference, tree_mask

# name -> (sequences, share, Hq, Hkv, D)
FORESTS = {
    "shared-gqa": (random_forest(1, num_seqs=8, vocab=3, max_len=12), "trie", 4, 2, 8),
    "shared-mha": (random_forest(2, num_seqs=6, vocab=2, max_len=10, share_prob=0.9), "trie", 2, 2, 16),
    "unshared": (random_forest(3, num_seqs=5, vocab=50, max_len=9), "none", 2, 1, 8),
    "roots-no-sharing": (random_forest(4, num_seqs=5, vocab=1000, max_len=9, share_prob=0.0), "trie", 4, 1, 12),
    "deep-chain-1tok": (deep_chain(9), "trie", 2, 1, 8),
    "one-token-seqs": (random_forest(5, num_seqs=6, vocab=4, max_len=1), "trie", 3, 1, 8),
    "several-roots-dups": (random_forest(6, num_seqs=10, vocab=4, max_len=6, share_prob=0.95), "trie", 4, 4, 8),
    # segments of 24, 20, 18 tokens: full 16-blocks, so the kernels' unmasked path runs too
    "long-segments": (
        [list(range(100, 124)) + list(range(20)), list(range(100, 124)) + list(range(50, 68))],
        "trie",
        4,
        2,
        16,
    ),
}


def forest_params(names=None):
    return [pytest.param(name, id=name) for name in (names or FORESTS)]


def make_inputs(name, dtype=torch.float64, device="cpu", forests=FORESTS):
    """(packed, q, k, v, dO) for a named forest: q [T, Hq, D], k/v [T, Hkv, D], dO like q. A forest
    entry may carry two more items, the `contexts` and `share_limits` of a DAG layout
    (test_parallel_layout.py)."""
    seqs, share, hq, hkv, d, *dag = forests[name]
    packed = spiral_fast.pack_sequences(seqs, share=share, **dict(zip(("contexts", "share_limits"), dag))).to(device)
    t = packed.num_tokens
    gen = torch.Generator().manual_seed(len(name))
    q, k, v = (torch.randn(t, h, d, generator=gen, dtype=torch.float64) for h in (hq, hkv, hkv))
    do = torch.randn(t, hq, d, generator=gen, dtype=torch.float64)
    return packed, *(x.to(device=device, dtype=dtype) for x in (q, k, v, do))


def run_with_grads(fn, q, k, v, do):
    """fn(q, k, v) and d(out . dO)/d(q, k, v) for a random per-token upstream gradient dO."""
    q, k, v = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    out = fn(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), do.to(out.dtype))
    return out.detach(), grads


def check_backend_against_reference(name, backend, dtype, device="cpu", grads=True, forests=FORESTS):
    """docs/testing.md's rule: backend error vs float64 truth <= 2 x the reference's own error in `dtype` + floor,
    the floor being 1e-6 plus a few ulps of the largest true value (see `_floor`)."""
    packed, q, k, v, do = make_inputs(name, torch.float64, device, forests)

    def reference(q_, k_, v_):
        return tree_attention_reference(q_, k_, v_, packed, q.shape[-1] ** -0.5)

    def backend_fn(q_, k_, v_):
        return spiral_fast.tree_attention(q_, k_, v_, packed, backend=backend)

    low = [x.to(dtype) for x in (q, k, v)]
    if not grads:
        with torch.no_grad():
            ref64 = reference(q, k, v)
            assert_within_tolerance(backend_fn(*low), ref64, reference(*low), floor=_floor(ref64, dtype))
        return
    ref64, g64 = run_with_grads(reference, q, k, v, do)
    ref_lo, g_lo = run_with_grads(reference, *low, do)
    out, g = run_with_grads(backend_fn, *low, do)
    assert out.dtype == dtype and out.shape == q.shape
    assert_within_tolerance(out, ref64, ref_lo, floor=_floor(ref64, dtype), name="out")
    for gname, a, b, c in zip(("dq", "dk", "dv"), g, g64, g_lo):
        assert a.dtype == dtype and a.shape == b.shape
        assert_within_tolerance(a, b, c, floor=_floor(b, dtype), name=gname)


def _floor(ref64: torch.Tensor, dtype: torch.dtype) -> float:
    """Absolute floor of the tolerance rule. 16-bit: one ulp of the largest true value (rounding the
    result alone costs half an ulp there; PyTorch's own error can be luckily smaller at its maximum).
    fp32: 16 ulps, because dS = P (dP - rowsum(dO O)) cancels and two valid summation orders differ by
    ~10 ulps of the largest gradient (measured 2.8e-6 on |dq| <= 1.6 against PyTorch's 5e-7)."""
    ulps = 16 if dtype == torch.float32 else 1
    return 1e-6 + ulps * torch.finfo(dtype).eps * ref64.abs().max().item()


@pytest.mark.parametrize("name", forest_params())
def test_reference_equals_per_sequence_causal_attention(name):
    """Every sequence's outputs equal plain causal attention over that sequence alone; the rows of a
    shared prefix are one packed row, so they are checked against every sequence that shares them."""
    packed, q, k, v, do = make_inputs(name)
    scale = 0.37
    out, (dq, dk, dv) = run_with_grads(lambda a, b, c: tree_attention_reference(a, b, c, packed, scale), q, k, v, do)
    group = q.shape[1] // k.shape[1]
    # gradients of the per-sequence loss sum_i <attn(seq_i), dO[seq_i]> are those of the packed loss only
    # if every packed row sits in one sequence; so compare values per sequence, gradients via a scatter
    qs, ks, vs = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    loss = 0.0
    for i in range(packed.num_sequences):
        idx = packed.token_index(i)
        o = F.scaled_dot_product_attention(
            qs[idx].transpose(0, 1),
            ks[idx].repeat_interleave(group, 1).transpose(0, 1),
            vs[idx].repeat_interleave(group, 1).transpose(0, 1),
            is_causal=True,
            scale=scale,
        ).transpose(0, 1)
        torch.testing.assert_close(out[idx], o.detach(), rtol=0, atol=1e-12)
        # a shared row counted once per sequence: weight it by 1 / (number of sequences holding it)
        loss = loss + (o * do[idx] / copies(packed)[idx, None, None]).sum()
    grads = torch.autograd.grad(loss, (qs, ks, vs))
    for a, b in zip((dq, dk, dv), grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def copies(packed) -> torch.Tensor:
    """[T] float64: how many sequences hold each packed token."""
    count = torch.zeros(packed.num_tokens, dtype=torch.float64)
    for i in range(packed.num_sequences):
        count[packed.token_index(i)] += 1
    return count


@pytest.mark.parametrize("name", forest_params())
def test_mask_allows_exactly_the_counted_pairs(name):
    packed = make_inputs(name)[0]
    mask = tree_mask(packed)
    assert int(mask.sum()) == allowed_pairs(packed)
    assert bool(mask.diagonal().all()) and not bool(mask.triu(1).any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", forest_params())
def test_torch_backend_matches_reference(name, dtype):
    check_backend_against_reference(name, "torch", dtype)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("name", forest_params(["shared-gqa", "deep-chain-1tok", "unshared"]))
def test_flex_forward_on_cpu_matches_reference(name):
    # FlexAttention has no CPU backward (docs/platform_notes.md): the CPU covers the mask, CUDA the gradients
    check_backend_against_reference(name, "flex", torch.float32, grads=False)


def test_auto_is_torch_on_cpu_and_scale_is_used():
    packed, q, k, v, _ = make_inputs("shared-gqa", torch.float32)
    out = spiral_fast.tree_attention(q, k, v, packed, scale=0.5)
    torch.testing.assert_close(
        out, spiral_fast.tree_attention(q, k, v, packed, scale=0.5, backend="torch"), rtol=0, atol=0
    )
    torch.testing.assert_close(out, tree_attention_reference(q, k, v, packed, 0.5), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out, spiral_fast.tree_attention(q, k, v, packed))


def test_varlen_on_cpu_raises():
    packed, q, k, v, _ = make_inputs("shared-gqa", torch.float32)
    with pytest.raises(ValueError, match="varlen.*CUDA"):
        spiral_fast.tree_attention(q, k, v, packed, backend="varlen")


def _bad_inputs():
    packed, q, k, v, _ = make_inputs("shared-gqa", torch.float32)
    other = spiral_fast.pack_sequences([[1, 2, 3]])
    meta = torch.device("meta")
    return [
        ("q-2d", dict(q=q[:, 0]), r"^q must have 3 dims"),
        ("q-tokens", dict(q=q[:-1]), r"^q has 24 tokens but packed\.num_tokens is 25"),
        ("k-tokens", dict(k=k[:-1], v=v[:-1]), r"^k must have q's 25 tokens"),
        ("k-head-dim", dict(k=k[..., :-1], v=v[..., :-1]), r"^k must have q's head dim"),
        (
            "heads-not-multiple",
            dict(k=torch.randn(q.shape[0], 3, q.shape[2]), v=torch.randn(q.shape[0], 3, q.shape[2])),
            r"q's 4 heads must be a multiple of k's 3 heads",
        ),
        ("v-shape", dict(v=v[:, :1]), r"^v must have shape \(25, 2, 8\)"),
        ("k-dtype", dict(k=k.double()), r"^k must have q's dtype"),
        ("q-int", dict(q=q.long()), r"^q must have dtype in"),
        ("packed-other-batch", dict(packed=other), r"but packed\.num_tokens is 3"),
        ("packed-not-batch", dict(packed=[1, 2]), r"^packed must be a PackedBatch"),
        ("q-device", dict(q=q.to(meta)), r"^k is on cpu but q is on meta"),
        ("scale-negative", dict(scale=-1.0), r"^scale must be"),
        ("backend-unknown", dict(backend="cuda"), r"^backend must be"),
    ], dict(q=q, k=k, v=v, packed=packed)


@pytest.mark.parametrize("case", range(len(_bad_inputs()[0])), ids=[c[0] for c in _bad_inputs()[0]])
def test_bad_input_raises_value_error_naming_the_argument(case):
    cases, good = _bad_inputs()
    _, change, word = cases[case]
    args = {**good, **change}
    with pytest.raises(ValueError, match=word):
        spiral_fast.tree_attention(
            args["q"],
            args["k"],
            args["v"],
            args["packed"],
            scale=args.get("scale"),
            backend=args.get("backend", "auto"),
        )


def test_packed_on_another_device_than_q_raises():
    packed, q, k, v, _ = make_inputs("shared-gqa", torch.float32)
    meta = torch.device("meta")
    with pytest.raises(ValueError, match="packed"):
        spiral_fast.tree_attention(q.to(meta), k.to(meta), v.to(meta), packed)


def test_segments_out_of_dfs_order_are_rejected_by_the_subtree_shortcut():
    packed = spiral_fast.pack_sequences([[1, 2, 3], [1, 2, 4], [1, 7], [5, 6]])
    assert packed.segment_parent.tolist() == [-1, 0, 1, 1, 0, -1]
    # segment 4 made a root and segment 5 a child of 0: 0's subtree {0, 1, 2, 3, 5} skips 4
    broken = dataclasses.replace(packed, segment_parent=torch.tensor([-1, 0, 1, 1, -1, 0]), _cache={})
    with pytest.raises(ValueError, match="DFS pre-order"):
        token_subtree_end(broken)
