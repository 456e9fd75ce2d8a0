"""The self-check of tree attention and ``self_check()``, which checks every op.

Tree attention's check lives here, not beside the op in ``spiral_fast.ops``: its input is a
``PackedBatch`` built by ``pack_sequences``, and the packing layer sits above the ops layer.
``spiral_fast.packing`` imports this module, so the check is registered whenever a ``PackedBatch``
exists, i.e. whenever ``backend="auto"`` can resolve tree attention.

``self_check()`` is here because this is the lowest layer that may import every op module (the
log-prob ops, tree attention, and the policy loss of ``spiral_fast.algorithm``); each of them
registers its own check with ``spiral_fast.ops.self_check``.
"""
from __future__ import annotations

from spiral_fast.algorithm import policy_loss as _policy_loss  # noqa: F401 - registers policy_loss
from spiral_fast.ops import self_check as registry
from spiral_fast.ops.logprobs import op as _logprobs  # noqa: F401 - registers the two log-prob ops
from spiral_fast.ops.self_check import compare, dot_dtypes, randn, register_self_check, three_ways
from spiral_fast.ops.tree_attention.op import tree_attention
from spiral_fast.packing.pack import pack_sequences


def self_check(device=None) -> dict[str, str]:
    """Check every Triton op against its torch path on ``device`` (default: the current CUDA device,
    else the CPU, where Triton needs TRITON_INTERPRET=1 set before it is imported).

    Returns ``{op name: "ok" | "mismatch: ..." | "error: ..."}`` with one entry per op
    (``token_logprobs`` and ``tree_attention`` forward and backward, ``logprobs_from_logits``,
    ``policy_loss``), each over float32, float16 and bfloat16 inputs (bf16 not for dot-based ops on
    a CPU). Never raises for a failing op.
    """
    return registry.self_check(device)


def _check_tree_attention(device, dtype, gen):
    # a shared prompt with three branches (one a single token) and an unrelated sequence
    long = 150 if device.type == "cuda" else 30   # over one (64-token on a GPU) block of every kind
    prompt = list(range(1, long))
    packed = pack_sequences([prompt + [50, 51, 52], prompt + [60] * long, prompt + [70], [80] * 25]).to(device)
    t, hq, hkv, d = packed.num_tokens, 4, 2, 64
    inputs = [randn(gen, t, hq, d, device=device), randn(gen, t, hkv, d, device=device),
              randn(gen, t, hkv, d, device=device)]
    upstream = [randn(gen, t, hq, d, device=device).double()]

    def fn(q, k, v, backend):
        return tree_attention(q, k, v, packed, backend=backend)

    compare(("out", "dq", "dk", "dv"), dtype, *three_ways(fn, inputs, upstream, dtype))


register_self_check("tree_attention", _check_tree_attention, dtypes=dot_dtypes)
