"""The DAG layout of parallel-encoded aggregation (pack_sequences(..., contexts=...)) against a
brute-force computation from the sequences alone, member-order invariance, bad contexts, and every
tree_attention backend that runs on the CPU against the dense-mask reference on DAG layouts."""

from __future__ import annotations

import random

import pytest
import torch
from parallel_cases import random_dag
from test_tree_attention import check_backend_against_reference, make_inputs
from test_tree_attention_triton import visited_pairs

import spiral_fast
from spiral_fast.ops.tree_attention.layout import allowed_pairs, build_block_tables
from spiral_fast.ops.tree_attention.reference import tree_mask

# name -> (sequences, share, Hq, Hkv, D, contexts, share_limits), as test_tree_attention.make_inputs takes them
DAGS = {
    "dag-small-vocab": (*random_dag(1, vocab=3), "trie", 4, 2, 8),
    "dag-large-vocab": (*random_dag(2, vocab=1000, problems=3), "trie", 2, 2, 16),
    "dag-one-problem-many-sets": (*random_dag(3, problems=1, num_traces=5, num_sets=6), "trie", 4, 1, 8),
    "dag-unshared": (*random_dag(4, vocab=3), "none", 2, 1, 8),
    # traces of 20+ tokens: full 16-token key blocks, so the kernels' unmasked path runs too
    "dag-long-traces": (*random_dag(5, vocab=50, problems=1, max_len=24, num_traces=3, num_sets=2), "trie", 4, 2, 16),
    # few segments: the interpreter's cost grows with the number of blocks
    "dag-tiny": (*random_dag(6, vocab=3, problems=1, max_len=4, num_traces=3, num_sets=2, max_g=2), "trie", 2, 1, 8),
}
DAGS = {name: (seqs, share, hq, hkv, d, ctx, lim) for name, (seqs, ctx, lim, share, hq, hkv, d) in DAGS.items()}


def brute_force(seqs, contexts, packed):
    """From the sequences alone: (visible [T, T] bool, ancestors per segment), checking on the way
    that every sequence's tokens and positions are right and that each token sees the same keys from
    every sequence that holds it."""
    idx = [packed.token_index(i).tolist() for i in range(len(seqs))]
    for k, seq in enumerate(seqs):
        offset = max((len(seqs[c]) for c in contexts[k] or []), default=0)
        assert packed.input_ids[idx[k]].tolist() == seq
        assert packed.position_ids[idx[k]].tolist() == list(range(offset, offset + len(seq)))
    sees: dict[int, set] = {}
    for k, seq in enumerate(seqs):
        ctx = {t for c in contexts[k] or [] for t in idx[c]}
        for p in range(len(seq)):
            visible = ctx | set(idx[k][: p + 1])
            assert sees.setdefault(idx[k][p], visible) == visible, "a shared token sees different keys"
    t = packed.num_tokens
    assert sorted(sees) == list(range(t)), "a packed token belongs to no sequence"
    mask = torch.zeros(t, t, dtype=torch.bool)
    for i, visible in sees.items():
        mask[i, sorted(visible)] = True
    cu = packed.cu_seqlens.tolist()
    seg_of = [g for g in range(len(cu) - 1) for _ in range(cu[g], cu[g + 1])]
    # a segment's ancestors: the other segments its first token sees
    ancestors = [tuple(sorted({seg_of[j] for j in sees[cu[g]]} - {g})) for g in range(len(cu) - 1)]
    return mask, ancestors


def random_cases():
    return [
        pytest.param(seed, problems, vocab, id=f"seed{seed}-P{problems}-V{vocab}")
        for seed, problems, vocab in [(0, 1, 2), (1, 2, 3), (2, 3, 5), (3, 2, 1000), (4, 4, 2)]
    ]


@pytest.mark.parametrize("seed,problems,vocab", random_cases())
@pytest.mark.parametrize("builder", ["python", "cpp"])
def test_dag_layout_matches_brute_force(seed, problems, vocab, builder):
    if builder == "cpp" and not spiral_fast.packing.native.native_available():
        pytest.skip("the C++ builder is not built")
    seqs, contexts, limits = random_dag(seed, problems=problems, vocab=vocab)
    packed = spiral_fast.pack_sequences(seqs, contexts=contexts, share_limits=limits, builder=builder)
    assert packed.is_dag
    mask, ancestors = brute_force(seqs, contexts, packed)
    assert torch.equal(tree_mask(packed), mask)
    assert list(packed.segment_ancestors) == ancestors
    assert int(mask.sum()) == allowed_pairs(packed)
    # ancestors precede: the kernels' in-tile test "key <= query" stays exact
    assert not bool(mask.triu(1).any())
    # every shared prefix once: x once per distinct prompt, each trace token past x its own (share
    # limit), a head/response prefix once per (trace tokens it sees, prefix), and nothing else
    idx = [packed.token_index(i).tolist() for i in range(len(seqs))]
    keys = set()
    for k, seq in enumerate(seqs):
        ctx = frozenset(t for c in contexts[k] or [] for t in idx[c])
        keys |= {(ctx, tuple(seq[: p + 1])) if limits[k] is None or p < limits[k] else (k, p) for p in range(len(seq))}
    assert packed.num_tokens == len(keys)
    assert packed.max_context == int(packed.position_ids.max()) + 1
    rows = packed.prediction_rows
    expected = [(idx[k][p - 1], seq[p], k, p) for k, seq in enumerate(seqs) for p in range(1, len(seq))]
    assert list(zip(*(t.tolist() for t in rows))) == expected


@pytest.mark.parametrize("seed", range(4))
def test_python_and_cpp_builders_give_identical_dags(seed):
    if not spiral_fast.packing.native.native_available():
        pytest.skip("the C++ builder is not built")
    seqs, contexts, limits = random_dag(seed, problems=3)
    for share in ("trie", "none"):
        for lim in (limits, None):
            assert spiral_fast.pack_sequences(
                seqs, contexts=contexts, share_limits=lim, share=share, builder="python"
            ) == spiral_fast.pack_sequences(seqs, contexts=contexts, share_limits=lim, share=share, builder="cpp")


@pytest.mark.parametrize("seed", range(4))
def test_member_order_does_not_change_the_layout(seed):
    seqs, contexts, limits = random_dag(seed, problems=2)
    rng = random.Random(seed)
    shuffled = [None if c is None else rng.sample(c, len(c)) for c in contexts]
    assert shuffled != contexts or seed > 0
    assert spiral_fast.pack_sequences(seqs, contexts=shuffled, share_limits=limits) == spiral_fast.pack_sequences(
        seqs, contexts=contexts, share_limits=limits
    )


def test_share_limits_keep_each_member_trace_whole():
    """Two member traces that start alike: without limits the aggregator would see their common span
    once (one packed copy); with share_limits=|x| it sees each trace whole, x once."""
    x, ya, yb = [1, 2], [3, 4, 5], [3, 4, 6]
    seqs, contexts = [x + ya, x + yb, [7, 8]], [None, None, [0, 1]]
    merged = spiral_fast.pack_sequences(seqs, contexts=contexts)
    split = spiral_fast.pack_sequences(seqs, contexts=contexts, share_limits=[2, 2, None])
    assert merged.num_tokens == 2 + 2 + 1 + 1 + 2 and split.num_tokens == 2 + 3 + 3 + 2
    agg = split.token_index(2)[0]
    assert int(tree_mask(split)[agg].sum()) == 2 + 3 + 3 + 1
    assert split.input_ids[split.token_index(1)].tolist() == x + yb
    assert split.prediction_rows.target.tolist() == [2, 3, 4, 5, 2, 3, 4, 6, 8]
    with pytest.raises(ValueError, match="share_limits\\[1\\] must be None or an int >= 0"):
        spiral_fast.pack_sequences(seqs, share_limits=[2, -1, None])
    with pytest.raises(ValueError, match="share_limits has 2 entries"):
        spiral_fast.pack_sequences(seqs, share_limits=[2, 2])


def test_spiral_semantics_on_a_hand_made_problem():
    x, y0, y1, y2 = [1, 2], [3, 4, 5], [6], [3, 4, 9, 9]
    h, z0, z1 = [7], [8, 8], [8, 5]
    seqs = [x + y0, x + y1, x + y2, h + z0, h + z1, h + z0]
    contexts = [None, None, None, [0, 1], [1, 0], [2]]
    packed = spiral_fast.pack_sequences(seqs, contexts=contexts)
    # x once, y0 and y2 share [3, 4]; h + z0 and h + z1 share h within set {0, 1}; set {2} has its own h
    assert packed.num_tokens == 2 + 3 + 1 + 2 + 1 + 3 + 3
    # h of set {0, 1} at p = |x| + max(|y0|, |y1|) = 5; of set {2} at |x| + |y2| = 6
    assert packed.position_ids[packed.token_index(3)].tolist() == [5, 6, 7]
    assert packed.position_ids[packed.token_index(5)].tolist() == [6, 7, 8]
    mask = tree_mask(packed)
    y2_tokens = packed.token_index(2)
    h_set01 = packed.token_index(3)[0]
    assert not bool(mask[h_set01, y2_tokens[4:]].any())  # y2 past its prefix shared with y0: not in set {0, 1}
    assert bool(mask[h_set01, packed.token_index(0)].all()) and bool(mask[h_set01, packed.token_index(1)].all())
    # trace tokens see x and themselves only
    assert not bool(mask[packed.token_index(1)[-1], packed.token_index(0)[2:]].any())


@pytest.mark.parametrize(
    "contexts,match",
    [
        ([None, [5]], "contexts\\[1\\] names sequence 5"),
        ([None, [1]], "contexts\\[1\\] names sequence 1 itself"),
        ([None, [0, 0]], "more than once"),
        ([None, [0], [1]], "has a context itself"),
        ([None], "contexts has 1 entries"),
        ([None, "0"], "contexts\\[1\\]"),
        ("ab", "contexts must be a list"),
    ],
    ids=["missing", "self", "duplicate", "nested", "length", "not-a-list", "not-a-list-at-all"],
)
def test_bad_contexts_raise(contexts, match):
    seqs = [[1, 2], [3], [4]][: len(contexts)] if isinstance(contexts, list) else [[1, 2], [3]]
    if len(seqs) < 2:
        seqs = [[1, 2], [3]]
    with pytest.raises(ValueError, match=match):
        spiral_fast.pack_sequences(seqs, contexts=contexts)


def test_positions_past_max_positions_raise():
    seqs, contexts = [[1, 2, 3], [4, 5]], [None, [0]]
    assert spiral_fast.pack_sequences(seqs, contexts=contexts, max_positions=5).max_context == 5
    with pytest.raises(ValueError, match="sequences\\[1\\] has 2 tokens at positions 3..4, more than max_positions=4"):
        spiral_fast.pack_sequences(seqs, contexts=contexts, max_positions=4)


def dag_params(names=None):
    return [pytest.param(name, id=name) for name in (names or DAGS)]


@pytest.mark.parametrize("blocks", [(16, 16), (4, 8), (1, 1)], ids=lambda b: "M{}-N{}".format(*b))
@pytest.mark.parametrize("name", dag_params())
def test_block_tables_cover_the_dag_mask_exactly_once(name, blocks):
    """The Triton kernels need no change for a DAG: new tables only, covering the mask exactly."""
    packed = make_inputs(name, forests=DAGS)[0]
    tables = build_block_tables(packed, *blocks)
    mask = tree_mask(packed)
    assert torch.equal(visited_pairs(tables, mask, blocks[1], reverse=False), mask.long())
    assert torch.equal(visited_pairs(tables, mask, blocks[1], reverse=True), mask.long())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", dag_params())
def test_torch_backend_on_dags_matches_reference(name, dtype):
    check_backend_against_reference(name, "torch", dtype, forests=DAGS)


@pytest.mark.interpret
@pytest.mark.parametrize(
    "name,dtype",
    [
        pytest.param(n, d, id=f"{n}-{str(d)[6:]}")
        for n, d in [("dag-tiny", torch.float32), ("dag-tiny", torch.float16), ("dag-long-traces", torch.float32)]
    ],
)
def test_triton_on_dags_matches_reference(name, dtype, triton_device):
    assert make_inputs(name, forests=DAGS)[0].num_tokens <= 40, "interpreter cases stay small"
    check_backend_against_reference(name, "triton", dtype, device=triton_device, forests=DAGS)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("name", dag_params(["dag-tiny", "dag-unshared"]))
def test_flex_forward_on_dags_matches_reference(name):
    # FlexAttention has no CPU backward (docs/platform_notes.md); its DAG mask is checked here, gradients on CUDA
    check_backend_against_reference(name, "flex", torch.float32, grads=False, forests=DAGS)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "backend,dtype",
    [("triton", torch.bfloat16), ("triton", torch.float32), ("flex", torch.bfloat16), ("varlen", torch.bfloat16)],
    ids=["triton-bf16", "triton-fp32", "flex-bf16", "varlen-bf16"],
)
@pytest.mark.parametrize("name", dag_params(["dag-small-vocab", "dag-long-traces"]))
def test_cuda_backends_on_dags_match_reference(name, backend, dtype):
    check_backend_against_reference(name, backend, dtype, device="cuda", forests=DAGS)
