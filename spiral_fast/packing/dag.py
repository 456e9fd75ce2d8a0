"""The DAG layout: sequences that attend to other sequences' tokens (parallel-encoded aggregation).

Built in Python on top of the trie builder (C++ or Python, identical results): the root sequences
(no context) are packed as today's prefix forest; the sequences with a context are grouped by the
segments they see, and each group is packed as its own forest (trie sharing within the group: a
set's head h_j is encoded once for its G responses) whose root segments get the context's segments
as extra ancestors. Groups come after the forest, so every ancestor token precedes its descendants
in the packed order (what the kernels' one-test in-tile mask relies on).

A sequence k with context C_k (indices of root sequences) attends to every token of every sequence
in C_k, then causally to its own tokens; its positions start at p_k = max over c in C_k of len(c)
(the SPIRAL head h_j after x + y_i, i in S_j: p_j = |x| + max |y_i|). The order of C_k does not
matter: the layout is built from the set of segments it covers.
"""

from __future__ import annotations

import torch

from spiral_fast.packing import native


def check_contexts(contexts, num_sequences: int) -> list[tuple[int, ...]]:
    """contexts (one entry per sequence: None or a list of root-sequence indices) -> sorted tuples;
    ValueError naming the entry on a bad index, a duplicate, a self-reference or a nested context."""
    if not isinstance(contexts, (list, tuple)):
        raise ValueError(f"contexts must be a list (one entry per sequence) or None, got {type(contexts).__name__}")
    if len(contexts) != num_sequences:
        raise ValueError(f"contexts has {len(contexts)} entries but there are {num_sequences} sequences")
    out = []
    for k, ctx in enumerate(contexts):
        if ctx is None:
            out.append(())
            continue
        if isinstance(ctx, torch.Tensor):
            ctx = ctx.tolist()
        if not isinstance(ctx, (list, tuple)) or any(isinstance(c, bool) or not isinstance(c, int) for c in ctx):
            raise ValueError(f"contexts[{k}] must be None or a list of sequence indices, got {ctx!r}")
        for c in ctx:
            if not 0 <= c < num_sequences:
                raise ValueError(f"contexts[{k}] names sequence {c}, but there are only {num_sequences} sequences")
            if c == k:
                raise ValueError(f"contexts[{k}] names sequence {k} itself")
        if len(set(ctx)) != len(ctx):
            raise ValueError(f"contexts[{k}] lists a sequence more than once: {list(ctx)}")
        out.append(tuple(sorted(ctx)))
    for k, ctx in enumerate(out):
        for c in ctx:
            if out[c]:
                raise ValueError(
                    f"contexts[{k}] names sequence {c}, which has a context itself (contexts are one level deep)"
                )
    return out


def check_share_limits(share_limits, num_sequences: int) -> list[int | None]:
    """share_limits (one entry per sequence: None or an int >= 0) as a list; ValueError naming the entry."""
    if not isinstance(share_limits, (list, tuple)):
        raise ValueError(
            f"share_limits must be a list (one entry per sequence) or None, got {type(share_limits).__name__}"
        )
    if len(share_limits) != num_sequences:
        raise ValueError(f"share_limits has {len(share_limits)} entries but there are {num_sequences} sequences")
    for i, n in enumerate(share_limits):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"share_limits[{i}] must be None or an int >= 0, got {n!r}")
    return list(share_limits)


def private_suffixes(seqs: list[torch.Tensor], limits: list[int | None]) -> list[torch.Tensor]:
    """Sequences whose tokens past their share limit are replaced by an id of their own (one past
    every real id, plus the sequence index): the trie then shares nothing past the limit.
    `restore_tokens` puts the real ids back into the packed fields."""
    base = 1 + max(int(s.max()) for s in seqs)
    out = []
    for i, (s, n) in enumerate(zip(seqs, limits)):
        if n is None or n >= s.numel():
            out.append(s)
        else:
            out.append(torch.cat([s[:n], torch.full((s.numel() - n,), base + i, dtype=s.dtype)]))
    return out


def restore_tokens(fields, seqs: list[torch.Tensor]):
    """Builder fields with the real token ids of `seqs` in input_ids and the row targets (rows are in
    (seq, pos) order: the targets are every sequence's tokens 1.. in order)."""
    input_ids, position_ids, cu, parent, seq_segment, hidden_index, target, seq, pos = fields
    input_ids = input_ids.clone()
    input_ids[hidden_index] = torch.cat([s[:-1] for s in seqs])
    input_ids[cu[seq_segment + 1].to(torch.int64) - 1] = torch.stack([s[-1] for s in seqs])
    target = torch.cat([s[1:] for s in seqs])
    return input_ids, position_ids, cu, parent, seq_segment, hidden_index, target, seq, pos


def _chains(parent: list[int]) -> list[list[int]]:
    chains: list[list[int]] = []
    for p in parent:
        chains.append([] if p < 0 else chains[p] + [p])
    return chains


def pack_dag(seqs: list[torch.Tensor], contexts: list[tuple[int, ...]], share: bool, builder: str):
    """(fields as in `reference.pack_layout`, segment_ancestors) of validated sequences with contexts.

    segment_ancestors: per segment, the sorted tuple of every segment its tokens see besides itself.
    """
    roots = [k for k, c in enumerate(contexts) if not c]
    groups: dict[tuple, list[int]] = {}  # (ancestor segments, position offset) -> sequences, in order
    tree = native.pack_layout([seqs[k] for k in roots], share, builder=builder)
    t_parent, t_seqseg = tree[3].tolist(), tree[4].tolist()
    chains = _chains(t_parent)
    root_pos = {k: r for r, k in enumerate(roots)}
    for k, ctx in enumerate(contexts):
        if ctx:
            segs = {s for c in ctx for s in chains[t_seqseg[root_pos[c]]] + [t_seqseg[root_pos[c]]]}
            offset = max(seqs[c].numel() for c in ctx)
            groups.setdefault((tuple(sorted(segs)), offset), []).append(k)

    parts = [(tree, roots, 0, ())]
    parts += [
        (native.pack_layout([seqs[k] for k in members], share, builder=builder), members, offset, segs)
        for (segs, offset), members in groups.items()
    ]
    ids, pos_ids, cu, parent, seq_segment = [], [], [torch.zeros(1, dtype=torch.int64)], [], [0] * len(seqs)
    rows = ([], [], [], [])
    ancestors: list[tuple[int, ...]] = []
    tok0 = seg0 = 0
    for fields, members, offset, ctx_segs in parts:
        f_ids, f_pos, f_cu, f_parent, f_seqseg, h_idx, target, r_seq, r_pos = fields
        ids.append(f_ids)
        pos_ids.append(f_pos + offset)
        cu.append(f_cu[1:].to(torch.int64) + tok0)
        parent.append(torch.where(f_parent >= 0, f_parent + seg0, f_parent))
        for local, k in enumerate(members):
            seq_segment[k] = int(f_seqseg[local]) + seg0
        for chain in _chains(f_parent.tolist()):
            ancestors.append(ctx_segs + tuple(h + seg0 for h in chain))
        global_seq = torch.tensor(members, dtype=torch.int64)
        for col, value in zip(rows, (h_idx + tok0, target, global_seq[r_seq], r_pos)):
            col.append(value)
        tok0 += f_ids.numel()
        seg0 += f_parent.numel()
    seq = torch.cat(rows[2])
    order = torch.argsort(seq, stable=True)  # rows in (seq, pos) order: each part's rows are in pos order
    fields = (
        torch.cat(ids),
        torch.cat(pos_ids),
        torch.cat(cu).to(torch.int32),
        torch.cat(parent),
        torch.tensor(seq_segment, dtype=torch.int64),
        *(torch.cat(col)[order] for col in rows),
    )
    return fields, tuple(ancestors)
