"""``rollout``: sample traces, draw sets, render aggregation prompts, sample and score aggregations."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from spiral_fast.policy_step.batch import ProblemRollout, SpiralBatch
from spiral_fast.rollout.parallel import check_parallel_args, sample_parallel_hf
from spiral_fast.rollout.sampler import as_sampler
from spiral_fast.rollout.sets import check_set_sizes, draw_sets

# reward_fn(problem_index, set_traces, response) -> float: the verifier of one aggregation response.
RewardFn = Callable[[int, "list[list[int]]", "list[int]"], float]
# template(prompt, set_traces) -> aggregation prompt token ids.
Template = Callable[["list[int]", "list[list[int]]"], "list[int]"]


def rollout(model, prompts: Sequence[Sequence[int]], *, reward_fn: RewardFn, template: Template | None = None,
            num_traces: int = 4, num_sets: int = 4, set_size: int = 2, num_aggregations: int = 2,
            temperature: float = 1.0, max_new_tokens: int = 64,
            agg_max_new_tokens: int | None = None, eos_token_id: int | None = None,
            pad_token_id: int = 0, generator: torch.Generator | None = None,
            behaviour_logprobs: bool = True, engine: str = "hf", aggregation: str = "text",
            agg_head: Sequence[int] | None = None):
    """Sample one SPIRAL batch for P problems.

    For each problem prompt x (token ids): N = num_traces traces y_i ~ pi(.|x); M = num_sets sets of
    K = set_size distinct trace indices, distinct as sets (:func:`draw_sets` with ``distinct=True``:
    M <= C(N, K), members in random order); per set the aggregation prompt
    a_j = template(x, [y_i for i in S_j]); G = num_aggregations responses z_jg ~ pi(.|a_j); the
    reward r_jg = reward_fn(p, [y_i for i in S_j], z_jg). All traces are sampled in one batched call,
    then all aggregations in a second one.

    model: a :class:`spiral_fast.rollout.Sampler` (``HFSampler``, ``VLLMSampler``), or, as before
    samplers existed, a plain HF causal LM / PeftModel (sampled with ``HFSampler``). ``engine``, the
    older switch, is still accepted: "hf" (the default) takes any sampler, "vllm" needs a VLLMSampler.
    Sampling is plain (no top-k/top-p) at ``temperature`` and draws from torch's global RNG (HF) or
    vLLM's seed; ``generator`` drives the set draws. Responses end at ``eos_token_id`` (kept) or at
    ``max_new_tokens`` (``agg_max_new_tokens`` for aggregations, default the same).
    behaviour_logprobs: attach the sampler's per-token log-probs as old log-probs (cheap: from the
    logits generate already computed); False leaves them None (the step is then on-policy).
    aggregation: "text" (a_j rendered by ``template``) or "parallel" (parallel-encoded aggregation,
    HF engine only: ``template`` stays None and each set's aggregator reads x and its traces as
    merged keys and values, then the head ``agg_head`` (token ids, non-empty) at positions from
    p_j = |x| + max_{i in S_j} |y_i| on; ``agg_prompts[j]`` holds the head alone; train with
    ``SpiralConfig(aggregation="parallel")``; see ``spiral_fast.rollout.parallel``).
    Returns a :class:`spiral_fast.SpiralBatch` of P :class:`spiral_fast.ProblemRollout`.
    """
    prompts = [list(map(int, p)) for p in prompts]
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of non-empty token lists, got {prompts!r}")
    for name, value in (("num_aggregations", num_aggregations), ("max_new_tokens", max_new_tokens)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite float > 0, got {temperature!r}")
    check_set_sizes(num_traces, num_sets, set_size, distinct=True)  # before any sampling
    agg_max_new_tokens = max_new_tokens if agg_max_new_tokens is None else agg_max_new_tokens
    if aggregation == "parallel":  # before the sampler: its errors name the parallel mode
        kind = "vllm" if engine == "vllm" else getattr(model, "engine", "hf")
        head = check_parallel_args(getattr(model, "model", model), prompts, template, agg_head, kind,
                                   max_new_tokens, agg_max_new_tokens)
    elif aggregation != "text":
        raise ValueError(f"aggregation must be 'text' or 'parallel', got {aggregation!r}")
    elif template is None or agg_head is not None:
        raise ValueError("aggregation='text' renders a_j with template (required); agg_head is for "
                         f"aggregation='parallel', got template={template!r}, agg_head={agg_head!r}")
    sampler = as_sampler(model, engine, pad_token_id=pad_token_id)
    common = dict(temperature=temperature, eos_token_id=eos_token_id, logprobs=behaviour_logprobs)

    traces, trace_lp = sampler.generate(prompts, num_traces, max_new_tokens=max_new_tokens, **common)
    all_sets, agg_prompts = [], []
    for p, x in enumerate(prompts):
        sets = draw_sets(num_traces, num_sets, set_size, generator=generator, distinct=True)
        own = traces[p * num_traces:(p + 1) * num_traces]
        all_sets.append(sets)
        agg_prompts += [list(head) if aggregation == "parallel" else template(x, [own[i] for i in s]) for s in sets]
    if aggregation == "parallel":
        aggs, agg_lp = sample_parallel_hf(sampler.model, prompts, traces, all_sets, head, num_aggregations,
                                          max_new_tokens=agg_max_new_tokens, pad_token_id=pad_token_id, **common)
    else:
        aggs, agg_lp = sampler.generate(agg_prompts, num_aggregations, max_new_tokens=agg_max_new_tokens, **common)

    problems = []
    for p, x in enumerate(prompts):
        own = traces[p * num_traces:(p + 1) * num_traces]
        first = p * num_sets * num_aggregations  # this problem's first aggregation row
        per_set = [aggs[first + j * num_aggregations:first + (j + 1) * num_aggregations]
                   for j in range(num_sets)]
        rewards = [[float(reward_fn(p, [own[i] for i in s], z)) for z in per_set[j]]
                   for j, s in enumerate(all_sets[p])]
        problems.append(ProblemRollout(
            prompt=x, traces=own, sets=all_sets[p],
            agg_prompts=agg_prompts[p * num_sets:(p + 1) * num_sets], aggregations=per_set,
            rewards=rewards,
            trace_old_logprobs=trace_lp[p * num_traces:(p + 1) * num_traces] if trace_lp else None,
            agg_old_logprobs=[agg_lp[first + j * num_aggregations:first + (j + 1) * num_aggregations]
                              for j in range(num_sets)] if agg_lp else None))
    return SpiralBatch(problems)
