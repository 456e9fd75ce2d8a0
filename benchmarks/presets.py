"""Named shape presets: benchmarks refer to these names, never to numbers spread through scripts."""
from dataclasses import dataclass


@dataclass(frozen=True)
class LMHeadShape:
    name: str
    tokens: int   # N trained tokens
    hidden: int   # H
    vocab: int    # V


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
    "packing-issue": SpiralShape("packing-issue", problems=1, prompt_tokens=64, traces=8, trace_tokens=256,
                                 sets=4, set_size=4, aggregations=4, agg_tokens=128),
}

# prefix-shared packing (issue 4): layout build at the scale, and a scaled-down copy on which
# the pure-Python builder finishes in seconds (aggregation prompts: template + prompt + K traces)
SPIRAL["layout-issue"] = SpiralShape("layout-issue", problems=64, prompt_tokens=256, traces=16, trace_tokens=4096,
                                     sets=4, set_size=4, aggregations=4, agg_tokens=512)
SPIRAL["layout-small"] = SpiralShape("layout-small", problems=4, prompt_tokens=256, traces=16, trace_tokens=512,
                                     sets=4, set_size=4, aggregations=4, agg_tokens=128)


# parallel-encoded aggregation (issue 11): the paper's shape (N1=8 traces, n=4 sets of K=4, N2=4
# aggregations, 4096-token traces and aggregations; the head is 64 tokens, see bench_parallel.py) and
# its CPU-scaled copies (256/512/1024-token traces and aggregations)
SPIRAL["paper"] = SpiralShape("paper", problems=1, prompt_tokens=256, traces=8, trace_tokens=4096,
                              sets=4, set_size=4, aggregations=4, agg_tokens=4096)
for _n in (256, 512, 1024):
    SPIRAL[f"paper-cpu-{_n}"] = SpiralShape(f"paper-cpu-{_n}", problems=1, prompt_tokens=64, traces=8,
                                            trace_tokens=_n, sets=4, set_size=4, aggregations=4, agg_tokens=_n)


# the SPIRAL algorithm (issue 3): advantages of a batch of problems, and the fused loss over packed rows
@dataclass(frozen=True)
class AdvantageShape:
    name: str
    problems: int
    traces: int         # N per problem
    sets: int           # M per problem
    set_size: int       # K traces per set
    aggregations: int   # G responses per set


@dataclass(frozen=True)
class LossShape:
    name: str
    tokens: int         # R packed rows
    sequences: int      # Q trained sequences


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
    q_heads: int    # Hq
    kv_heads: int   # Hkv (GQA)
    head_dim: int   # D


ATTENTION_HEADS = {
    "gpu-16x128-gqa2": AttentionHeads("gpu-16x128-gqa2", q_heads=16, kv_heads=2, head_dim=128),
    "cpu-4x32-gqa2": AttentionHeads("cpu-4x32-gqa2", q_heads=4, kv_heads=2, head_dim=32),
}
SPIRAL["attention-cpu"] = SpiralShape("attention-cpu", problems=1, prompt_tokens=64, traces=8, trace_tokens=128,
                                      sets=4, set_size=2, aggregations=4, agg_tokens=64)
