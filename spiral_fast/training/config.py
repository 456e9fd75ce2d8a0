"""``SpiralConfig``: the hyper-parameters of one SPIRAL training step, in one frozen dataclass."""
from __future__ import annotations

import math
from dataclasses import dataclass

from spiral_fast.algorithm.reference import ESTIMATORS, NORMALIZERS, SCALES, TRACE_CREDITS


def _number(name, value, *, low=0.0, strict=False, allow_none=False):
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        bound = f"> {low}" if strict else f">= {low}"
        raise ValueError(f"{name} must be a finite number {bound}{' or None' if allow_none else ''}, got {value!r}")


AGGREGATIONS = ("text", "parallel")


@dataclass(frozen=True)
class SpiralConfig:
    """Hyper-parameters of ``spiral_fast.step`` / ``spiral_fast.step_reference``.

    Loss = agg_coef * L_agg + trace_coef * L_trace, each role's term normalised over that role's
    trained tokens in the whole (global) batch (``normalizer`` as in ``spiral_fast.policy_loss``:
    "token-mean"; "seq-mean-token-mean" = mean over the role's sequences of their token means;
    "constant" = sum / ``loss_constant``, default the role's token count).
    Advantages: ``spiral_fast.spiral_advantages`` with estimator / scale / trace_credit / eps.
    temperature divides the logits; clip = (eps_low, eps_high) of the PPO ratio; kl_coef weighs the
    k3 KL to reference log-probs (``ProblemRollout(trace_ref_logprobs=..., agg_ref_logprobs=...)``).
    max_tokens_per_micro_batch: budget of unique (prefix-shared) tokens per forward; whole problems
    go to one micro-batch, a problem over budget is cut into its trace block and per-set blocks.
    max_grad_norm: gradient clipping before ``optimizer.step()`` (None: no clipping).
    gradient_checkpointing: recompute each decoder layer in backward (HF model in train mode).
    logprob_backend: ``backend`` of ``spiral_fast.token_logprobs`` ("auto", "torch", "triton").
    aggregation: "text" (the paper: ``agg_prompts[j]`` is the whole rendered prompt a_j, traces
    repeated as text) or "parallel" (parallel-encoded aggregation: ``agg_prompts[j]`` is the head h_j
    alone; h_j and z_jg attend to x and to the keys and values of the traces y_i, i in S_j, at
    positions from p_j = |x| + max_{i in S_j} |y_i| on; each trace is encoded once per problem and the
    aggregation loss backpropagates through the traces' keys and values; the order of a set's
    members does not matter, as attention with fixed positions is invariant to it). In parallel
    mode a problem is never cut across micro-batches (its sets need its traces).
    """
    agg_coef: float = 1.0
    trace_coef: float = 1.0
    estimator: str = "grpo"
    scale: str = "std"
    trace_credit: str = "mean"
    eps: float = 1e-6
    temperature: float = 1.0
    clip: tuple = (0.2, 0.28)
    kl_coef: float = 0.0
    normalizer: str = "token-mean"
    loss_constant: float | None = None
    max_tokens_per_micro_batch: int = 8192
    max_grad_norm: float | None = 1.0
    gradient_checkpointing: bool = False
    logprob_backend: str = "auto"
    aggregation: str = "text"

    def __post_init__(self):
        _number("agg_coef", self.agg_coef)
        _number("trace_coef", self.trace_coef)
        _number("eps", self.eps)
        _number("temperature", self.temperature, strict=True)
        _number("kl_coef", self.kl_coef)
        _number("loss_constant", self.loss_constant, strict=True, allow_none=True)
        _number("max_grad_norm", self.max_grad_norm, strict=True, allow_none=True)
        for name, choices in (("estimator", ESTIMATORS), ("scale", SCALES), ("trace_credit", TRACE_CREDITS),
                              ("normalizer", NORMALIZERS), ("logprob_backend", ("auto", "torch", "triton")),
                              ("aggregation", AGGREGATIONS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {getattr(self, name)!r}")
        clip = self.clip
        if (not isinstance(clip, (tuple, list)) or len(clip) != 2
                or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in clip)
                or not (0 <= clip[0] < 1) or not (0 <= clip[1] < math.inf)):
            raise ValueError(f"clip must be a pair (eps_low in [0, 1), eps_high >= 0), got {clip!r}")
        object.__setattr__(self, "clip", (float(clip[0]), float(clip[1])))
        budget = self.max_tokens_per_micro_batch
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ValueError(f"max_tokens_per_micro_batch must be a positive int, got {budget!r}")
        if not isinstance(self.gradient_checkpointing, bool):
            raise ValueError(f"gradient_checkpointing must be a bool, got {self.gradient_checkpointing!r}")
