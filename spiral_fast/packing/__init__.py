"""Prefix-shared packing: `pack_sequences` -> `PackedBatch` (segments of a radix tree over token ids,
prediction rows for the log-prob op). Layouts are built by C++ (`spiral_fast.packing._native`) when
compiled, else by the pure-Python reference (`spiral_fast.packing.reference`); importing this package
warns once when the C++ builder is missing (`native.PackingFallbackWarning`).

The `PackedBatch` container is defined in the ops layer (`spiral_fast.ops.packed`), which reads it;
it is re-exported here beside its builders."""

from spiral_fast.ops.packed import PackedBatch, PredictionRows
from spiral_fast.packing.pack import pack_sequences

__all__ = ["PackedBatch", "PredictionRows", "pack_sequences"]
