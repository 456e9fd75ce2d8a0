"""``SpiralConfig``: the hyper-parameters of one SPIRAL training step, in one frozen dataclass."""

from __future__ import annotations

import math
from dataclasses import dataclass

from spiral_fast.algorithm.policy_loss import check_clip
from spiral_fast.algorithm.reference import AGG_BASELINES, ESTIMATORS, NORMALIZERS, SCALES, TRACE_CREDITS


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
    Advantages: ``spiral_fast.spiral_advantages`` with estimator / scale / trace_credit /
    agg_baseline / eps; the defaults are the paper's (docs/paper.md): grpo, no std scaling, a trace
    credited with the mean of its sets' advantages, each aggregation response against its own set.
    length_gate (the paper's Appendix A): None, an int L, or a pair (trace_L, agg_L) of ints or
    None; a trace (aggregation response) of more than trace_L (agg_L) response tokens with a
    positive advantage gets advantage 0, every other advantage is unchanged (``step`` reports the
    share gated as ``gated_frac``). L = 0 gates every positive advantage of its role.
    temperature divides the logits; clip = (eps_low, eps_high) of the PPO ratio, or None for no
    clipping (the plain importance-weighted policy gradient); kl_coef weighs the
    k3 KL to reference log-probs (``ProblemRollout(trace_ref_logprobs=..., agg_ref_logprobs=...)``).
    The unclipped token-sum loss of docs/paper.md (Tinker's importance-sampling loss,
    -sum over tokens of exp(logp - logp_old) * A) is
    ``SpiralConfig(clip=None, normalizer="constant", loss_constant=1)``.
    max_tokens_per_micro_batch: budget of unique (prefix-shared) tokens per forward; whole problems
    go to one micro-batch, a problem over budget is cut into its trace block and per-set blocks.
    "auto" (the default since 2026-12-07, before it 8192): the largest budget whose activation memory,
    estimated per token from the model's config (``spiral_fast.policy_step.memory_estimate``), fits
    ``memory_budget_gb`` GiB; memory_budget_gb None: ``memory_estimate.MEMORY_FRACTION`` (15%) of
    the memory the device has free at the step (CUDA: ``torch.cuda.mem_get_info``; CPU: MemAvailable);
    a model without a transformers config gets 8192. memory_budget_gb is read only with "auto". The
    budget changes only speed and memory, never the loss or the gradients beyond float rounding; the
    free memory is read at every step, so for bitwise-reproducible runs give an integer.
    max_grad_norm: gradient-norm clipping before ``optimizer.step()`` (None: none).
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
    scale: str = "none"
    trace_credit: str = "mean"
    agg_baseline: str = "set"
    length_gate: int | tuple | None = None
    eps: float = 1e-6
    temperature: float = 1.0
    clip: tuple | None = (0.2, 0.28)
    kl_coef: float = 0.0
    normalizer: str = "token-mean"
    loss_constant: float | None = None
    max_tokens_per_micro_batch: int | str = "auto"
    memory_budget_gb: float | None = None
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
        for name, choices in (
            ("estimator", ESTIMATORS),
            ("scale", SCALES),
            ("trace_credit", TRACE_CREDITS),
            ("agg_baseline", AGG_BASELINES),
            ("normalizer", NORMALIZERS),
            ("logprob_backend", ("auto", "torch", "triton")),
            ("aggregation", AGGREGATIONS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {getattr(self, name)!r}")
        check_clip(self.clip)
        if self.clip is not None:
            object.__setattr__(self, "clip", (float(self.clip[0]), float(self.clip[1])))
        gate = self.length_gate
        if isinstance(gate, list):
            gate = tuple(gate)
            object.__setattr__(self, "length_gate", gate)
        length = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0  # noqa: E731
        if not (
            gate is None
            or length(gate)
            or (isinstance(gate, tuple) and len(gate) == 2 and all(v is None or length(v) for v in gate))
        ):
            raise ValueError(
                f"length_gate must be None, an int >= 0 or a pair (trace_L, agg_L) of ints >= 0 or None, "
                f"got {self.length_gate!r}"
            )
        budget = self.max_tokens_per_micro_batch
        if budget != "auto" and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
            raise ValueError(f'max_tokens_per_micro_batch must be a positive int or "auto", got {budget!r}')
        _number("memory_budget_gb", self.memory_budget_gb, strict=True, allow_none=True)
        if self.memory_budget_gb is not None:
            object.__setattr__(self, "memory_budget_gb", float(self.memory_budget_gb))
        if not isinstance(self.gradient_checkpointing, bool):
            raise ValueError(f"gradient_checkpointing must be a bool, got {self.gradient_checkpointing!r}")
