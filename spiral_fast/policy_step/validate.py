"""Argument checks of ``step``, ``step_reference`` and ``batch_logprobs``: ValueError naming what is wrong."""

from __future__ import annotations

import torch

from spiral_fast.policy_step.batch import SpiralBatch
from spiral_fast.policy_step.config import SpiralConfig


def check_args(model, batch, config, optimizer) -> None:
    """``check_inputs``, then the optimizer, and reference log-probs when ``config.kl_coef > 0``."""
    check_inputs(model, batch, config)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    if config.kl_coef > 0:
        for p, pr in enumerate(batch.problems):
            if pr.trace_ref_logprobs is None or pr.agg_ref_logprobs is None:
                raise ValueError(
                    f"config.kl_coef={config.kl_coef} needs reference log-probs, but problems[{p}] has "
                    "no trace_ref_logprobs / agg_ref_logprobs"
                )


def check_inputs(model, batch, config) -> None:
    """The types of batch and config, and a causal LM with an LM head."""
    if not isinstance(batch, SpiralBatch):
        raise ValueError(f"batch must be a spiral_fast.SpiralBatch, got {type(batch).__name__}")
    if not isinstance(config, SpiralConfig):
        raise ValueError(f"config must be a spiral_fast.SpiralConfig, got {type(config).__name__}")
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "get_output_embeddings"):
        raise ValueError(f"model must be a Hugging Face causal LM, got {type(model).__name__}")
    if getattr(model.get_output_embeddings(), "weight", None) is None:
        raise ValueError(
            f"model {type(model).__name__} has no LM head (get_output_embeddings() has no weight): "
            "pass the ...ForCausalLM model, not its base model"
        )
