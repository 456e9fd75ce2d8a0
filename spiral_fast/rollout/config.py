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
from dataclasses import dataclass

from spiral_fast._fields import check_settings, docs, setting

ENGINES = ("auto", "hf", "vllm")
METHODS = ("spiral", "grpo")
GRPO_MATCHES = ("length", "count")
BEHAVIOUR = ("sampler", "trainer")
CANDIDATE_ORDERS = ("shared", "random")
DTYPES = ("bfloat16", "float16", "float32", "auto")
# Chosen by scripts/choose_oversample.py from the 2026-12-06 SmolLM2 run (benchmarks/results/smollm2/
# spiral_metrics.jsonl, 60 steps of P = 2): 112 of 192 sampled problems were dropped (informative
# fraction q = 0.42) and a step took 1.8 rounds; seconds_rollout fits 3.9 s per sampled problem + 12.1 s
# per round. Simulated dynamic sampling (max_extra_rounds 4) then costs, per trained problem: at P = 2,
# 29.0 s (oversample 0) / 21.6 (1.0) / 20.9 (1.5, fewest) / 21.4 (2.0); at P = 8, 16.6 / 13.3 / 13.2 /
# 14.0; at P = 256 all within 3% up to 1.5, where 1.26 rounds remain instead of 5.0 (0) or 3.8 (1.0).
DEFAULT_OVERSAMPLE = 1.5


@dataclass(frozen=True)
class RolloutConfig:
    """How one step samples (the ``[rollout]`` section). Every field is documented in its
    ``metadata["doc"]``; ``RolloutConfig.help()`` lists them. ValueError naming the field for a bad
    value."""

    engine: str = setting(
        "auto",
        '"auto" (vLLM where it can be imported and runs the model, else HF generate; '
        'the choice is logged once), "hf" (transformers generate) or "vllm" '
        "(spiral_fast.VLLMSampler)",
        choices=ENGINES,
    )
    method: str = setting(
        "spiral",
        '"spiral" (the paper), or "grpo": single traces at SPIRAL\'s sampled-token '
        "budget (the paper's baseline; see grpo_match)",
        choices=METHODS,
    )
    grpo_match: str = setting(
        "length",
        'method "grpo": how its compute matches SPIRAL\'s. "length" (the paper\'s): '
        "budget / (L_y + L_z) responses of up to L_y + L_z tokens, the same sampled tokens and "
        'sequential depth as one trace plus one aggregation; "count": budget / L_y responses '
        "of up to L_y tokens",
        choices=GRPO_MATCHES,
    )
    problems_per_step: int = setting(256, "problems per optimizer step, over all ranks (the paper: 256)")
    num_traces: int = setting(8, "search traces per problem N (the paper: 8)")
    set_size: int = setting(4, "traces per set K (the paper: 4)")
    num_sets: int = setting(4, "distinct sets per problem M (the paper: 4)")
    num_aggregations: int = setting(4, "aggregation responses per set G (the paper: 4)")
    max_new_tokens: int = setting(4096, "longest search trace L_y (the paper: 4096)")
    agg_max_new_tokens: int | None = setting(
        4096, "longest aggregation response L_z (the paper: 4096); none = max_new_tokens"
    )
    temperature: float = setting(
        1.0, "sampling temperature; the step divides its logits by the same value (the paper: 1.0)"
    )
    candidate_order: str = setting(
        "shared",
        'order of a set\'s members in its aggregation prompt: "shared" (the '
        "order that maximises the prefix a problem's aggregation prompts share, which "
        "the engine's prefix cache and the step's trie reuse; the paper's sets are "
        'unordered) or "random" (the drawn order)',
        choices=CANDIDATE_ORDERS,
    )
    dynamic_sampling: bool = setting(True, "drop problems whose advantages are all 0 and sample more (the paper)")
    oversample: float = setting(
        DEFAULT_OVERSAMPLE,
        "dynamic sampling: the first round samples "
        "ceil(P * (1 + oversample)) problems in one call and keeps the first P informative "
        "ones; extra rounds (each ceil(shortfall * (1 + oversample)) problems) run only "
        "when the batch is still short. 1.5: the least rollout time per trained problem "
        "for a measured run where 58% of sampled problems were dropped "
        "(scripts/choose_oversample.py); 0 = sample exactly P",
        minimum=0.0,
    )
    max_extra_rounds: int = setting(
        4, "extra sampling rounds per step to refill dropped problems (0 = none)", minimum=0
    )
    behaviour_logprobs: str = setting(
        "sampler",
        '"sampler" (the sampler\'s log-probs are the old ones) or '
        '"trainer" (recomputed with batch_logprobs before the step)',
        choices=BEHAVIOUR,
    )
    dtype: str | None = setting(None, "engine vllm: the engine's dtype; none = model.dtype", choices=DTYPES + (None,))
    kv_cache_gb: float | None = setting(
        None,
        "engine vllm: GiB of KV cache the engine holds (set it on a CPU, "
        "where vLLM's default takes most of the memory); none = the engine's default",
    )
    gpu_memory_utilization: float = setting(
        0.6, "engine vllm: share of the GPU the engine reserves (weights + KV cache); the rest is the trainer's"
    )

    def __post_init__(self):
        check_settings(self)
        if not 0 < self.gpu_memory_utilization < 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1), got {self.gpu_memory_utilization!r}")
        if self.set_size > self.num_traces:
            raise ValueError(f"set_size must be <= num_traces={self.num_traces}, got {self.set_size}")
        if self.num_sets > math.comb(self.num_traces, self.set_size):
            raise ValueError(
                f"num_sets must be <= C(num_traces, set_size) = "
                f"{math.comb(self.num_traces, self.set_size)} (distinct sets), got {self.num_sets}"
            )

    @property
    def agg_tokens(self) -> int:
        """L_z: the longest aggregation response."""
        return self.max_new_tokens if self.agg_max_new_tokens is None else self.agg_max_new_tokens

    @classmethod
    def help(cls) -> dict[str, str]:
        """{field: documentation} in declaration order."""
        return docs(cls)
