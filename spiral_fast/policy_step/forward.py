"""The packed forward that ``step`` and ``batch_logprobs`` share: the model's LM head, and the
log-probs of the response tokens of a list of sequences packed into one prefix tree."""

from __future__ import annotations

import torch

from spiral_fast.models import packed_hidden_states
from spiral_fast.ops.logprobs.op import token_logprobs
from spiral_fast.packing import pack_sequences


def lm_head(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [V, H], bias [V] or None) of the model's output embeddings."""
    head = model.get_output_embeddings()
    return head.weight, getattr(head, "bias", None)


def response_logprobs(
    model,
    tokens: list,
    prompt_lens: torch.Tensor,
    config,
    *,
    return_entropy: bool = False,
    contexts: list | None = None,
    share_limits: list | None = None,
):
    """Log-probs (and entropies) of the response tokens of Q sequences in one packed forward.

    tokens: Q int64 tensors (prompt + response); prompt_lens [Q] int64: the first response
    position of each sequence. ``pack_sequences`` (trie: shared prefixes encoded once),
    ``packed_hidden_states``, then ``token_logprobs`` at ``config.temperature`` with the LM head's
    weight and bias (``config.logprob_backend``; logits are never formed). contexts: None, or
    per sequence None or the sequences it attends to (parallel-encoded aggregation: a DAG layout,
    ``pack_sequences(..., contexts=..., share_limits=...)``).
    Returns (logp [R] float32, entropy [R] float32 or None, packed); R = sum of response lengths,
    rows in (sequence, position) order, on the model's device; grad follows torch.is_grad_enabled().
    """
    weight, bias = lm_head(model)
    device = weight.device
    max_pos = getattr(model.config, "max_position_embeddings", None)
    packed = pack_sequences(tokens, share="trie", max_positions=max_pos, contexts=contexts, share_limits=share_limits)
    rows = packed.prediction_rows
    keep = rows.pos >= prompt_lens[rows.seq]  # response positions, in (seq, pos) order
    hidden_index, target = rows.hidden_index[keep].to(device), rows.target[keep].to(device)
    hidden = packed_hidden_states(model, packed)
    out = token_logprobs(
        hidden[hidden_index],
        weight,
        target,
        temperature=config.temperature,
        return_entropy=return_entropy,
        bias=bias,
        backend=config.logprob_backend,
    )
    logp, entropy = out if return_entropy else (out, None)
    return logp, entropy, packed
