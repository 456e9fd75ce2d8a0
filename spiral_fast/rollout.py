"""SPIRAL rollouts: sample traces, draw sets, render aggregation prompts, sample and score aggregations.

``spiral_fast.rollout(model, prompts, ...)`` returns a :class:`spiral_fast.SpiralBatch` ready for
``spiral_fast.step``. Sampling goes through Hugging Face ``generate`` (``engine="hf"``) or, where vLLM
is installed, through ``vllm.LLM.generate`` with prefix caching (``engine="vllm"``).

Vocabulary: P problems, N traces per problem, M sets per problem, K traces per set, G aggregation
responses per set. Token ids are plain Python ints throughout.
"""
from __future__ import annotations

import math
import sys
import types
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

__all__ = ["AggregationTemplate", "draw_sets", "rollout"]

# reward_fn(problem_index, set_traces, response) -> float: the verifier of one aggregation response.
RewardFn = Callable[[int, "list[list[int]]", "list[int]"], float]
# template(prompt, set_traces) -> aggregation prompt token ids.
Template = Callable[["list[int]", "list[list[int]]"], "list[int]"]

ENGINES = ("hf", "vllm")


@dataclass(frozen=True)
class AggregationTemplate:
    """a_j = head + prompt + separator + trace_1 + separator + ... + trace_K + tail (token ids).

    The problem x is repeated so that the aggregator can check the traces against it; ``head``,
    ``separator`` and ``tail`` are fixed token-id sequences (e.g. the encoded instruction text).
    """

    head: tuple[int, ...] = ()
    separator: tuple[int, ...] = ()
    tail: tuple[int, ...] = ()

    def __call__(self, prompt: Sequence[int], traces: Sequence[Sequence[int]]) -> list[int]:
        out = list(self.head) + list(prompt)
        for trace in traces:
            out += list(self.separator) + list(trace)
        return out + list(self.tail)


def draw_sets(num_traces: int, num_sets: int, set_size: int, *,
              generator: torch.Generator | None = None) -> list[tuple[int, ...]]:
    """M sets of K distinct trace indices in [0, N), each drawn uniformly without replacement.

    Sets are drawn independently, so they may overlap and a trace may sit in no set.
    """
    for name, value, low in (("num_traces", num_traces, 1), ("num_sets", num_sets, 1),
                             ("set_size", set_size, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if set_size > num_traces:
        raise ValueError(f"set_size must be <= num_traces={num_traces}, got {set_size}")
    return [tuple(torch.randperm(num_traces, generator=generator)[:set_size].tolist())
            for _ in range(num_sets)]


def _trim(tokens: list[int], eos_token_id: int | None) -> int:
    """Length of a sampled response: up to and including the first EOS (what follows is padding)."""
    if eos_token_id is not None and eos_token_id in tokens:
        return tokens.index(eos_token_id) + 1
    return len(tokens)


def _sample_hf(model, prompts: list[list[int]], num_samples: int, *, max_new_tokens: int,
               temperature: float, eos_token_id, pad_token_id: int, logprobs: bool):
    """num_samples responses per prompt with HF generate, all prompts in one left-padded batch.

    Returns (responses, logprobs): responses[p * num_samples + s] token ids; logprobs per response
    token under softmax(logits / temperature) (the policy the step trains), or None.
    """
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    rows = [p for p in prompts for _ in range(num_samples)]
    # Left padding: every row's last prompt token sits in the last column, where generation starts.
    ids = torch.tensor([[pad_token_id] * (width - len(p)) + p for p in rows], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows], device=device)
    # top_k=0 / top_p=1.0: plain sampling at the temperature, so the behaviour policy is exactly
    # softmax(logits / T) and the log-probs below are its own.
    config = GenerationConfig(do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                              max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                              pad_token_id=pad_token_id, return_dict_in_generate=True,
                              output_logits=logprobs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    finally:
        model.train(was_training)
    new = out.sequences[:, width:]
    responses, lps = [], [] if logprobs else None
    if logprobs:
        # [rows, steps] log-prob of each sampled token; float32 whatever the model dtype.
        logits = torch.stack(out.logits, dim=1).float() / temperature
        token_lp = logits.log_softmax(-1).gather(-1, new[..., None])[..., 0].cpu()
    new = new.cpu().tolist()
    for r, tokens in enumerate(new):
        n = _trim(tokens, eos_token_id)
        responses.append(tokens[:n])
        if logprobs:
            lps.append(token_lp[r, :n].tolist())
    return responses, lps


def _sample_vllm(llm, prompts: list[list[int]], num_samples: int, *, max_new_tokens: int,
                 temperature: float, eos_token_id, pad_token_id: int, logprobs: bool):
    """Same contract as _sample_hf through a ``vllm.LLM`` (built with enable_prefix_caching=True:
    the N trace requests share x, the G aggregation requests share a_j, and the M prompts of a
    problem share x). Not exercised in this repository's tests: vLLM is not installed here.

    The caller keeps the vLLM weights in sync with the trained model. vLLM reports log-probs of the
    raw logits unless the engine was built with logprobs_mode="processed_logprobs"; build it so
    when temperature != 1, or pass logprobs=False (on-policy step).
    """
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(n=num_samples, temperature=temperature, top_k=-1, top_p=1.0,
                            max_tokens=max_new_tokens, logprobs=0 if logprobs else None,
                            stop_token_ids=None if eos_token_id is None else [eos_token_id])
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
    responses, lps = [], [] if logprobs else None
    for request in outputs:
        for completion in request.outputs:
            tokens = list(completion.token_ids)
            responses.append(tokens)
            if logprobs:
                lps.append([step[t].logprob for t, step in zip(tokens, completion.logprobs)])
    return responses, lps


def rollout(model, prompts: Sequence[Sequence[int]], *, reward_fn: RewardFn, template: Template,
            num_traces: int = 4, num_sets: int = 4, set_size: int = 2, num_aggregations: int = 2,
            temperature: float = 1.0, max_new_tokens: int = 64,
            agg_max_new_tokens: int | None = None, eos_token_id: int | None = None,
            pad_token_id: int = 0, generator: torch.Generator | None = None,
            behaviour_logprobs: bool = True, engine: str = "hf"):
    """Sample one SPIRAL batch for P problems.

    For each problem prompt x (token ids): N = num_traces traces y_i ~ pi(.|x); M = num_sets sets of
    K = set_size distinct trace indices (:func:`draw_sets`); per set the aggregation prompt
    a_j = template(x, [y_i for i in S_j]); G = num_aggregations responses z_jg ~ pi(.|a_j); the
    reward r_jg = reward_fn(p, [y_i for i in S_j], z_jg). All traces are sampled in one batched call,
    then all aggregations in a second one.

    model: a HF causal LM (``engine="hf"``) or a ``vllm.LLM`` (``engine="vllm"``).
    Sampling is plain (no top-k/top-p) at ``temperature`` and draws from torch's global RNG (HF) or
    vLLM's seed; ``generator`` drives the set draws. Responses end at ``eos_token_id`` (kept) or at
    ``max_new_tokens`` (``agg_max_new_tokens`` for aggregations, default the same).
    behaviour_logprobs: attach the sampler's per-token log-probs as old log-probs (cheap: from the
    logits generate already computed); False leaves them None (the step is then on-policy).
    Returns a :class:`spiral_fast.SpiralBatch` of P :class:`spiral_fast.ProblemRollout`.
    """
    from spiral_fast.training.batch import ProblemRollout, SpiralBatch

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    prompts = [list(map(int, p)) for p in prompts]
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of non-empty token lists, got {prompts!r}")
    for name, value in (("num_aggregations", num_aggregations), ("max_new_tokens", max_new_tokens)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite float > 0, got {temperature!r}")
    agg_max_new_tokens = max_new_tokens if agg_max_new_tokens is None else agg_max_new_tokens
    sample = _sample_hf if engine == "hf" else _sample_vllm
    common = dict(temperature=temperature, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                  logprobs=behaviour_logprobs)

    traces, trace_lp = sample(model, prompts, num_traces, max_new_tokens=max_new_tokens, **common)
    all_sets, agg_prompts = [], []
    for p, x in enumerate(prompts):
        sets = draw_sets(num_traces, num_sets, set_size, generator=generator)
        own = traces[p * num_traces:(p + 1) * num_traces]
        all_sets.append(sets)
        agg_prompts += [template(x, [own[i] for i in s]) for s in sets]
    aggs, agg_lp = sample(model, agg_prompts, num_aggregations, max_new_tokens=agg_max_new_tokens,
                          **common)

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


class _CallableModule(types.ModuleType):
    """``spiral_fast.rollout`` is both this module (spiral_fast's lazy __getattr__ returns the
    submodule, and tests import helpers from it) and the function users call:
    ``spiral_fast.rollout(model, prompts, ...)`` forwards to :func:`rollout`."""

    def __call__(self, *args, **kwargs):
        return rollout(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
