"""``RolloutConfig``: how a SPIRAL (or GRPO) step samples, in one validated frozen dataclass.

It is the ``[rollout]`` section of ``spiral-fast train``'s TOML file (each field is a key of that
section, under the same name), the ``config`` of ``spiral_fast.rollout(sampler, task, problems,
config)`` and the sampling settings of ``spiral-fast demo``. Each field's documentation lives in
its ``metadata["doc"]``: the TOML help text is generated from it. Defaults are the paper's run
(docs/paper.md) where the paper states a value.

Vocabulary: P problems per step, N = ``num_traces`` traces per problem, M = ``num_sets`` distinct
sets of K = ``set_size`` traces each, G = ``num_aggregations`` aggregation responses per set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

ENGINES = ("auto", "hf", "vllm")
METHODS = ("spiral", "grpo")
GRPO_MATCHES = ("length", "count")
BEHAVIOUR = ("sampler", "trainer")
CANDIDATE_ORDERS = ("shared", "random")
DTYPES = ("bfloat16", "float16", "float32", "auto")


def _doc(text: str, **extra) -> dict:
    return {"doc": text, **extra}


@dataclass(frozen=True)
class RolloutConfig:
    """How one step samples (the ``[rollout]`` section). Every field is documented in its
    ``metadata["doc"]``; ``RolloutConfig.help()`` lists them. ValueError naming the field for a bad
    value."""

    engine: str = field(default="auto", metadata=_doc(
        '"auto" (vLLM where it can be imported and runs the model, else HF generate), "hf" '
        '(transformers generate) or "vllm" (spiral_fast.VLLMSampler)', choices=ENGINES))
    method: str = field(default="spiral", metadata=_doc(
        '"spiral" (the paper), or "grpo": single traces at SPIRAL\'s sampled-token budget (the paper\'s '
        "baseline; see grpo_match)", choices=METHODS))
    grpo_match: str = field(default="length", metadata=_doc(
        'method "grpo": how its compute matches SPIRAL\'s. "length" (the paper\'s): budget / (L_y + L_z) '
        "responses of up to L_y + L_z tokens, the same sampled tokens and sequential depth as one trace "
        'plus one aggregation; "count": budget / L_y responses of up to L_y tokens', choices=GRPO_MATCHES))
    problems_per_step: int = field(default=256, metadata=_doc(
        "problems per optimizer step, over all ranks (the paper: 256)"))
    num_traces: int = field(default=8, metadata=_doc("search traces per problem N (the paper: 8)"))
    set_size: int = field(default=4, metadata=_doc("traces per set K (the paper: 4)"))
    num_sets: int = field(default=4, metadata=_doc("distinct sets per problem M (the paper: 4)"))
    num_aggregations: int = field(default=4, metadata=_doc("aggregation responses per set G (the paper: 4)"))
    max_new_tokens: int = field(default=4096, metadata=_doc("longest search trace L_y (the paper: 4096)"))
    agg_max_new_tokens: int | None = field(default=4096, metadata=_doc(
        "longest aggregation response L_z (the paper: 4096); None = max_new_tokens"))
    temperature: float = field(default=1.0, metadata=_doc(
        "sampling temperature; the step divides its logits by the same value (the paper: 1.0)"))
    candidate_order: str = field(default="shared", metadata=_doc(
        'order of a set\'s members in its aggregation prompt: "shared" (the order that maximises the prefix '
        "a problem's aggregation prompts share: the engine's prefix cache and the step's trie reuse it; "
        'the paper\'s sets are unordered) or "random" (the drawn order)', choices=CANDIDATE_ORDERS))
    dynamic_sampling: bool = field(default=True, metadata=_doc(
        "drop problems whose advantages are all 0 and sample more (the paper)"))
    oversample: float = field(default=0.0, metadata=_doc(
        "the first round samples ceil(P * (1 + oversample)) problems in one call and keeps the first P "
        "informative ones (dynamic sampling); extra rounds run only when the batch is still short"))
    max_extra_rounds: int = field(default=4, metadata=_doc(
        "extra sampling rounds per step to refill dropped problems (0 = none)"))
    behaviour_logprobs: str = field(default="sampler", metadata=_doc(
        '"sampler" (the sampler\'s log-probs are the old ones) or "trainer" (recomputed with batch_logprobs '
        "before the step)", choices=BEHAVIOUR))
    dtype: str | None = field(default=None, metadata=_doc(
        "engine vllm: the engine's dtype; None = model.dtype", choices=DTYPES))
    kv_cache_gb: float | None = field(default=None, metadata=_doc(
        "engine vllm: GiB of KV cache the engine holds (set it on a CPU, where vLLM's default takes most of "
        "the memory); None = the engine's default"))
    gpu_memory_utilization: float = field(default=0.6, metadata=_doc(
        "engine vllm: share of the GPU the engine reserves (weights + KV cache); the rest is the trainer's"))

    def __post_init__(self):
        for f in fields(self):
            _check(f, getattr(self, f.name))
        if self.oversample < 0:
            raise ValueError(f"oversample must be a number >= 0, got {self.oversample!r}")
        if self.max_extra_rounds < 0:
            raise ValueError(f"max_extra_rounds must be an int >= 0, got {self.max_extra_rounds!r}")
        if not 0 < self.gpu_memory_utilization < 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1), got {self.gpu_memory_utilization!r}")
        if self.set_size > self.num_traces:
            raise ValueError(f"set_size must be <= num_traces={self.num_traces}, got {self.set_size}")
        if self.num_sets > math.comb(self.num_traces, self.set_size):
            raise ValueError(f"num_sets must be <= C(num_traces, set_size) = "
                             f"{math.comb(self.num_traces, self.set_size)} (distinct sets), got {self.num_sets}")

    @property
    def agg_tokens(self) -> int:
        """L_z: the longest aggregation response."""
        return self.max_new_tokens if self.agg_max_new_tokens is None else self.agg_max_new_tokens

    @classmethod
    def help(cls) -> dict[str, str]:
        """{field: documentation} in declaration order."""
        return {f.name: f.metadata["doc"] for f in fields(cls)}


_ZERO_OK = {"max_extra_rounds", "oversample"}


def _check(f, value) -> None:
    """ValueError naming the field when ``value`` does not fit its annotation and choices."""
    kind = str(f.type)
    if value is None:
        if "None" in kind:
            return
        raise ValueError(f"{f.name} must not be None")
    choices = f.metadata.get("choices")
    if choices is not None:
        if value not in choices:
            raise ValueError(f"{f.name} must be one of {list(choices)}, got {value!r}")
        return
    if kind.startswith("bool"):
        if not isinstance(value, bool):
            raise ValueError(f"{f.name} must be a bool, got {value!r}")
    elif kind.startswith("int"):
        low = 0 if f.name in _ZERO_OK else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{f.name} must be an int >= {low}, got {value!r}")
    elif kind.startswith("float"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (f.name not in _ZERO_OK and value <= 0):
            bound = ">= 0" if f.name in _ZERO_OK else "> 0"
            raise ValueError(f"{f.name} must be a finite number {bound}, got {value!r}")
