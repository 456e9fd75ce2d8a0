"""Prefix-shared packing: `pack_sequences` -> `PackedBatch` (segments of a radix tree over token ids,
prediction rows for the log-prob op). Layouts are built by C++ (`spiral_fast._native`) when compiled,
else by the pure-Python reference (`spiral_fast.packing.reference`)."""
from spiral_fast.packing.batch import PackedBatch, PredictionRows
from spiral_fast.packing.pack import pack_sequences

__all__ = ["PackedBatch", "PredictionRows", "pack_sequences"]
