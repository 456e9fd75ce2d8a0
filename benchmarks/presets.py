"""Named shape presets: benchmarks refer to these names, never to numbers spread through scripts."""

from dataclasses import dataclass


@dataclass(frozen=True)
class LMHeadShape:
    name: str
    tokens: int  # N trained tokens
    hidden: int  # H
    vocab: int  # V


LM_HEAD = {
    # small enough that every CPU peer (naive included) runs in seconds
    "cpu-small": LMHeadShape("cpu-small", tokens=1024, hidden=256, vocab=8192),
    # the CPU target of the foundation issue
    "cpu-target": LMHeadShape("cpu-target", tokens=4096, hidden=1024, vocab=65536),
    # Qwen2.5-7B LM head at 16k trained tokens (GPU only)
    "qwen2.5-7b": LMHeadShape("qwen2.5-7b", tokens=16384, hidden=3584, vocab=152064),
}


@dataclass(frozen=True)
class SpiralShape:
    """A SPIRAL-shaped batch: 1 problem, N traces, M sets of K, G aggregations per set."""

    name: str
    problems: int
    prompt_tokens: int
    traces: int
    trace_tokens: int
    sets: int
    set_size: int
    aggregations: int
    agg_tokens: int


SPIRAL = {
    "packing-issue": SpiralShape(
        "packing-issue",
        problems=1,
        prompt_tokens=64,
        traces=8,
        trace_tokens=256,
        sets=4,
        set_size=4,
        aggregations=4,
        agg_tokens=128,
    ),
}

# prefix-shared packing (issue 4): layout build at the scale, and a scaled-down copy on which
# the pure-Python builder finishes in seconds (aggregation prompts: template + prompt + K traces)
SPIRAL["layout-issue"] = SpiralShape(
    "layout-issue",
    problems=64,
    prompt_tokens=256,
    traces=16,
    trace_tokens=4096,
    sets=4,
    set_size=4,
    aggregations=4,
    agg_tokens=512,
)
SPIRAL["layout-small"] = SpiralShape(
    "layout-small",
    problems=4,
    prompt_tokens=256,
    traces=16,
    trace_tokens=512,
    sets=4,
    set_size=4,
    aggregations=4,
    agg_tokens=128,
)


# parallel-encoded aggregation (issue 11): the paper's shape (N1=8 traces, n=4 sets of K=4, N2=4
# aggregations, 4096-token traces and aggregations; the head is 64 tokens, see bench_parallel.py) and
# its CPU-scaled copies (256/512/1024-token traces and aggregations)
SPIRAL["paper"] = SpiralShape(
    "paper",
    problems=1,
    prompt_tokens=256,
    traces=8,
    trace_tokens=4096,
    sets=4,
    set_size=4,
    aggregations=4,
    agg_tokens=4096,
)
for _n in (256, 512, 1024):
    SPIRAL[f"paper-cpu-{_n}"] = SpiralShape(
        f"paper-cpu-{_n}",
        problems=1,
        prompt_tokens=64,
        traces=8,
        trace_tokens=_n,
        sets=4,
        set_size=4,
        aggregations=4,
        agg_tokens=_n,
    )


# the SPIRAL algorithm (issue 3): advantages of a batch of problems, and the fused loss over packed rows
@dataclass(frozen=True)
class AdvantageShape:
    name: str
    problems: int
    traces: int  # N per problem
    sets: int  # M per problem
    set_size: int  # K traces per set
    aggregations: int  # G responses per set


@dataclass(frozen=True)
class LossShape:
    name: str
    tokens: int  # R packed rows
    sequences: int  # Q trained sequences


ALGORITHM_ADV = {
    "issue": AdvantageShape("issue", problems=1024, traces=16, sets=64, set_size=4, aggregations=4),
}
ALGORITHM_LOSS = {
    "1M": LossShape("1M", tokens=1 << 20, sequences=4096),
    # large enough on an H200 that launch overhead does not hide the bandwidth
    "16M": LossShape("16M", tokens=1 << 24, sequences=65536),
}


# tree attention (issue 4): head shapes, and a SPIRAL-shaped tree small enough for the CPU peers
@dataclass(frozen=True)
class AttentionHeads:
    name: str
    q_heads: int  # Hq
    kv_heads: int  # Hkv (GQA)
    head_dim: int  # D


ATTENTION_HEADS = {
    "gpu-16x128-gqa2": AttentionHeads("gpu-16x128-gqa2", q_heads=16, kv_heads=2, head_dim=128),
    "cpu-4x32-gqa2": AttentionHeads("cpu-4x32-gqa2", q_heads=4, kv_heads=2, head_dim=32),
}
SPIRAL["attention-cpu"] = SpiralShape(
    "attention-cpu",
    problems=1,
    prompt_tokens=64,
    traces=8,
    trace_tokens=128,
    sets=4,
    set_size=2,
    aggregations=4,
    agg_tokens=64,
)


# issue 19: the whole step on the real model (SmolLM2-135M-Instruct, LoRA r=16, fp32) against TRL's GRPO actor
# path; response lengths drawn uniformly from [lo, hi] per trace and per aggregation response
@dataclass(frozen=True)
class StepShape:
    name: str
    problems: int
    prompt_tokens: tuple  # (lo, hi)
    traces: int
    trace_tokens: tuple
    sets: int
    set_size: int
    aggregations: int
    agg_tokens: tuple
    trl_micro_batch: int  # TRL's per_device_train_batch_size (samples per forward)


STEP = {
    "smollm2": StepShape(
        "smollm2",
        problems=2,
        prompt_tokens=(32, 64),
        traces=8,
        trace_tokens=(32, 64),
        sets=4,
        set_size=4,
        aggregations=4,
        agg_tokens=(32, 64),
        trl_micro_batch=8,
    ),
    # traces and aggregation responses 4x longer (the aggregation prompts grow with the traces)
    "smollm2-4x": StepShape(
        "smollm2-4x",
        problems=2,
        prompt_tokens=(32, 64),
        traces=8,
        trace_tokens=(128, 256),
        sets=4,
        set_size=4,
        aggregations=4,
        agg_tokens=(128, 256),
        trl_micro_batch=8,
    ),
}
# the log-prob op at real LM-head shapes: SmolLM2-135M (V=49152, H=576) and Qwen3-4B (V=151936, H=2560)
LM_HEAD["smollm2"] = LMHeadShape("smollm2", tokens=2048, hidden=576, vocab=49152)
LM_HEAD["qwen3-4b-cpu"] = LMHeadShape("qwen3-4b-cpu", tokens=512, hidden=2560, vocab=151936)
LM_HEAD["qwen3-4b"] = LMHeadShape("qwen3-4b", tokens=16384, hidden=2560, vocab=151936)
# seconds per case: checks that every case runs and gives the same loss (tests of the benchmark itself)
STEP["smoke"] = StepShape(
    "smoke",
    problems=1,
    prompt_tokens=(8, 16),
    traces=4,
    trace_tokens=(8, 16),
    sets=2,
    set_size=2,
    aggregations=2,
    agg_tokens=(8, 16),
    trl_micro_batch=4,
)
