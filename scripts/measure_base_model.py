"""Base-model pass@1 of candidate arithmetic tasks with vLLM, to choose a SPIRAL task by measurement.

Search: for each task and prompt, ``--samples`` traces per held-out problem at temperature 1.0 and
``max(--lengths)`` new tokens; pass@1 at a shorter length L is scored on each trace cut to its first
L tokens (the same distribution as sampling with max_tokens=L, since sampling is left to right).
Aggregation (``--agg-task``): two sampled traces per problem (cut to ``--agg-trace-len``) rendered
as candidates into the repo's aggregation prompt (``spiral_fast.train.prompts``), ``--agg-samples``
responses each, scored at each of ``--agg-lengths``; also split by the number of right candidates.
Rewards: ``spiral_fast.train.rewards.math_reward`` (math-verify where installed).

Run it by path, not from the repo root (``kernels/`` there shadows Hugging Face's ``kernels``):

    VLLM_ENABLE_V1_MULTIPROCESSING=0 /work/venv-vllm/bin/python scripts/measure_base_model.py \\
        --tasks add_1d add_2d1d --prompts default terse --out /tmp/search.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
# vLLM's CPU backend otherwise sizes its KV cache from free memory (21 GiB resident on a 24 GiB box)
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from make_arithmetic_data import TASKS, split  # noqa: E402

TERSE = "{problem} Answer with only the final number inside \\boxed{}."
TERSE_AGG = (
    "Here is a problem and several candidate answers, which may contain mistakes.\n\n"
    "Problem:\n{problem}\n\nCandidate answers:\n{candidates}\n"
    "Check the candidates and give the correct answer. Answer with only the final number inside \\boxed{}."
)


def lora_timing(model_path: str | None, tokens: int, threads: int, reps: int = 3) -> dict:
    """Seconds of one HF forward+backward (token log-prob loss) of a rank-16 LoRA on all linear layers,
    over one ``tokens``-long sequence and over 12 sequences of ``tokens // 12``, on ``threads`` threads."""
    import torch
    from peft import LoraConfig, get_peft_model

    from spiral_fast.models.loading import load_causal_lm, smollm2_gguf_path

    torch.set_num_threads(threads)
    model, _ = load_causal_lm(model_path or smollm2_gguf_path(), "float32")
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
    model.train()
    out = {
        "threads": threads,
        "tokens": tokens,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    g = torch.Generator().manual_seed(0)
    for shape in ((1, tokens), (12, tokens // 12)):
        ids = torch.randint(0, model.config.vocab_size, shape, generator=g)
        times = []
        for _ in range(reps + 1):
            t = time.time()
            logits = model(input_ids=ids).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
            loss.backward()
            model.zero_grad(set_to_none=True)
            times.append(time.time() - t)
        out[f"fwd_bwd_s[{shape[0]}x{shape[1]}]"] = round(min(times[1:]), 2)
        print(json.dumps(out), flush=True)
    return out


def main(argv=None) -> None:
    from spiral_fast.models.loading import resolve_model_path, smollm2_gguf_path
    from spiral_fast.tasks import prompts as P
    from spiral_fast.tasks.rewards import has_math_verify, math_reward

    search_prompts = {"default": P.SEARCH, "terse": TERSE}
    agg_prompts = {"default": P.AGGREGATION, "terse": TERSE_AGG}
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="HF folder or .gguf (default: the SmolLM2-135M GGUF)")
    parser.add_argument("--tasks", nargs="*", default=["add_1d", "add_2d1d"], choices=sorted(TASKS))
    parser.add_argument("--prompts", nargs="+", default=["default", "terse"], choices=sorted(search_prompts))
    parser.add_argument("--problems", type=int, default=200, help="held-out problems per task (capped by the task)")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 48, 64])
    parser.add_argument(
        "--agg-task",
        default=None,
        choices=sorted(TASKS) + ["auto"],
        help="auto: the measured task whose pass@1 at --agg-trace-len is nearest 0.3",
    )
    parser.add_argument("--agg-search-prompt", default="terse", choices=sorted(search_prompts))
    parser.add_argument("--agg-prompts", nargs="+", default=["default"], choices=sorted(agg_prompts))
    parser.add_argument("--agg-trace-len", type=int, default=32)
    parser.add_argument("--agg-lengths", type=int, nargs="+", default=[48, 64])
    parser.add_argument("--agg-samples", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument(
        "--lora-timing",
        type=int,
        default=None,
        metavar="TOKENS",
        help="only time a rank-16 LoRA forward+backward over TOKENS tokens (no vLLM)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads of --lora-timing")
    args = parser.parse_args(argv)
    if args.lora_timing is not None:
        lora_timing(args.model, args.lora_timing, args.threads)
        return

    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    folder = resolve_model_path(args.model or smollm2_gguf_path(), "float32")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    t0 = time.time()
    llm = LLM(model=folder, dtype="float32", enable_prefix_caching=True, max_model_len=2048, seed=args.seed)
    print(f"engine ready in {time.time() - t0:.1f}s; math-verify: {has_math_verify()}", flush=True)
    results = {"model": folder, "math_verify": has_math_verify(), "search": [], "aggregation": []}

    def generate(prompt_ids, n, max_tokens):
        params = SamplingParams(n=n, temperature=1.0, max_tokens=max_tokens)
        t = time.time()
        outs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params, use_tqdm=False)
        seconds = time.time() - t
        traces = [[list(c.token_ids) for c in o.outputs] for o in outs]
        tokens = sum(len(c) for per in traces for c in per)
        return traces, tokens, seconds

    def score(trace, answer, length):
        text = tokenizer.decode(trace[:length], skip_special_tokens=True)
        return math_reward(text, answer)

    def problems_of(task):
        n = min(args.problems, len(TASKS[task][1]()) - 1)
        return split(task, n, args.seed)[1]

    def dump():
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)

    samples_seen = {}
    for task in args.tasks:
        items = problems_of(task)
        for name in args.prompts:
            prompter = P.Prompts(tokenizer, search_prompts[name], P.AGGREGATION, P.CANDIDATE)
            ids = [prompter.search(p) for p, _ in items]
            traces, tokens, seconds = generate(ids, args.samples, max(args.lengths))
            samples_seen[(task, name)] = (items, ids, traces, prompter)
            row = {
                "task": task,
                "prompt": name,
                "problems": len(items),
                "samples": args.samples,
                "gen_tokens": tokens,
                "seconds": round(seconds, 2),
                "tok_per_s": round(tokens / seconds, 1),
                "mean_len": round(tokens / (len(items) * args.samples), 1),
                "prompt_len": round(sum(map(len, ids)) / len(ids), 1),
            }
            for length in args.lengths:
                r = [score(t, a, length) for (_, a), per in zip(items, traces) for t in per]
                solved = [any(score(t, a, length) for t in per) for (_, a), per in zip(items, traces)]
                row[f"pass1@{length}"] = round(sum(r) / len(r), 4)
                row[f"any_of_{args.samples}@{length}"] = round(sum(solved) / len(solved), 4)
            results["search"].append(row)
            print(json.dumps(row), flush=True)
            dump()
            p, a = items[0]
            print(f"  e.g. {p!r} ({a}) -> {tokenizer.decode(traces[0][0], skip_special_tokens=True)!r}", flush=True)

    if args.agg_task == "auto":
        key = f"pass1@{args.agg_trace_len}"
        rows = [r for r in results["search"] if r["prompt"] == args.agg_search_prompt and key in r]
        args.agg_task = min(rows, key=lambda r: abs(r[key] - 0.3))["task"]
        print(f"aggregation task: {args.agg_task}", flush=True)
    if args.agg_task is not None:
        key = (args.agg_task, args.agg_search_prompt)
        if key not in samples_seen:
            items = problems_of(args.agg_task)
            prompter = P.Prompts(tokenizer, search_prompts[args.agg_search_prompt], P.AGGREGATION, P.CANDIDATE)
            ids = [prompter.search(p) for p, _ in items]
            samples_seen[key] = (items, ids, generate(ids, max(2, args.samples), args.agg_trace_len)[0], prompter)
        items, ids, traces, prompter = samples_seen[key]
        cands = [[t[: args.agg_trace_len] for t in per[:2]] for per in traces]
        n_right = [sum(score(c, a, args.agg_trace_len) for c in cs) for (_, a), cs in zip(items, cands)]
        for agg_name in args.agg_prompts:
            prompter.texts["aggregation"] = agg_prompts[agg_name]
            agg_ids = [prompter.template(x, cs) for x, cs in zip(ids, cands)]
            outs, tokens, seconds = generate(agg_ids, args.agg_samples, max(args.agg_lengths))
            row = {
                "task": args.agg_task,
                "search_prompt": args.agg_search_prompt,
                "agg_prompt": agg_name,
                "trace_len": args.agg_trace_len,
                "problems": len(items),
                "agg_samples": args.agg_samples,
                "candidate_pass1": round(sum(n_right) / (2 * len(items)), 4),
                "agg_prompt_len": round(sum(map(len, agg_ids)) / len(agg_ids), 1),
                "gen_tokens": tokens,
                "seconds": round(seconds, 2),
                "tok_per_s": round(tokens / seconds, 1),
                "mean_len": round(tokens / (len(items) * args.agg_samples), 1),
            }
            for length in args.agg_lengths:
                r = [[score(t, a, length) for t in per] for (_, a), per in zip(items, outs)]
                flat = [x for per in r for x in per]
                row[f"agg_reward@{length}"] = round(sum(flat) / len(flat), 4)
                for k in (0, 1, 2):
                    sel = [x for per, nr in zip(r, n_right) if nr == k for x in per]
                    row[f"agg_reward@{length}|{k}_right"] = (round(sum(sel) / len(sel), 4) if sel else None, len(sel))
            results["aggregation"].append(row)
            print(json.dumps(row), flush=True)
            dump()
            print(f"  e.g. -> {tokenizer.decode(outs[0][0], skip_special_tokens=True)!r}", flush=True)
    dump()


if __name__ == "__main__":
    main()
