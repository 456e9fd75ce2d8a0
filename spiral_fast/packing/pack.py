"""`pack_sequences`: validate token sequences and pack them as a prefix-shared forest (or plain varlen)."""

from __future__ import annotations

import torch

from spiral_fast.packing import native
from spiral_fast.packing.batch import PackedBatch, assemble
from spiral_fast.packing.dag import check_contexts, check_share_limits, pack_dag, private_suffixes, restore_tokens

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _as_tokens(i: int, seq) -> torch.Tensor:
    """Sequence i as a 1-D int64 CPU tensor, or ValueError naming i."""
    if isinstance(seq, torch.Tensor):
        t = seq.detach()
    elif isinstance(seq, (list, tuple)):
        try:
            t = torch.tensor(seq) if len(seq) else torch.empty(0, dtype=torch.int64)
        except (TypeError, ValueError, RuntimeError) as exc:  # strings, ragged nesting, int64 overflow
            raise ValueError(f"sequences[{i}] must hold integer token ids: {exc}") from None
    else:
        raise ValueError(f"sequences[{i}] must be a list or a 1-D integer tensor, got {type(seq).__name__}")
    if t.dim() != 1:
        raise ValueError(f"sequences[{i}] must be 1-D, got shape {tuple(t.shape)}")
    if t.dtype not in _INT_DTYPES:
        raise ValueError(f"sequences[{i}] must hold integer token ids, got dtype {t.dtype}")
    if t.numel() == 0:
        raise ValueError(f"sequences[{i}] is empty")
    t = t.to(device="cpu", dtype=torch.int64).contiguous()
    if int(t.min()) < 0:
        p = int(torch.nonzero(t < 0)[0])
        raise ValueError(f"sequences[{i}] has a negative token id {int(t[p])} at position {p}")
    return t


def pack_sequences(
    sequences,
    *,
    share: str = "trie",
    max_positions: int | None = None,
    builder: str = "auto",
    contexts=None,
    share_limits=None,
) -> PackedBatch:
    """Pack S token sequences into one `PackedBatch` of T unique tokens.

    sequences: list of 1-D integer tensors or lists of token ids (each non-empty, ids >= 0).
    share: "trie" encodes every shared prefix once (a radix tree over token ids: two sequences
        share exactly their longest common prefix); "none" is plain varlen packing (one root
        segment per sequence).
    max_positions: if given, a sequence longer than this raises (e.g. the model's
        max_position_embeddings).
    builder: "auto" (C++ when built, else Python), "cpp" or "python"; all give identical batches.
    contexts: None (a forest) or one entry per sequence, None or a list of indices of sequences
        without a context: sequence k then attends to every packed token of those sequences
        (whatever their order) and causally to its own, at positions from max of their lengths on.
        The layout is a DAG (`PackedBatch.segment_ancestors`); sequences with the same context share
        prefixes among themselves (parallel-encoded aggregation: h_j + z_jg over x + y_i, i in S_j).
    share_limits: None or one entry per sequence, None or n: only the first n tokens of the
        sequence may be shared with other sequences, the rest are its own packed tokens. With
        n = |x| for every x + y_i, a set's aggregator sees x once and each member trace whole, even
        when two members start alike (K copies of a shared span, as in the concatenated KV caches
        of a rollout or a text prompt), not their union.
    Bad input raises ValueError naming the sequence index.
    """
    if share not in ("trie", "none"):
        raise ValueError(f"share must be 'trie' or 'none', got {share!r}")
    if not isinstance(sequences, (list, tuple)):
        raise ValueError(f"sequences must be a list of token sequences, got {type(sequences).__name__}")
    if len(sequences) == 0:
        raise ValueError("sequences is empty: nothing to pack")
    if max_positions is not None and (
        isinstance(max_positions, bool) or not isinstance(max_positions, int) or max_positions < 1
    ):
        raise ValueError(f"max_positions must be a positive int or None, got {max_positions!r}")
    seqs = [_as_tokens(i, s) for i, s in enumerate(sequences)]
    lengths = torch.tensor([s.numel() for s in seqs], dtype=torch.int64)
    ctx = None if contexts is None else check_contexts(contexts, len(seqs))
    offsets = [max((int(lengths[c]) for c in cs), default=0) for cs in ctx] if ctx else [0] * len(seqs)
    ends = [o + int(n) for o, n in zip(offsets, lengths)]
    if max_positions is not None and max(ends) > max_positions:
        i = next(i for i, e in enumerate(ends) if e > max_positions)
        where = f" at positions {offsets[i]}..{ends[i] - 1}" if offsets[i] else ""
        raise ValueError(f"sequences[{i}] has {int(lengths[i])} tokens{where}, more than max_positions={max_positions}")
    limits = None if share_limits is None else check_share_limits(share_limits, len(seqs))
    keyed = seqs if limits is None else private_suffixes(seqs, limits)
    if ctx is None or not any(ctx):
        fields, ancestors = native.pack_layout(keyed, share == "trie", builder=builder), None
    else:
        fields, ancestors = pack_dag(keyed, ctx, share == "trie", builder)
    if keyed is not seqs:
        fields = restore_tokens(fields, seqs)
    return assemble(fields, lengths, share, segment_ancestors=ancestors)
