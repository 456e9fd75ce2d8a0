"""The paper's test-time evaluation: pass@k, majority vote, and recursive self-aggregation (RSA).

Vocabulary: P problems; n samples per problem of which c are right; RSA keeps a population of
``population`` candidates per problem and aggregates sets of ``set_size`` of them per step.
Token ids are plain Python ints throughout.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from spiral_fast.rollout.sampler import as_sampler
from spiral_fast.rollout.sets import draw_sets

# score_fn(problem_index, response_tokens) -> float in [0, 1]: the verifier of one response.
ScoreFn = Callable[[int, "list[int]"], float]


def _count(name: str, value) -> int:
    # numbers.Integral: numpy integers count too; bool is an int subclass but never a count
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return int(value)


def _pass_at_k_one(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k / i): c factors in (0, 1], no
    factorials, so no overflow for any n (C(1000, 500) alone overflows a float64)."""
    if n - c < k:  # every k-subset holds a right sample
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def _as_list(name: str, value) -> list | None:
    """value's entries as Python ints if it is a list / tuple / 1-D tensor, None if a scalar."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            return None
        if value.dim() != 1 or value.dtype.is_floating_point or value.dtype == torch.bool:
            raise ValueError(f"{name} must be a 1-D integer tensor, got shape {tuple(value.shape)} dtype {value.dtype}")
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    return None


def _scalar(value):
    """A 0-d integer tensor as a Python int; anything else unchanged (validated by _count)."""
    if isinstance(value, torch.Tensor) and not value.dtype.is_floating_point and value.dtype != torch.bool:
        return int(value.item())
    return value


def pass_at_k(num_samples, num_correct, k: int):
    """The unbiased pass@k estimator 1 - C(n-c, k) / C(n, k) (Chen et al., 2021).

    num_samples n and num_correct c: ints, or lists / 1-D integer tensors over P problems (a scalar
    broadcasts against a list). Returns a float for scalars, else a float64 tensor [P] of the
    per-problem estimates (take ``.mean()`` for the benchmark's pass@k).
    Raises ValueError if k < 1, k > n, c < 0 or c > n.
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    k = int(k)
    ns, cs = _as_list("num_samples", num_samples), _as_list("num_correct", num_correct)
    scalar = ns is None and cs is None
    if ns is not None and cs is not None and len(ns) != len(cs):
        raise ValueError(f"num_samples has {len(ns)} entries but num_correct has {len(cs)}")
    size = 1 if scalar else len(ns if ns is not None else cs)
    ns = [_scalar(num_samples)] * size if ns is None else ns
    cs = [_scalar(num_correct)] * size if cs is None else cs
    out = []
    for p, (n, c) in enumerate(zip(ns, cs)):
        where = "" if scalar else f"[{p}]"
        n, c = _count(f"num_samples{where}", n), _count(f"num_correct{where}", c)
        if c > n:
            raise ValueError(f"num_correct{where} must be <= num_samples={n}, got {c}")
        if k > n:
            raise ValueError(f"k must be <= num_samples{where}={n} (pass@k needs n >= k samples), got {k}")
        out.append(_pass_at_k_one(n, c, k))
    return out[0] if scalar else torch.tensor(out, dtype=torch.float64)


def majority_vote(answers: Sequence[Hashable | None]):
    """The most frequent answer; a tie goes to the answer that occurs first; None entries (no
    answer extracted) are ignored. Returns None if no entry is an answer."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == top)


@dataclass(frozen=True)
class RSAResult:
    """accuracy: steps + 1 floats, the mean score of population t over all problems and members.
    populations: steps + 1 entries; ``populations[t][p]`` holds the ``population`` responses (token
    lists) of problem p at step t (step 0: the sampled traces)."""

    accuracy: list
    populations: list


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def recursive_aggregation(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    template,
    score_fn: ScoreFn,
    population: int = 8,
    set_size: int = 4,
    steps: int = 10,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    agg_max_new_tokens: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    engine: str = "hf",
    generator: torch.Generator | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> RSAResult:
    """Recursive self-aggregation as the paper runs it, for P problems.

    Step 0 samples ``population`` traces per problem x (``max_new_tokens``). Step t+1 draws, per
    problem, ``population`` sets of ``set_size`` distinct members of population t, each set drawn
    independently (uniform without replacement, members in random order; sets may repeat), renders
    ``template(x, members)`` and samples one response per set (``agg_max_new_tokens``, default
    ``max_new_tokens``): these responses are population t+1. Every response r of problem p is
    scored by ``score_fn(p, r)`` in [0, 1]; ``accuracy[t]`` is the mean score of population t.

    model: a :class:`spiral_fast.rollout.Sampler` (``HFSampler``, ``VLLMSampler``), or a plain HF
    causal LM / ``peft.PeftModel`` (sampled with ``HFSampler``); ``engine``, the older switch, is
    still accepted: "hf" (the default) takes any sampler, "vllm" needs a VLLMSampler. All requests of a step go
    in one batched call. Sampling is plain at ``temperature`` (HF: torch's global RNG, so seed it
    with ``torch.manual_seed``); ``generator`` drives the set draws.
    ``on_step(t, accuracy[t])`` is called as each population is scored (progress reports).
    Raises ValueError naming the argument on bad input.
    """
    sampler = as_sampler(model, engine, pad_token_id=pad_token_id)
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of non-empty token lists, got {prompts!r}")
    prompts = [list(map(int, p)) for p in prompts]
    if any(len(p) == 0 for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of non-empty token lists, got {prompts!r}")
    _check_int("population", population, 1)
    _check_int("set_size", set_size, 1)
    _check_int("steps", steps, 0)
    _check_int("max_new_tokens", max_new_tokens, 1)
    if agg_max_new_tokens is not None:
        _check_int("agg_max_new_tokens", agg_max_new_tokens, 1)
    if set_size > population:
        raise ValueError(f"set_size must be <= population={population}, got {set_size}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite float > 0, got {temperature!r}")
    if not callable(template):
        raise ValueError(f"template must be callable, got {template!r}")
    if not callable(score_fn):
        raise ValueError(f"score_fn must be callable, got {score_fn!r}")
    common = dict(temperature=temperature, eos_token_id=eos_token_id, logprobs=False)

    def scored(responses: list[list[int]]) -> tuple[list, float]:
        per_problem = [responses[p * population : (p + 1) * population] for p in range(len(prompts))]
        total = 0.0
        for p, rows in enumerate(per_problem):
            for r in rows:
                s = score_fn(p, list(r))
                if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s <= 1.0:
                    raise ValueError(f"score_fn must return a float in [0, 1], got {s!r} for problem {p}")
                total += s
        return per_problem, total / len(responses)

    responses, _ = sampler.generate(prompts, population, max_new_tokens=max_new_tokens, **common)
    current, acc = scored(responses)
    populations, accuracy = [current], [acc]
    if on_step is not None:
        on_step(0, acc)
    for _ in range(steps):
        agg_prompts = []
        for p, x in enumerate(prompts):
            # RSA draws each set on its own (sets may repeat), unlike SPIRAL's distinct sets
            for s in draw_sets(population, population, set_size, generator=generator, distinct=False):
                agg_prompts.append(template(x, [current[p][i] for i in s]))
        responses, _ = sampler.generate(agg_prompts, 1, max_new_tokens=agg_max_new_tokens or max_new_tokens, **common)
        current, acc = scored(responses)
        populations.append(current)
        accuracy.append(acc)
        if on_step is not None:
            on_step(len(accuracy) - 1, acc)
    return RSAResult(accuracy=accuracy, populations=populations)
