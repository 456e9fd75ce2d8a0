"""PEFT models (LoRA): the step, the log-probs and the samplers run the wrapped transformers model.

A ``peft.PeftModel`` with LoRA adapters injects its low-rank layers into the modules of the wrapped
``PreTrainedModel`` (``get_base_model()``): running that model runs the adapters, and autograd
reaches exactly the parameters PEFT left trainable (the adapters; base weights are frozen). So the
only thing a PEFT model needs here is to be unwrapped. peft stays optional: it is never imported
here; a model can only be a PeftModel if the caller already imported peft.
"""
from __future__ import annotations

import sys


def is_peft_model(model) -> bool:
    """True for a ``peft.PeftModel`` (without importing peft when the caller has not)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def unwrap_peft(model, name: str = "model"):
    """The ``PreTrainedModel`` that a LoRA ``PeftModel`` wraps (with its adapters active); any other
    model is returned unchanged. ValueError for PEFT methods that do not live inside the model's
    modules (prompt learning adds virtual tokens that the unwrapped model would silently drop) and
    for an adapter on the LM head (the fused log-probs read the head's weight directly, which
    would skip the adapter's delta)."""
    if not is_peft_model(model):
        return model
    for adapter, cfg in model.peft_config.items():
        if getattr(cfg, "is_prompt_learning", False):
            raise ValueError(f"{name} is a PeftModel with the prompt-learning adapter {adapter!r} "
                             f"({cfg.peft_type}); only adapters inside the model's layers (LoRA) are supported")
    base = model.get_base_model()
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is not None and hasattr(head, "get_base_layer"):
        raise ValueError(f"{name} is a PeftModel with an adapter on the LM head ({type(head).__name__}); "
                         "exclude the output layer from the adapter's target_modules")
    return base
