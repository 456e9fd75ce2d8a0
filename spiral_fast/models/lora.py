"""PEFT models (LoRA): the step, the log-probs and the samplers run the wrapped transformers model.

A ``peft.PeftModel`` with LoRA adapters injects its low-rank layers into the modules of the wrapped
``PreTrainedModel`` (``get_base_model()``): running that model runs the adapters, and autograd
reaches exactly the parameters PEFT left trainable (the adapters; base weights are frozen). So the
only thing a PEFT model needs here is to be unwrapped. peft stays optional: it is never imported
here; a model can only be a PeftModel if the caller already imported peft.
"""
from __future__ import annotations

import sys

import torch


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


def merged_state_dict(model) -> dict:
    """The wrapped model's state dict under its plain Hugging Face names, each LoRA layer's weight
    replaced by W + (its active adapters' deltas): what a checkpoint of the merged model holds.

    Computed out of place (``peft``'s merge_adapter / unmerge_adapter would add and subtract the
    delta in the live weights, leaving rounding drift in the base weights after every sync).
    """
    base = unwrap_peft(model)
    active = list(getattr(model, "active_adapters", None) or [model.active_adapter])
    for adapter in active:
        if getattr(model.peft_config[adapter], "use_dora", False):
            raise ValueError(f"model's adapter {adapter!r} is a DoRA adapter; only plain LoRA weights can be merged")
    state = {}
    lora_layers = {}
    for name, module in base.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "get_base_layer"):
            lora_layers[name] = module
    for key, tensor in base.state_dict().items():
        if ".lora_" in key or ".original_module." in key:
            continue  # adapter factors (merged below); a modules_to_save wrapper's frozen original
        plain = key.replace(".base_layer.", ".")
        for adapter in active:
            plain = plain.replace(f".modules_to_save.{adapter}.", ".")
        if ".modules_to_save." in plain:
            continue  # an inactive adapter's copy
        state[plain] = tensor
    with torch.no_grad():
        for name, module in lora_layers.items():
            weight = module.get_base_layer().weight
            if getattr(module, "merged", False):
                state[f"{name}.weight"] = weight  # peft already merged the adapters into the weight
                continue
            delta = sum(module.get_delta_weight(a) for a in active if a in module.lora_A or
                        a in getattr(module, "lora_embedding_A", {}))
            state[f"{name}.weight"] = weight + delta if torch.is_tensor(delta) else weight
    return state
