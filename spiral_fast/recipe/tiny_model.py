"""A tiny randomly initialised Qwen2-style causal LM, built in code (no download)."""

from __future__ import annotations

import torch


def tiny_qwen2_config(
    vocab_size: int,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_positions: int = 256,
):
    """A Qwen2Config with grouped-query attention and tied embeddings, small enough for a CPU."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )


def tiny_qwen2(vocab_size: int, *, seed: int = 0, dtype: torch.dtype = torch.float32, **config_kwargs):
    """Qwen2ForCausalLM over tiny_qwen2_config, its weights drawn under torch.manual_seed(seed)."""
    from transformers import Qwen2ForCausalLM

    config = tiny_qwen2_config(vocab_size, **config_kwargs)
    with torch.random.fork_rng(devices=[]):  # seeding the weights must not reseed the caller's RNG
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    return model.to(dtype)
