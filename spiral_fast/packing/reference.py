"""Pure-Python layout builder: the spec that the C++ builder (csrc/packing.cpp) is tested against.

A per-token trie (one node per unique prefix, children in first-insertion order), compressed into
segments: a segment is a maximal chain of trie nodes that neither branches nor ends a sequence
before its last node. Segments are numbered in DFS pre-order, children in first-insertion order.
"""
from __future__ import annotations

import torch


def trie_layout(flat_tokens: torch.Tensor, offsets: torch.Tensor):
    """Layout of S sequences (concatenated in `flat_tokens [N]`, bounds `offsets [S+1]`).

    Returns (token_index [N], cu_seqlens [G+1], segment_parent [G], seq_segment [S]), all int64.
    """
    tokens = flat_tokens.tolist()
    bounds = offsets.tolist()
    # trie node 0 is the virtual root (no token); dicts keep insertion order = child order
    children: list[dict[int, int]] = [{}]
    ends = [False]
    end_node = []
    for s in range(len(bounds) - 1):
        node = 0
        for tok in tokens[bounds[s]:bounds[s + 1]]:
            nxt = children[node].get(tok)
            if nxt is None:
                nxt = len(children)
                children[node][tok] = nxt
                children.append({})
                ends.append(False)
            node = nxt
        ends[node] = True
        end_node.append(node)

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

    token_index = []
    for s in range(len(bounds) - 1):
        node = 0
        for tok in tokens[bounds[s]:bounds[s + 1]]:
            node = children[node][tok]
            token_index.append(packed_of_node[node])
    seq_segment = [segment_of_node[n] for n in end_node]
    as_tensor = lambda xs: torch.tensor(xs, dtype=torch.int64)  # noqa: E731
    return as_tensor(token_index), as_tensor(cu_seqlens), as_tensor(segment_parent), as_tensor(seq_segment)
