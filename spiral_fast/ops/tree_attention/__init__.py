"""Tree attention over a prefix-shared packed batch (`spiral_fast.tree_attention`)."""

from spiral_fast.ops.tree_attention.op import BACKENDS, tree_attention

__all__ = ["BACKENDS", "tree_attention"]
