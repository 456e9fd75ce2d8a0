"""Prefix-shared packing: `pack_sequences` -> `PackedBatch` (segments of a radix tree over token ids,
prediction rows for the log-prob op). Layouts are built by C++ (`spiral_fast._native`) when compiled,
else by the pure-Python reference (`spiral_fast.packing.reference`).

Importing this package registers tree attention's self-check (`spiral_fast.packing.self_check`)."""
from spiral_fast.packing import self_check as _self_check  # noqa: F401 - registers tree_attention's check
from spiral_fast.packing.batch import PackedBatch, PredictionRows
from spiral_fast.packing.pack import pack_sequences

__all__ = ["PackedBatch", "PredictionRows", "pack_sequences"]
