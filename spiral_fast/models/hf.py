"""Hugging Face transformers integration: a "spiral_fast" attention over a packed prefix-shared batch.

The attention is registered with transformers' `AttentionInterface` and deliberately not with
`AttentionMaskInterface`: for an implementation without a mask function transformers builds no
mask at all, so no [T, T] mask is ever materialised; the tree layout travels to every attention
layer as the forward kwarg `spiral_packed`.
"""

from __future__ import annotations

import torch

from spiral_fast.ops.packed import PackedBatch
from spiral_fast.ops.tree_attention.op import tree_attention

ATTN_NAME = "spiral_fast"
_PACKED_KWARG = "spiral_packed"


def spiral_fast_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: query [1, Hq, T, D], key/value [1, Hkv, T, D] ->
    (attn_output [1, T, Hq, D], None), attending along the packed tree of `kwargs["spiral_packed"]`."""
    packed = kwargs.get(_PACKED_KWARG)
    if not isinstance(packed, PackedBatch):
        raise ValueError(
            f"the {ATTN_NAME!r} attention needs the packed layout as forward kwarg {_PACKED_KWARG}=PackedBatch "
            f"(use spiral_fast.packed_hidden_states), got {type(packed).__name__}"
        )
    if attention_mask is not None:
        raise ValueError(f"the {ATTN_NAME!r} attention takes its mask from the packed tree, got an attention_mask")
    if dropout:
        raise ValueError(f"the {ATTN_NAME!r} attention has no dropout, got dropout={dropout}")
    for name in ("sliding_window", "softcap", "s_aux"):
        if kwargs.get(name) is not None:
            raise ValueError(f"the {ATTN_NAME!r} attention does not support {name}={kwargs[name]!r}")
    if query.shape[0] != 1 or query.shape[2] != packed.num_tokens:
        raise ValueError(f"query must have shape [1, Hq, {packed.num_tokens}, D], got {tuple(query.shape)}")
    out = tree_attention(
        query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), packed, scale=scaling
    )
    return out.unsqueeze(0), None


def register() -> None:
    """Register the "spiral_fast" attention with transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, spiral_fast_attention)


def check_model(model, packed: PackedBatch | None = None):
    """Return the base (decoder) model of a supported transformers model, or raise ValueError.

    Supported: decoder-only models whose attention goes through AttentionInterface, every layer full
    (causal) attention. With `packed`, its sequences must fit `max_position_embeddings` and its token
    ids the vocabulary.
    """
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise ValueError(f"model must be a transformers PreTrainedModel, got {type(model).__name__}")
    cfg = model.config
    name = type(model).__name__
    if getattr(cfg, "is_encoder_decoder", False):
        raise ValueError(f"model {name} is an encoder-decoder; packed_hidden_states needs a decoder-only model")
    if not getattr(model, "_supports_attention_backend", False):
        raise ValueError(f"model {name} does not dispatch through transformers' AttentionInterface")
    layer_types = getattr(cfg, "layer_types", None) or []
    other = sorted(set(layer_types) - {"full_attention"})
    if other:
        raise ValueError(f"model {name} has {other} layers; only full causal attention layers are supported")
    base = model.base_model
    if not isinstance(base, PreTrainedModel):
        raise ValueError(f"model {name} has no base model (model.{model.base_model_prefix})")
    if packed is not None:
        max_pos = getattr(cfg, "max_position_embeddings", None)
        if max_pos is not None and packed.max_context > max_pos:
            host = packed.host
            # a DAG's sequences may start past 0 (an aggregation head after its traces): their last position
            ends = [int(host.position_ids[host.token_index(i)[-1]]) + 1 for i in range(host.num_sequences)]
            i = next(i for i, e in enumerate(ends) if e > max_pos)
            n = int(host.seq_lengths[i])
            where = f" at positions {ends[i] - n}..{ends[i] - 1}" if ends[i] != n else ""
            raise ValueError(
                f"sequences[{i}] has {n} tokens{where}, more than the model's max_position_embeddings={max_pos}"
            )
        vocab = getattr(cfg, "vocab_size", None)
        ids = packed.host.input_ids
        if vocab is not None and int(ids.max()) >= vocab:
            t = int(torch.nonzero(ids >= vocab)[0])
            i = next(i for i in range(packed.num_sequences) if bool((packed.host.token_index(i) == t).any()))
            raise ValueError(f"sequences[{i}] has token id {int(ids[t])} outside the model's vocab_size={vocab}")
    return base


def packed_hidden_states(model, packed: PackedBatch) -> torch.Tensor:
    """Final hidden states `[T, H]` of every packed token, without computing logits.

    Runs the base model once over the unique tokens `packed.input_ids[None]` with each token's own
    position (`packed.position_ids`), attention along the prefix tree (spiral_fast.tree_attention).
    A DAG batch (`pack_sequences(..., contexts=...)`, parallel-encoded aggregation) runs the same way:
    an aggregation head and its responses attend to their traces' keys and values at positions from
    p_j = |x| + max |y_i| on, and their loss backpropagates through those keys and values.
    With `spiral_fast.token_logprobs(hidden[rows.hidden_index], lm_head.weight, rows.target)` this
    gives every sequence's token log-probs. Gradients flow into shared prefixes once.
    The model's attention implementation is switched to "spiral_fast" for the forward and restored
    after it; with activation checkpointing the caller must hold it through the backward.
    """
    if not isinstance(packed, PackedBatch):
        raise ValueError(f"packed must be a PackedBatch (spiral_fast.pack_sequences), got {type(packed).__name__}")
    base = check_model(model, packed)
    register()
    device = next(model.parameters()).device
    packed = packed.to(device)
    config = model.config
    previous = config._attn_implementation
    # transformers 5 renamed is_gradient_checkpointing (now a deprecated alias)
    new_name = hasattr(type(model), "is_activation_checkpointing")
    checkpointing = getattr(model, "is_activation_checkpointing" if new_name else "is_gradient_checkpointing", False)
    if checkpointing and model.training and torch.is_grad_enabled() and previous != ATTN_NAME:
        # layers recomputed in backward read config._attn_implementation again: restored to
        # `previous` by then, they would run another attention than the forward's (torch's
        # checkpoint then fails deep in backward); say so before any work is done
        raise ValueError(
            f"model has activation checkpointing on: set model.config._attn_implementation = {ATTN_NAME!r} "
            f"for the forward and the backward (currently {previous!r}), or turn checkpointing off"
        )
    config._attn_implementation = ATTN_NAME
    try:
        out = base(
            input_ids=packed.input_ids[None],
            position_ids=packed.position_ids[None],
            use_cache=False,
            **{_PACKED_KWARG: packed},
        )
    finally:
        config._attn_implementation = previous
    return out.last_hidden_state[0]
