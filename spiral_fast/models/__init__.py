"""Model integrations. Importing this module registers the "spiral_fast" attention with transformers'
AttentionInterface; `packed_hidden_states(model, packed)` runs a decoder-only model over a packed batch."""

from spiral_fast.models.hf import ATTN_NAME, check_model, packed_hidden_states, register, spiral_fast_attention

register()

__all__ = ["ATTN_NAME", "check_model", "packed_hidden_states", "register", "spiral_fast_attention"]
