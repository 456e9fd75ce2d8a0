"""Host-side layouts of the packed tree for tree attention, built once per batch and cached.

Vocabulary: T packed tokens, G segments, L_g tokens of segment g, A_g tokens of its ancestors,
C_g = A_g + L_g context tokens of segment g. Everything is computed from `packed.host` (CPU tensors,
`.tolist()`), then moved to the batch's device once, and kept with `packed.cached(key, builder)`:
a model calls tree attention once per layer on the same batch, the layout is built once.

A token i of segment g attends to token j iff j's segment h is g or an ancestor of g, and j <= i.
Segments are in DFS pre-order, so the subtree of h is the contiguous segment range
[h, subtree_end[h]); in token terms, j may be seen by exactly the tokens i with
j <= i < token_subtree_end[j]: one gather per token decides the mask (used by FlexAttention).

A DAG batch (`packed.segment_ancestors`, parallel-encoded aggregation) lists each segment's
ancestors explicitly; they still precede it in token order, so "j <= i" still covers causality
and every per-segment layout (gathered contexts, block tables) is built from the same ancestor
lists. Subtrees are then not intervals: FlexAttention reads a [G, G] segment visibility instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SegmentContexts:
    """Per-segment gathered keys: segment g's queries are its own tokens, its keys are the tokens of
    its ancestors (root first) then its own, so causal attention aligned bottom-right is exact.

    ctx_index [sum C_g] int64: packed token index of every context key, segment by segment.
    cu_ctx [G+1] int32: offsets into ctx_index. max_ctx: max C_g (a Python int).
    seg_slices: per segment (q_start, q_end, ctx_start, ctx_end) as Python ints.
    masks: per segment, its [L_g, C_g] bool bottom-right causal mask on the batch's device, or None for
        a root (plain causal attention); built once here rather than per layer.
    """

    ctx_index: torch.Tensor
    cu_ctx: torch.Tensor
    max_ctx: int
    seg_slices: tuple
    masks: tuple


@dataclass(frozen=True)
class BlockTables:
    """Block tables of the Triton kernels (no gathered K/V: each program walks blocks in place).

    Query blocks: each segment cut into chunks of BLOCK_M tokens (a block never crosses segments).
    Key blocks: each segment cut into chunks of BLOCK_N tokens.
    q_start/q_end [NQ] int32: token range of query block b. q_ptr [NQ+1] int32: its key blocks are
    kv_list[q_ptr[b]:q_ptr[b+1]] (indices into k_start/k_end): its ancestors' blocks and its own
    segment's blocks up to the diagonal; those from q_mid[b] on need the in-tile mask (a partial key
    block, or one reaching past the block's first row), those before it do not.
    k_start/k_end [NK] int32: token range of key block c. k_ptr [NK+1] int32: the query blocks that see
    it are q_list[k_ptr[c]:k_ptr[c+1]]: its own segment's blocks from the diagonal on, then every
    block of every descendant segment (the reverse table of the dK/dV pass); masked ones from k_mid[c].
    Blocks are numbered longest list first, so the programs with most work start first (a shared
    prompt's key blocks are seen by every query block below them).
    kv_list_start/kv_list_end [num_pairs] int32: token range of the key block of each kv_list entry
    (k_start[kv_list], k_end[kv_list]); q_list_start/q_list_end [num_pairs] likewise for q_list. The
    kernels walk these, not the indices: a step reads its block's bounds directly (no index -> bound
    dependent load), so a pipelined loop can prefetch the next block's rows.
    """

    q_start: torch.Tensor
    q_end: torch.Tensor
    q_ptr: torch.Tensor
    q_mid: torch.Tensor
    kv_list: torch.Tensor
    k_start: torch.Tensor
    k_end: torch.Tensor
    k_ptr: torch.Tensor
    k_mid: torch.Tensor
    q_list: torch.Tensor
    kv_list_start: torch.Tensor
    kv_list_end: torch.Tensor
    q_list_start: torch.Tensor
    q_list_end: torch.Tensor
    num_pairs: int  # total (query block, key block) visits: the work of one pass


def _host_lists(packed):
    host = packed.host
    return host.cu_seqlens.tolist(), host.segment_parent.tolist()


def ancestor_chains(packed) -> list[list[int]]:
    """For each segment g, its ancestors in increasing order (not g itself): from the parent pointers
    for a forest (root first), `segment_ancestors` for a DAG."""
    if packed.host.segment_ancestors is not None:
        return [list(a) for a in packed.host.segment_ancestors]
    _, parent = _host_lists(packed)
    chains: list[list[int]] = []
    for g, p in enumerate(parent):
        chains.append([] if p < 0 else chains[p] + [p])
    return chains


def segment_visibility(packed) -> torch.Tensor:
    """[G, G] bool (host): visible[g, h] iff g's tokens may see h's tokens (h == g or an ancestor)."""
    num_seg = packed.host.num_segments
    visible = torch.eye(num_seg, dtype=torch.bool)
    for g, chain in enumerate(ancestor_chains(packed)):
        visible[g, chain] = True
    return visible


def token_segments(packed) -> torch.Tensor:
    """[T] int64 segment of every packed token (host tensor)."""
    host = packed.host
    lengths = (host.cu_seqlens[1:] - host.cu_seqlens[:-1]).to(torch.int64)
    return torch.repeat_interleave(torch.arange(host.num_segments, dtype=torch.int64), lengths)


def _build_subtree_end(packed) -> torch.Tensor:
    if packed.is_dag:
        raise ValueError(
            "packed is a DAG (parallel-encoded aggregation): its subtrees are not token intervals; "
            "use segment_visibility"
        )
    cu, parent = _host_lists(packed)
    end = [g + 1 for g in range(len(parent))]
    size = [1] * len(parent)
    for g in range(len(parent) - 1, -1, -1):  # children after parents: one reverse sweep suffices
        if parent[g] >= 0:
            end[parent[g]] = max(end[parent[g]], end[g])
            size[parent[g]] += size[g]
    bad = next((g for g in range(len(parent)) if end[g] - g != size[g]), None)
    if bad is not None:  # the interval shortcut needs the PackedBatch contract's DFS pre-order
        raise ValueError(f"packed segments are not in DFS pre-order: the subtree of segment {bad} is not contiguous")
    token_end = torch.tensor([cu[e] for e in end], dtype=torch.int64)
    seg = token_segments(packed)
    return token_end[seg].to(torch.int32).to(packed.device)


def token_subtree_end(packed) -> torch.Tensor:
    """[T] int32 on packed's device: token j is seen by the tokens i with j <= i < end[j]."""
    return packed.cached(("tree_attention", "subtree_end"), _build_subtree_end)


def _build_contexts(packed) -> SegmentContexts:
    cu, _ = _host_lists(packed)
    chains = ancestor_chains(packed)
    pieces, slices, cu_ctx, max_ctx = [], [], [0], 0
    for g, chain in enumerate(chains):
        for h in chain + [g]:
            pieces.append(torch.arange(cu[h], cu[h + 1], dtype=torch.int64))
        size = sum(cu[h + 1] - cu[h] for h in chain) + cu[g + 1] - cu[g]
        slices.append((cu[g], cu[g + 1], cu_ctx[-1], cu_ctx[-1] + size))
        cu_ctx.append(cu_ctx[-1] + size)
        max_ctx = max(max_ctx, size)
    device = packed.device
    masks = []
    for qs, qe, cs, ce in slices:
        n, c = qe - qs, ce - cs
        # query p of the segment sees context keys 0 .. (c - n) + p
        masks.append(None if n == c else torch.ones(n, c, dtype=torch.bool).tril(c - n).to(device))
    return SegmentContexts(
        ctx_index=torch.cat(pieces).to(device),
        cu_ctx=torch.tensor(cu_ctx, dtype=torch.int32).to(device),
        max_ctx=max_ctx,
        seg_slices=tuple(slices),
        masks=tuple(masks),
    )


def segment_contexts(packed) -> SegmentContexts:
    """`SegmentContexts` of the batch on its device (built on the host once, cached)."""
    return packed.cached(("tree_attention", "contexts"), _build_contexts)


def _chunks(lo: int, hi: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, hi)) for s in range(lo, hi, size)]


def _longest_first(lists: list[list[int]]) -> list[int]:
    return sorted(range(len(lists)), key=lambda i: -len(lists[i]))  # stable: ties keep token order


def _csr(lists: list[list[int]], order: list[int], unmasked, renumber: list[int]):
    """(ptr, mid, flat): `lists` taken in `order`, each list's unmasked entries first (mid: where its
    masked ones start), entries renumbered through `renumber`."""
    ptr, mid, flat = [0], [], []
    for i in order:
        free = [j for j in lists[i] if unmasked(i, j)]
        masked = [j for j in lists[i] if not unmasked(i, j)]
        mid.append(len(flat) + len(free))
        flat += [renumber[j] for j in free + masked]
        ptr.append(len(flat))
    return ptr, mid, flat


def _inverse(order: list[int]) -> list[int]:
    inv = [0] * len(order)
    for new, old in enumerate(order):
        inv[old] = new
    return inv


def build_block_tables(packed, block_m: int, block_n: int) -> BlockTables:
    """Forward (query block -> key blocks) and reverse (key block -> query blocks) tables, on the host."""
    cu, parent = _host_lists(packed)
    chains = ancestor_chains(packed)
    num_seg = len(parent)
    q_blocks = [_chunks(cu[g], cu[g + 1], block_m) for g in range(num_seg)]
    k_blocks = [_chunks(cu[g], cu[g + 1], block_n) for g in range(num_seg)]
    k_first = [0] * (num_seg + 1)  # id of segment g's first key block (token order)
    q_first = [0] * (num_seg + 1)
    for g in range(num_seg):
        k_first[g + 1] = k_first[g] + len(k_blocks[g])
        q_first[g + 1] = q_first[g] + len(q_blocks[g])

    fwd: list[list[int]] = []  # per query block: key blocks it sees
    for g in range(num_seg):
        ancestors = [c for h in chains[g] for c in range(k_first[h], k_first[h + 1])]
        for qs, qe in q_blocks[g]:
            fwd.append(ancestors + [k_first[g] + i for i, (ks, _) in enumerate(k_blocks[g]) if ks <= qe - 1])
    descendants: list[list[int]] = [[] for _ in range(num_seg)]  # query blocks of strict descendants
    for g, chain in enumerate(chains):  # increasing g: in a forest, each list in DFS pre-order
        if chain and chain[-1] >= g:
            # the kernels' in-tile mask is "key <= query": an ancestor must precede its descendants
            raise ValueError(f"segment {g} has ancestor {chain[-1]} at or after it: ancestors must precede")
        for h in chain:
            descendants[h].extend(range(q_first[g], q_first[g + 1]))
    rev: list[list[int]] = []  # per key block: query blocks that see it
    for g in range(num_seg):
        for ks, ke in k_blocks[g]:
            rev.append([q_first[g] + i for i, (_, qe) in enumerate(q_blocks[g]) if qe - 1 >= ks] + descendants[g])

    flat_q = [b for blocks in q_blocks for b in blocks]
    flat_k = [b for blocks in k_blocks for b in blocks]

    def unmasked(b: int, c: int) -> bool:  # a full key block wholly at or before the query block's first row
        (qs, _), (ks, ke) = flat_q[b], flat_k[c]
        return ke - ks == block_n and ke - 1 <= qs

    q_order, k_order = _longest_first(fwd), _longest_first(rev)
    q_ptr, q_mid, kv_list = _csr(fwd, q_order, unmasked, _inverse(k_order))
    k_ptr, k_mid, q_list = _csr(rev, k_order, lambda c, b: unmasked(b, c), _inverse(q_order))

    def i32(x):
        return torch.tensor(x, dtype=torch.int32)

    q_ranges = [flat_q[b] for b in q_order]  # token range of each (renumbered) block
    k_ranges = [flat_k[c] for c in k_order]
    return BlockTables(
        q_start=i32([r[0] for r in q_ranges]),
        q_end=i32([r[1] for r in q_ranges]),
        q_ptr=i32(q_ptr),
        q_mid=i32(q_mid),
        kv_list=i32(kv_list),
        k_start=i32([r[0] for r in k_ranges]),
        k_end=i32([r[1] for r in k_ranges]),
        k_ptr=i32(k_ptr),
        k_mid=i32(k_mid),
        q_list=i32(q_list),
        kv_list_start=i32([k_ranges[c][0] for c in kv_list]),
        kv_list_end=i32([k_ranges[c][1] for c in kv_list]),
        q_list_start=i32([q_ranges[b][0] for b in q_list]),
        q_list_end=i32([q_ranges[b][1] for b in q_list]),
        num_pairs=len(kv_list),
    )


def block_tables(packed, block_m: int, block_n: int) -> BlockTables:
    """`BlockTables` for (block_m, block_n) on the batch's device (built on the host once, cached)."""

    def build(batch):
        tables = build_block_tables(batch, block_m, block_n)
        return BlockTables(
            **{k: (v.to(batch.device) if isinstance(v, torch.Tensor) else v) for k, v in tables.__dict__.items()}
        )

    return packed.cached(("tree_attention", "blocks", block_m, block_n), build)


def allowed_pairs(packed) -> int:
    """Number of (query, key) token pairs the tree mask allows: sum over segments of
    L_g * A_g + L_g (L_g + 1) / 2 (the work of an exact attention; used for TFLOP/s)."""
    contexts = segment_contexts(packed.host)
    total = 0
    for qs, qe, cs, ce in contexts.seg_slices:
        n = qe - qs
        total += n * (ce - cs - n) + n * (n + 1) // 2
    return total
