"""``self_check()``: every op's Triton path against its torch path (``spiral_fast.self_check``).

Each op registers its own check beside its definition (``spiral_fast.ops.self_check``): importing
the op modules here registers all of them, so ``self_check()`` always checks every op, whatever the
caller imported before. Every op lives in this layer, so nothing above it is needed.
"""

from __future__ import annotations

from spiral_fast.ops import self_check as registry
from spiral_fast.ops.logprobs import op as _logprobs  # noqa: F401 - registers the two log-prob ops
from spiral_fast.ops.policy_loss import op as _policy_loss  # noqa: F401 - registers policy_loss
from spiral_fast.ops.tree_attention import op as _tree_attention  # noqa: F401 - registers tree_attention


def self_check(device=None) -> dict[str, str]:
    """Check every Triton op against its torch path on ``device`` (default: the current CUDA device,
    else the CPU, where Triton needs TRITON_INTERPRET=1 set before it is imported).

    Returns ``{op name: "ok" | "mismatch: ..." | "error: ..."}`` with one entry per op
    (``token_logprobs`` and ``tree_attention`` forward and backward, ``logprobs_from_logits``,
    ``policy_loss``), each over float32, float16 and bfloat16 inputs (bf16 not for dot-based ops on
    a CPU). Never raises for a failing op.
    """
    return registry.self_check(device)
