"""Pure-Python layout builder: the spec that the C++ builder (csrc/packing.cpp) is tested against.

A per-token trie (one node per unique prefix, children in first-insertion order), compressed into
segments: a segment is a maximal chain of trie nodes that neither branches nor ends a sequence
before its last node. Segments are numbered in DFS pre-order, children in first-insertion order.
Without sharing, every sequence is one root segment, in input order.
"""

from __future__ import annotations

import torch


def _segments(seqs: list[list[int]]):
    """Radix-tree segments of `seqs`: (cu_seqlens, segment_parent, seq_segment, token_index per seq)."""
    # trie node 0 is the virtual root (no token); dicts keep insertion order = child order
    children: list[dict[int, int]] = [{}]
    ends = [False]
    paths = []  # trie node of every token of every sequence
    for seq in seqs:
        node, path = 0, []
        for tok in seq:
            nxt = children[node].get(tok)
            if nxt is None:
                nxt = len(children)
                children[node][tok] = nxt
                children.append({})
                ends.append(False)
            node = nxt
            path.append(node)
        ends[node] = True
        paths.append(path)

    packed_of_node = [-1] * len(children)
    segment_of_node = [-1] * len(children)
    cu_seqlens = [0]
    segment_parent = []
    # explicit stack (no recursion): deep chains would exceed Python's recursion limit
    stack = [(child, -1) for child in reversed(children[0].values())]
    while stack:
        node, parent = stack.pop()
        seg = len(segment_parent)
        segment_parent.append(parent)
        end = cu_seqlens[-1]
        while True:
            packed_of_node[node] = end
            segment_of_node[node] = seg
            end += 1
            if ends[node] or len(children[node]) != 1:
                break
            (node,) = children[node].values()
        cu_seqlens.append(end)
        stack.extend((child, seg) for child in reversed(children[node].values()))
    seq_segment = [segment_of_node[path[-1]] for path in paths]
    token_index = [[packed_of_node[n] for n in path] for path in paths]
    return cu_seqlens, segment_parent, seq_segment, token_index


def pack_layout(sequences: list[torch.Tensor], share: bool):
    """Fields of a PackedBatch for S non-empty sequences of token ids (validated by the caller):
    (input_ids [T], position_ids [T], cu_seqlens [G+1] int32, segment_parent [G], seq_segment [S],
    hidden_index [R], target [R], seq [R], pos [R]), int64 unless noted."""
    seqs = [s.tolist() for s in sequences]
    if share:
        cu_seqlens, segment_parent, seq_segment, token_index = _segments(seqs)
    else:
        cu_seqlens, token_index = [0], []
        for seq in seqs:
            token_index.append(list(range(cu_seqlens[-1], cu_seqlens[-1] + len(seq))))
            cu_seqlens.append(cu_seqlens[-1] + len(seq))
        segment_parent, seq_segment = [-1] * len(seqs), list(range(len(seqs)))
    input_ids = [0] * cu_seqlens[-1]
    position_ids = [0] * cu_seqlens[-1]
    rows = ([], [], [], [])
    for i, (seq, idx) in enumerate(zip(seqs, token_index)):
        for p, (tok, t) in enumerate(zip(seq, idx)):
            input_ids[t], position_ids[t] = tok, p
            if p >= 1:  # the token at p - 1 predicts this one
                for col, value in zip(rows, (idx[p - 1], tok, i, p)):
                    col.append(value)
    as_tensor = lambda xs, dtype=torch.int64: torch.tensor(xs, dtype=dtype)  # noqa: E731
    return (
        as_tensor(input_ids),
        as_tensor(position_ids),
        as_tensor(cu_seqlens, torch.int32),
        as_tensor(segment_parent),
        as_tensor(seq_segment),
        *map(as_tensor, rows),
    )
