"""spiral_fast: fast, memory-lean training steps for SPIRAL (Sequential-Parallel-Aggregative RL).

Public names are resolved lazily so that ``import spiral_fast`` has no side effects and needs
neither Triton, transformers nor a GPU; each name imports its module on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from spiral_fast._version import __version__

# public name -> module that defines it
_EXPORTS = {
    # fused per-token log-probs
    "token_logprobs": "spiral_fast.ops.logprobs.op",
    "logprobs_from_logits": "spiral_fast.ops.logprobs.op",
    # the SPIRAL algorithm: advantages and the fused policy loss
    "spiral_advantages": "spiral_fast.algorithm.advantages",
    "SpiralAdvantages": "spiral_fast.algorithm.advantages",
    "policy_loss": "spiral_fast.ops.policy_loss.op",
    "PolicyLossStats": "spiral_fast.ops.policy_loss.op",
    # prefix-shared packing and tree attention
    "pack_sequences": "spiral_fast.packing",
    "PackedBatch": "spiral_fast.packing",
    "PredictionRows": "spiral_fast.packing",
    "tree_attention": "spiral_fast.ops.tree_attention.op",
    "packed_hidden_states": "spiral_fast.models",
    # the training step
    "ProblemRollout": "spiral_fast.policy_step.batch",
    "SpiralBatch": "spiral_fast.policy_step.batch",
    "SpiralConfig": "spiral_fast.policy_step.config",
    "StepOutput": "spiral_fast.policy_step.step",
    "step": "spiral_fast.policy_step.step",
    "step_reference": "spiral_fast.policy_step.reference_step",
    # log-probs of every response of a batch
    "batch_logprobs": "spiral_fast.policy_step.logprobs",
    "BatchLogprobs": "spiral_fast.policy_step.logprobs",
    # vLLM sampling with weight sync (vLLM is imported when a sampler is built)
    "VLLMSampler": "spiral_fast.rollout.vllm",
    # the sampler interface and its Hugging Face sampler
    "Sampler": "spiral_fast.rollout.sampler",
    "HFSampler": "spiral_fast.rollout.sampler",
    # how a step samples: rollout(sampler, task, problems, config)
    "RolloutConfig": "spiral_fast.rollout.config",
    # tasks: prompts, aggregation template and reward
    "Task": "spiral_fast.tasks.base",
    "ToyTask": "spiral_fast.tasks.toy",
    "MathTask": "spiral_fast.tasks.math",
    "ReasoningGymTask": "spiral_fast.tasks.reasoning_gym",
    # GPU readiness: each Triton op against its torch path
    "self_check": "spiral_fast.ops.checks",
}

# Submodules reachable as attributes (spiral_fast.models, spiral_fast.rollout, ...).
_SUBMODULES = {
    "algorithm",
    "cli",
    "distributed",
    "evaluate",
    "kernels",
    "models",
    "ops",
    "packing",
    "policy_step",
    "recipe",
    "rollout",
    "tasks",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # cache: later lookups skip __getattr__
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'spiral_fast' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)


if TYPE_CHECKING:  # static analysers see the real names
    from spiral_fast.algorithm.advantages import SpiralAdvantages, spiral_advantages
    from spiral_fast.models import packed_hidden_states
    from spiral_fast.ops.checks import self_check
    from spiral_fast.ops.logprobs.op import logprobs_from_logits, token_logprobs
    from spiral_fast.ops.policy_loss.op import PolicyLossStats, policy_loss
    from spiral_fast.ops.tree_attention.op import tree_attention
    from spiral_fast.packing import PackedBatch, PredictionRows, pack_sequences
    from spiral_fast.policy_step.batch import ProblemRollout, SpiralBatch
    from spiral_fast.policy_step.config import SpiralConfig
    from spiral_fast.policy_step.logprobs import BatchLogprobs, batch_logprobs
    from spiral_fast.policy_step.reference_step import step_reference
    from spiral_fast.policy_step.step import StepOutput, step
    from spiral_fast.rollout.config import RolloutConfig
    from spiral_fast.rollout.sampler import HFSampler, Sampler
    from spiral_fast.rollout.vllm import VLLMSampler
    from spiral_fast.tasks.base import Task
    from spiral_fast.tasks.math import MathTask
    from spiral_fast.tasks.reasoning_gym import ReasoningGymTask
    from spiral_fast.tasks.toy import ToyTask
