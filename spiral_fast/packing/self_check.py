"""``self_check`` under its earlier import path: it lives in ``spiral_fast.ops.checks`` (the ops layer
owns every op's self-check, tree attention's included) and is re-exported here."""

from spiral_fast.ops.checks import self_check

__all__ = ["self_check"]
