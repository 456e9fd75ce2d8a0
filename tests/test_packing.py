"""pack_sequences: layout invariants on random forests, prediction rows, token_index, bad input."""

import pytest
import torch
from packing_cases import CASES, deep_chain, random_forest

import spiral_fast as sf


def check_layout(packed: sf.PackedBatch, seqs: list[list[int]]):
    """Every contract property of a PackedBatch, checked from the sequences alone."""
    S = len(seqs)
    assert packed.num_sequences == S and packed.share in ("trie", "none")
    assert packed.input_ids.dtype == packed.position_ids.dtype == torch.int64
    assert packed.cu_seqlens.dtype == torch.int32
    cu = packed.cu_seqlens.tolist()
    G, T = packed.num_segments, packed.num_tokens
    assert len(cu) == G + 1 and cu[0] == 0 and cu[-1] == T == packed.input_ids.numel()
    assert all(a < b for a, b in zip(cu, cu[1:])), "empty segment"
    parent = packed.segment_parent.tolist()
    assert all(-1 <= p < g for g, p in enumerate(parent))
    assert packed.max_seqlen == max(b - a for a, b in zip(cu, cu[1:]))
    assert packed.max_context == max(map(len, seqs))
    assert packed.seq_lengths.tolist() == [len(s) for s in seqs]
    assert packed.dedup_ratio == pytest.approx(sum(map(len, seqs)) / T)

    where = {}  # prefix -> packed index: a function of the prefix, injective under share="trie"
    for i, seq in enumerate(seqs):
        idx = packed.token_index(i)
        assert idx.dtype == torch.int64
        assert packed.input_ids[idx].tolist() == seq
        assert packed.position_ids[idx].tolist() == list(range(len(seq)))
        # the tokens of sequence i are exactly the whole segments on its root path
        path, g = [], int(packed.seq_segment[i])
        while g != -1:
            path.append(g)
            g = parent[g]
        expected = [t for g in reversed(path) for t in range(cu[g], cu[g + 1])]
        assert idx.tolist() == expected
        for p in range(len(seq)):
            where.setdefault(tuple(seq[: p + 1]), set()).add(int(idx[p]))
    if packed.share == "trie":
        assert all(len(v) == 1 for v in where.values()), "a prefix is stored twice"
        assert len(where) == T, "two prefixes share a packed token"
        # DFS pre-order: each segment's subtree is a contiguous range of segments
        last_desc = list(range(G))
        for g in reversed(range(G)):
            if parent[g] >= 0:
                last_desc[parent[g]] = max(last_desc[parent[g]], last_desc[g])
        for g in range(G):
            sub = [h for h in range(G) if h == g or _is_desc(parent, h, g)]
            assert sub == list(range(g, last_desc[g] + 1))
    else:
        assert T == sum(map(len, seqs)) and G == S and parent == [-1] * S

    rows = packed.prediction_rows
    exp = [(int(packed.token_index(i)[p - 1]), seq[p], i, p) for i, seq in enumerate(seqs) for p in range(1, len(seq))]
    got = list(zip(*(t.tolist() for t in rows)))
    assert got == exp
    assert all(t.dtype == torch.int64 for t in rows)


def _is_desc(parent, h, g):
    while h != -1:
        h = parent[h]
        if h == g:
            return True
    return False


def forest_params():
    out = []
    for name, kw in CASES.items():
        for seed in (0, 1):
            out.append(pytest.param(random_forest(seed, **kw), id=f"{name}-seed{seed}"))
    out.append(pytest.param(deep_chain(60), id="deep-chain-60"))
    out.append(pytest.param([[5, 6, 7], [5, 6, 7], [5, 6, 7]], id="all-identical"))
    out.append(pytest.param([[9]], id="single-token"))
    return out


@pytest.mark.parametrize("seqs", forest_params())
@pytest.mark.parametrize("share", ["trie", "none"])
def test_layout_invariants(seqs, share):
    check_layout(sf.pack_sequences(seqs, share=share), seqs)


def test_tensor_inputs_match_lists():
    seqs = random_forest(3, num_seqs=20, vocab=5, max_len=10)
    dtypes = [torch.int64, torch.int32, torch.int16]
    tensors = [torch.tensor(s, dtype=dtypes[i % 3]) for i, s in enumerate(seqs)]
    assert sf.pack_sequences(tensors) == sf.pack_sequences(seqs)


def test_known_tree():
    packed = sf.pack_sequences([[1, 2, 3, 4], [1, 2, 5], [1, 2], [1, 2, 3, 4], [7]])
    assert packed.input_ids.tolist() == [1, 2, 3, 4, 5, 7]
    assert packed.cu_seqlens.tolist() == [0, 2, 4, 5, 6]
    assert packed.segment_parent.tolist() == [-1, 0, 0, -1]
    assert packed.seq_segment.tolist() == [1, 2, 0, 1, 3]
    assert packed.dedup_ratio == pytest.approx(14 / 6)
    # the last shared token (index 1) predicts a different first token in each branch
    rows = packed.prediction_rows
    assert rows.hidden_index[rows.seq < 2].tolist() == [0, 1, 2, 0, 1]
    assert rows.target[rows.seq < 2].tolist() == [2, 3, 4, 2, 5]


def test_cache_and_equality():
    seqs = [[1, 2, 3], [1, 2, 4]]
    a, b = sf.pack_sequences(seqs), sf.pack_sequences(seqs)
    calls = []
    assert a.cached("k", lambda p: calls.append(1) or p.num_tokens) == 4
    assert a.cached("k", lambda p: calls.append(1) or -1) == 4 and len(calls) == 1
    assert a == b, "the cache is not part of equality"
    assert a != sf.pack_sequences(seqs, share="none")
    assert a.to("cpu") is a and a.host is a


def test_to_device_keeps_host_and_metadata():
    host = sf.pack_sequences([[1, 2, 3], [1, 2, 4], [7]])
    moved = host.to("meta")  # a real device copy without a GPU
    assert moved.host is host and moved.to("cpu") is host
    assert moved.input_ids.device.type == "meta" and moved.prediction_rows.target.device.type == "meta"
    assert (moved.num_tokens, moved.max_context, moved.dedup_ratio) == (
        host.num_tokens,
        host.max_context,
        host.dedup_ratio,
    )
    assert moved.cached("k", lambda p: p.device.type) == "meta" and "k" not in host._cache


BAD = [
    pytest.param([[1, 2], []], "sequences\\[1\\] is empty", id="empty-seq"),
    pytest.param([[1, 2], [3, -1]], "sequences\\[1\\].*negative", id="negative-list"),
    pytest.param([torch.tensor([0, 1]), torch.tensor([4, -2, 1])], "sequences\\[1\\].*negative", id="negative-tensor"),
    pytest.param([[1, 2.5]], "sequences\\[0\\].*integer", id="float-in-list"),
    pytest.param([[1], torch.tensor([1.0, 2.0])], "sequences\\[1\\].*integer", id="float-tensor"),
    pytest.param([[1], ["a", "b"]], "sequences\\[1\\]", id="string-tokens"),
    pytest.param([[1], [True, False]], "sequences\\[1\\].*integer", id="bool-tokens"),
    pytest.param([[1], [[1, 2]]], "sequences\\[1\\].*1-D", id="nested"),
    pytest.param([[1], torch.zeros(2, 2, dtype=torch.long)], "sequences\\[1\\].*1-D", id="2d-tensor"),
    pytest.param([[1], 3], "sequences\\[1\\]", id="not-a-sequence"),
    pytest.param([], "sequences is empty", id="no-sequences"),
]


@pytest.mark.parametrize("seqs,match", BAD)
def test_bad_input(seqs, match):
    with pytest.raises(ValueError, match=match):
        sf.pack_sequences(seqs)


def test_max_positions():
    seqs = [[1, 2, 3], [1, 2, 3, 4, 5], [1]]
    assert sf.pack_sequences(seqs, max_positions=5).num_tokens == 5
    with pytest.raises(ValueError, match="sequences\\[1\\] has 5 tokens.*max_positions=4"):
        sf.pack_sequences(seqs, max_positions=4)
    with pytest.raises(ValueError, match="max_positions"):
        sf.pack_sequences(seqs, max_positions=0)


def test_bad_share():
    with pytest.raises(ValueError, match="share"):
        sf.pack_sequences([[1]], share="radix")


def test_token_index_range():
    with pytest.raises(ValueError, match="sequence index"):
        sf.pack_sequences([[1]]).token_index(1)
