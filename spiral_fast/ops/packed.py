"""`PackedBatch`: a batch of token sequences packed as a forest of shared prefixes (a plain container).

Vocabulary: S sequences, T unique (packed) tokens, G segments (radix-tree nodes), R prediction rows
(R = sum(len_i - 1)). Everything is built once on the host; `to(device)` moves the tensors and keeps
the Python-int metadata and the host copy, so derived layouts never need a device sync.

The container lives in the ops layer, the lowest one that reads it (tree attention takes it as an
argument and owns its self-check); the builders that fill it (`spiral_fast.pack_sequences`, the C++
and Python layout builders) sit above, in `spiral_fast.packing`, which re-exports these names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch


class PredictionRows(NamedTuple):
    """One row per predicted token, ordered by (seq, pos), each field `[R] int64`.

    `hidden_index`: packed index of the token at p-1 of sequence `seq` (its hidden state predicts
    position p; it may sit in a shared prefix). `target`: the token id at position p. `pos`: p >= 1.
    """

    hidden_index: torch.Tensor
    target: torch.Tensor
    seq: torch.Tensor
    pos: torch.Tensor

    def to(self, device) -> PredictionRows:
        return PredictionRows(*(t.to(device) for t in self))


_TENSOR_FIELDS = ("input_ids", "position_ids", "cu_seqlens", "segment_parent", "seq_segment", "seq_lengths")


@dataclass(frozen=True, eq=False)
class PackedBatch:
    """Unique tokens of S sequences laid out as segments of a radix tree (DFS pre-order).

    input_ids [T] int64        unique tokens; segment g holds [cu_seqlens[g], cu_seqlens[g+1])
    position_ids [T] int64     position of each token in its own sequence (its depth in the tree)
    cu_seqlens [G+1] int32     segment offsets
    segment_parent [G] int64   parent segment (< g), -1 for a root
    seq_segment [S] int64      last segment of sequence i: its tokens are the segments on the path
                               root -> seq_segment[i], each segment whole
    seq_lengths [S] int64
    prediction_rows            `PredictionRows`, R = sum(len_i - 1) rows ordered by (seq, pos)
    segment_ancestors          None for a forest (ancestors follow segment_parent); for a DAG
                               (`pack_sequences(..., contexts=...)`) a tuple, per segment, of the
                               sorted indices of every segment it sees besides itself (each < g, its
                               tokens before g's). segment_parent is then the parent within the
                               segment's own forest, and seq_segment the last segment of sequence i's
                               own tokens (the context segments are not on that path).

    Attention semantics: a token of segment g sees every token of the ancestor segments of g and,
    causally, the tokens of g up to itself. max_context is the largest position + 1 (a forest: the
    longest sequence). Equality compares every field (tensors by value), never the per-batch cache.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    segment_parent: torch.Tensor
    seq_segment: torch.Tensor
    seq_lengths: torch.Tensor
    prediction_rows: PredictionRows
    num_tokens: int
    num_segments: int
    num_sequences: int
    max_seqlen: int
    max_context: int
    dedup_ratio: float
    share: str
    segment_ancestors: tuple | None = None
    _host: PackedBatch | None = field(default=None, repr=False)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def host(self) -> PackedBatch:
        """The CPU copy of this batch (itself when already on the CPU)."""
        return self if self._host is None else self._host

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    def to(self, device) -> PackedBatch:
        """A copy with every tensor on `device`; metadata and `host` kept, cache fresh."""
        device = torch.device(device)
        if device.type == self.device.type and device.index in (None, self.device.index):
            return self
        if device.type == "cpu":
            return self.host
        moved = {name: getattr(self, name).to(device, non_blocking=True) for name in _TENSOR_FIELDS}
        return dataclasses.replace(
            self, **moved, prediction_rows=self.prediction_rows.to(device), _host=self.host, _cache={}
        )

    def cached(self, key: Any, builder: Callable[[PackedBatch], Any]) -> Any:
        """`builder(self)` computed once per batch (per device copy) and kept under `key`: for derived
        layouts such as attention block tables, built on the host once rather than per layer."""
        if key not in self._cache:
            self._cache[key] = builder(self)
        return self._cache[key]

    def token_index(self, i: int) -> torch.Tensor:
        """Packed indices `[len_i] int64` of the tokens of sequence i, in order."""
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < self.num_sequences:
            raise ValueError(f"i must be a sequence index in [0, {self.num_sequences}), got {i!r}")
        host = self.host
        row_start = host.cached("_row_offsets", _row_offsets)
        lo, hi = int(row_start[i]), int(row_start[i + 1])
        last = host.cu_seqlens[int(host.seq_segment[i]) + 1].to(torch.int64) - 1
        # rows of sequence i hold the indices of its tokens 0..len-2; the last token closes the segment
        return torch.cat([self.prediction_rows.hidden_index[lo:hi], last.reshape(1).to(self.device)])

    def __eq__(self, other) -> bool:
        if not isinstance(other, PackedBatch):
            return NotImplemented
        scalars = (
            "num_tokens",
            "num_segments",
            "num_sequences",
            "max_seqlen",
            "max_context",
            "dedup_ratio",
            "share",
            "segment_ancestors",
        )
        if any(getattr(self, n) != getattr(other, n) for n in scalars):
            return False
        pairs = [(getattr(self, n), getattr(other, n)) for n in _TENSOR_FIELDS]
        pairs += list(zip(self.prediction_rows, other.prediction_rows))
        return all(a.dtype == b.dtype and a.device == b.device and torch.equal(a, b) for a, b in pairs)

    __hash__ = object.__hash__

    @property
    def is_dag(self) -> bool:
        """Whether some segment sees segments off its parent chain (parallel-encoded aggregation)."""
        return self.segment_ancestors is not None


def _row_offsets(batch: PackedBatch) -> torch.Tensor:
    """[S+1] start of each sequence's prediction rows (host tensor)."""
    counts = batch.host.seq_lengths - 1
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def assemble(fields, seq_lengths: torch.Tensor, share: str, segment_ancestors: tuple | None = None) -> PackedBatch:
    """`PackedBatch` from a builder's fields (input_ids, position_ids, cu_seqlens, segment_parent,
    seq_segment, hidden_index, target, seq, pos), `seq_lengths [S] int64` and, for a DAG, the
    per-segment ancestor tuples."""
    input_ids, position_ids, cu_seqlens, segment_parent, seq_segment, *rows = fields
    num_tokens = input_ids.numel()
    seg_lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    return PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        cu_seqlens=cu_seqlens,
        segment_parent=segment_parent,
        seq_segment=seq_segment,
        seq_lengths=seq_lengths,
        prediction_rows=PredictionRows(*rows),
        num_tokens=num_tokens,
        num_segments=seg_lengths.numel(),
        num_sequences=seq_lengths.numel(),
        max_seqlen=int(seg_lengths.max()),
        max_context=int(position_ids.max()) + 1,
        dedup_ratio=float(seq_lengths.sum()) / num_tokens,
        share=share,
        segment_ancestors=segment_ancestors,
    )
