"""PEFT models (LoRA): the step, the log-probs and the samplers run the wrapped transformers model.

A ``peft.PeftModel`` with LoRA adapters injects its low-rank layers into the modules of the wrapped
``PreTrainedModel`` (``get_base_model()``): running that model runs the adapters, and autograd
reaches exactly the parameters PEFT left trainable (the adapters; base weights are frozen). So the
only thing a PEFT model needs here is to be unwrapped. peft stays optional: it is never imported
here; a model can only be a PeftModel if the caller already imported peft.
"""

from __future__ import annotations

import contextlib
import sys

import torch

from spiral_fast.ops.lora_linear import lora_linear


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
            raise ValueError(
                f"{name} is a PeftModel with the prompt-learning adapter {adapter!r} "
                f"({cfg.peft_type}); only adapters inside the model's layers (LoRA) are supported"
            )
    base = model.get_base_model()
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is not None and hasattr(head, "get_base_layer"):
        raise ValueError(
            f"{name} is a PeftModel with an adapter on the LM head ({type(head).__name__}); "
            "exclude the output layer from the adapter's target_modules"
        )
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
            delta = sum(
                module.get_delta_weight(a)
                for a in active
                if a in module.lora_A or a in getattr(module, "lora_embedding_A", {})
            )
            state[f"{name}.weight"] = weight + delta if torch.is_tensor(delta) else weight
    return state


def lora_weight_names(model) -> list[str]:
    """The entries of ``merged_state_dict(model)`` that training changes, under their plain names:
    each LoRA layer's weight (W + its delta) and the active adapters' ``modules_to_save`` copies.
    Every other entry is a frozen base tensor."""
    base = unwrap_peft(model)
    active = list(getattr(model, "active_adapters", None) or [model.active_adapter])
    names = [
        f"{name}.weight"
        for name, module in base.named_modules()
        if hasattr(module, "get_delta_weight") and hasattr(module, "get_base_layer")
    ]
    for key in base.state_dict():
        for adapter in active:
            if f".modules_to_save.{adapter}." in key:
                names.append(key.replace(f".modules_to_save.{adapter}.", ".").replace(".base_layer.", "."))
    return names


def _fusable(module) -> bool:
    """A PEFT LoRA ``Linear`` whose forward is exactly ``base(x) + lora_B(lora_A(x)) * scaling``: one
    active adapter, not merged or disabled, no dropout, no variant (DoRA), no bias on the adapter, an
    ``nn.Linear`` base layer."""
    peft = sys.modules.get("peft")
    lora_linear_type = getattr(getattr(getattr(peft, "tuners", None), "lora", None), "Linear", None)
    if lora_linear_type is None or type(module) is not lora_linear_type:
        return False
    active = [a for a in module.active_adapters if a in module.lora_A]
    if module.disable_adapters or module.merged or len(active) != 1:
        return False
    a = active[0]
    return (
        a not in getattr(module, "lora_variant", {})
        and isinstance(module.lora_dropout[a], torch.nn.Identity)
        and isinstance(module.get_base_layer(), torch.nn.Linear)
        and module.lora_B[a].bias is None
        and module.lora_A[a].bias is None
    )


def _fused_forward(module):
    adapter = next(a for a in module.active_adapters if a in module.lora_A)
    base, lora_a, lora_b = module.get_base_layer(), module.lora_A[adapter], module.lora_B[adapter]
    original = type(module).forward

    def forward(x, *args, **kwargs):
        weights = (base.weight, lora_a.weight, lora_b.weight) + (() if base.bias is None else (base.bias,))
        if args or kwargs or torch.is_autocast_enabled(x.device.type) or any(w.dtype != x.dtype for w in weights):
            return original(module, x, *args, **kwargs)  # what the fused path does not cover: PEFT's own
        return lora_linear(x, base.weight, base.bias, lora_a.weight, lora_b.weight, module.scaling[adapter])

    return forward


@contextlib.contextmanager
def fused_lora_linears(model):
    """Run every PEFT LoRA ``Linear`` of ``model`` that ``ops.lora_linear`` covers through it until
    the context exits (then PEFT's own forward again); hold it through the backward when layers are
    recomputed by activation checkpointing. Layers it does not cover (dropout, DoRA, several active
    adapters, autocast, mixed dtypes) keep PEFT's forward. A model without peft: nothing changes."""
    if sys.modules.get("peft") is None:
        yield
        return
    patched = [m for m in model.modules() if _fusable(m) and "forward" not in vars(m)]
    for m in patched:
        m.forward = _fused_forward(m)
    try:
        yield
    finally:
        for m in patched:
            vars(m).pop("forward", None)
