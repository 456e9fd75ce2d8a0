"""`PackedBatch`, `PredictionRows` and `assemble`, defined in `spiral_fast.ops.packed` (the container
sits in the lowest layer that reads it, tree attention's) and re-exported here, beside the builders
that fill it."""

from spiral_fast.ops.packed import PackedBatch, PredictionRows, assemble

__all__ = ["PackedBatch", "PredictionRows", "assemble"]
