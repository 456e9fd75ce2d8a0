"""``rollout``: sample traces, draw sets, render aggregation prompts, sample and score aggregations.

The documented form is ``rollout(sampler, task, problems, config)``: a :class:`Sampler`, a
:class:`spiral_fast.Task` (its prompts, aggregation template, reward, EOS and padding), the problems
to sample and a :class:`RolloutConfig`. The keyword form of earlier releases,
``rollout(model, prompts, reward_fn=..., template=..., num_traces=...)``, still works and warns.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence

import torch

from spiral_fast.policy_step.batch import ProblemRollout, SpiralBatch
from spiral_fast.rollout.config import RolloutConfig
from spiral_fast.rollout.hf import row_seed
from spiral_fast.rollout.order import order_sets
from spiral_fast.rollout.parallel import check_parallel_args, sample_parallel_hf
from spiral_fast.rollout.sampler import as_sampler
from spiral_fast.rollout.sets import check_set_sizes, draw_sets

# reward_fn(problem_index, set_traces, response) -> float: the verifier of one aggregation response.
RewardFn = Callable[[int, "list[list[int]]", "list[int]"], float]
# template(prompt, set_traces) -> aggregation prompt token ids.
Template = Callable[["list[int]", "list[list[int]]"], "list[int]"]
Progress = Callable[[str, int, int], None]
_HERE = os.path.dirname(os.path.abspath(__file__))  # frames in this package are not the caller


def rollout(
    sampler,
    task=None,
    problems=None,
    config: RolloutConfig | None = None,
    *,
    generator=None,
    seed: int | Sequence[int] | None = None,
    aggregation: str = "text",
    agg_head=None,
    behaviour_logprobs: bool = True,
    on_progress: Progress | None = None,
    **legacy,
):
    """Sample one SPIRAL batch: ``rollout(sampler, task, problems, config)``.

    For each problem x (``task.prompt(problem)``, token ids): N = ``config.num_traces`` traces
    y_i ~ pi(.|x); M = ``config.num_sets`` distinct sets of K = ``config.set_size`` traces
    (:func:`draw_sets`: uniform over the C(N, K) subsets), their members in ``config.candidate_order``
    ("shared": the order whose aggregation prompts share the longest prefixes); per set the
    aggregation prompt a_j = ``task.template(x, [y_i for i in S_j])``; G = ``config.num_aggregations``
    responses z_jg ~ pi(.|a_j), scored r_jg = ``task.reward(problem, set_traces, z_jg)``. Traces end at
    ``task.eos_token_id`` (kept) or after ``config.max_new_tokens`` (aggregations:
    ``config.agg_tokens``); sampling is plain at ``config.temperature``.

    sampler: a :class:`Sampler` (``HFSampler``, ``VLLMSampler``) or a plain HF causal LM / PeftModel.
    generator: drives the set draws (default: per-problem generators from ``seed``, else torch's
    global RNG). seed: an int (per-problem seeds derived from it and the problem's index) or one int
    per problem: each problem's samples then depend on its own seed, not on the other problems of the
    call (up to float rounding); None samples from the sampler's own RNG. aggregation: "text", or
    "parallel" (parallel-encoded aggregation, HF only: the aggregator reads x and its traces as keys
    and values, then ``agg_head``; see ``spiral_fast.rollout.parallel``). behaviour_logprobs: attach
    the sampler's per-token log-probs as old log-probs. on_progress(phase, done, total): called as
    sampling phases finish (a progress bar). Returns a :class:`spiral_fast.SpiralBatch` of one
    :class:`spiral_fast.ProblemRollout` per problem.
    """
    from spiral_fast.tasks.base import Task

    if not isinstance(task, Task):
        if task is None and "prompts" in legacy:
            task = legacy.pop("prompts")
        if problems is not None or config is not None:
            _form_error(task)
        return _keyword_form(
            sampler,
            task,
            generator=generator,
            seed=seed,
            aggregation=aggregation,
            agg_head=agg_head,
            behaviour_logprobs=behaviour_logprobs,
            on_progress=on_progress,
            **legacy,
        )
    if legacy:
        raise ValueError(
            f"rollout(sampler, task, problems, config) takes its settings from config, got {sorted(legacy)}"
        )
    if config is None:
        config = RolloutConfig()
    if not isinstance(config, RolloutConfig):
        raise ValueError(f"config must be a spiral_fast.RolloutConfig, got {type(config).__name__}")
    problems = list(problems or [])
    if not problems:
        raise ValueError("problems must be a non-empty list")
    parallel = (
        dict(aggregation="parallel", agg_head=agg_head)
        if aggregation == "parallel"
        else dict(aggregation=aggregation, template=task.template)
    )
    return sample_rollout(
        sampler,
        [task.prompt(p) for p in problems],
        reward_fn=lambda i, set_traces, z: task.reward(problems[i], set_traces, z),
        num_traces=config.num_traces,
        num_sets=config.num_sets,
        set_size=config.set_size,
        num_aggregations=config.num_aggregations,
        temperature=config.temperature,
        max_new_tokens=config.max_new_tokens,
        agg_max_new_tokens=config.agg_tokens,
        eos_token_id=task.eos_token_id,
        pad_token_id=task.pad_token_id,
        generator=generator,
        seed=seed,
        behaviour_logprobs=behaviour_logprobs,
        candidate_order=config.candidate_order,
        on_progress=on_progress,
        **parallel,
    )


def _form_error(task):
    raise ValueError(
        f"rollout(sampler, task, problems, config) needs a spiral_fast.Task as task, got {type(task).__name__}"
    )


def _keyword_form(model, prompts, **kwargs):
    """The keyword form of earlier releases: ``rollout(model, prompts, reward_fn=..., ...)``."""
    warnings.warn(
        "rollout(model, prompts, reward_fn=..., template=..., num_traces=...) is deprecated: call "
        "rollout(sampler, task, problems, config) with a spiral_fast.Task and a spiral_fast.RolloutConfig",
        DeprecationWarning,
        stacklevel=_caller_level(),
    )
    if "reward_fn" not in kwargs:
        raise ValueError("the keyword form rollout(model, prompts, ...) needs reward_fn=")
    return sample_rollout(model, prompts, **kwargs)


def _caller_level() -> int:
    """``warnings.warn``'s stacklevel (from the function that calls this one) of the first frame
    outside spiral_fast/rollout: the user's line, whether they called ``rollout`` or the module."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _HERE:
        frame, level = frame.f_back, level + 1
    return level


def sample_rollout(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    reward_fn: RewardFn,
    template: Template | None = None,
    num_traces: int = 4,
    num_sets: int = 4,
    set_size: int = 2,
    num_aggregations: int = 2,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    agg_max_new_tokens: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    generator: torch.Generator | None = None,
    behaviour_logprobs: bool = True,
    engine: str = "hf",
    aggregation: str = "text",
    agg_head: Sequence[int] | None = None,
    seed: int | Sequence[int] | None = None,
    candidate_order: str = "random",
    on_progress: Progress | None = None,
):
    """Sample one SPIRAL batch for P problems given as token ids (the engine of both forms of
    :func:`rollout`; the keyword form's arguments, whose defaults it keeps).

    For each problem prompt x (token ids): N = num_traces traces y_i ~ pi(.|x); M = num_sets sets of
    K = set_size distinct trace indices, distinct as sets (:func:`draw_sets` with ``distinct=True``:
    M <= C(N, K)), drawn for every problem before sampling, their members in ``candidate_order``
    ("random": as drawn; "shared": ``spiral_fast.rollout.order.shared_order``); per set the
    aggregation prompt a_j = template(x, [y_i for i in S_j]); G = num_aggregations responses
    z_jg ~ pi(.|a_j); the reward r_jg = reward_fn(p, [y_i for i in S_j], z_jg). Sampling goes
    through the sampler's ``search_and_aggregate`` (traces, then aggregations; a request-level
    engine starts a problem's aggregations as soon as its traces are done).

    model: a :class:`spiral_fast.rollout.Sampler` (``HFSampler``, ``VLLMSampler``), or a plain HF
    causal LM / PeftModel (sampled with ``HFSampler``). ``engine``, the older switch, is still
    accepted: "hf" (the default) takes any sampler, "vllm" needs a VLLMSampler.
    Sampling is plain (no top-k/top-p) at ``temperature``; ``seed`` as in :func:`rollout`;
    ``generator`` drives the set draws. Responses end at ``eos_token_id`` (kept) or at
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
        head = check_parallel_args(
            getattr(model, "model", model), prompts, template, agg_head, kind, max_new_tokens, agg_max_new_tokens
        )
    elif aggregation != "text":
        raise ValueError(f"aggregation must be 'text' or 'parallel', got {aggregation!r}")
    elif template is None or agg_head is not None:
        raise ValueError(
            "aggregation='text' renders a_j with template (required); agg_head is for "
            f"aggregation='parallel', got template={template!r}, agg_head={agg_head!r}"
        )
    seeds = problem_seeds(seed, len(prompts))
    sampler = as_sampler(model, engine, pad_token_id=pad_token_id)
    common = dict(temperature=temperature, eos_token_id=eos_token_id, logprobs=behaviour_logprobs)

    # every problem's sets before any sampling: the draws do not depend on the traces, nor on the
    # order in which a pipelined engine finishes the problems
    all_sets = [
        draw_sets(
            num_traces,
            num_sets,
            set_size,
            distinct=True,
            generator=generator
            if generator is not None or seeds is None
            else torch.Generator().manual_seed(row_seed(seeds[p], "sets")),
        )
        for p in range(len(prompts))
    ]
    agg_prompts: list = [None] * len(prompts)

    def agg_prompts_of(p: int, own: list[list[int]]) -> list[list[int]]:
        all_sets[p] = order_sets(candidate_order, all_sets[p], own)
        agg_prompts[p] = [
            list(head) if aggregation == "parallel" else template(prompts[p], [own[i] for i in s]) for s in all_sets[p]
        ]
        return agg_prompts[p]

    if aggregation == "parallel":
        traces, trace_lp = sampler.generate(
            prompts, num_traces, max_new_tokens=max_new_tokens, **({} if seeds is None else {"seeds": seeds}), **common
        )
        if on_progress is not None:
            on_progress("traces", len(prompts), len(prompts))
        for p in range(len(prompts)):
            agg_prompts_of(p, traces[p * num_traces : (p + 1) * num_traces])
        aggs, agg_lp = sample_parallel_hf(
            sampler.model,
            prompts,
            traces,
            all_sets,
            head,
            num_aggregations,
            max_new_tokens=agg_max_new_tokens,
            pad_token_id=pad_token_id,
            **common,
        )
        if on_progress is not None:
            on_progress("aggregations", len(prompts), len(prompts))
    else:
        traces, trace_lp, aggs, agg_lp = sampler.search_and_aggregate(
            prompts,
            num_traces,
            agg_prompts_of,
            num_aggregations,
            max_new_tokens=max_new_tokens,
            agg_max_new_tokens=agg_max_new_tokens,
            seeds=seeds,
            on_progress=on_progress,
            **common,
        )

    problems = []
    for p, x in enumerate(prompts):
        own = traces[p * num_traces : (p + 1) * num_traces]
        first = p * num_sets * num_aggregations  # this problem's first aggregation row
        per_set = [aggs[first + j * num_aggregations : first + (j + 1) * num_aggregations] for j in range(num_sets)]
        rewards = [[float(reward_fn(p, [own[i] for i in s], z)) for z in per_set[j]] for j, s in enumerate(all_sets[p])]
        problems.append(
            ProblemRollout(
                prompt=x,
                traces=own,
                sets=all_sets[p],
                agg_prompts=agg_prompts[p],
                aggregations=per_set,
                rewards=rewards,
                trace_old_logprobs=trace_lp[p * num_traces : (p + 1) * num_traces] if trace_lp else None,
                agg_old_logprobs=[
                    agg_lp[first + j * num_aggregations : first + (j + 1) * num_aggregations] for j in range(num_sets)
                ]
                if agg_lp
                else None,
            )
        )
    return SpiralBatch(problems)


def problem_seeds(seed: int | Sequence[int] | None, count: int) -> list[int] | None:
    """One seed per problem: None stays None, an int gives ``row_seed(seed, p)``, a sequence is checked."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, list, tuple)):
        raise ValueError(f"seed must be None, an int or one int per problem, got {seed!r}")
    if isinstance(seed, int):
        return [row_seed(seed, p) for p in range(count)]
    if len(seed) != count or not all(isinstance(s, int) and not isinstance(s, bool) for s in seed):
        raise ValueError(f"seed must give one int per problem ({count}), got {seed!r}")
    return list(seed)
