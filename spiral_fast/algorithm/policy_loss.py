"""``policy_loss`` is an op: it lives in ``spiral_fast.ops.policy_loss.op`` (beside its Triton path and
self-check, which the ops layer owns) and is re-exported here under its earlier import path."""

from spiral_fast.ops.policy_loss.op import BACKENDS, CPU_CHUNK, PolicyLossStats, check_clip, policy_loss

__all__ = ["BACKENDS", "CPU_CHUNK", "PolicyLossStats", "check_clip", "policy_loss"]
