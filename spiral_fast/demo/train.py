"""The demo's training loop: rollout on the toy task -> spiral_fast.step with AdamW, per iteration.

One loop, two configurations (``DemoConfig.method``): "spiral" trains both roles on SPIRAL
rollouts; "grpo" trains single traces, each scored on its own answer, with GRPO's group advantage,
on the same number of sampled response tokens per problem. ``run_compare`` trains both from the
same seed and evaluates them with pass@k, majority vote and recursive self-aggregation.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace
from typing import Callable

import torch

STEP_IMPLS = ("step", "reference")
METHODS = ("spiral", "grpo")
ENGINES = ("hf", "vllm")  # spiral_fast.rollout's samplers
# fields with a fixed set of values (the CLI turns each into --name {choices})
AGGREGATIONS = ("text", "parallel")  # SpiralConfig.aggregation
CHOICES = {"step_impl": STEP_IMPLS, "method": METHODS, "engine": ENGINES, "aggregation": AGGREGATIONS}


@dataclass(frozen=True)
class DemoConfig:
    """Settings of `spiral-fast demo` (the CLI exposes each field as --field-name).

    Per iteration: `problems` problems, N=`traces` traces each, M=`sets` sets of K=`set_size`
    traces, G=`aggregations` aggregation responses per set; then one step of `step_impl`
    ("step" = spiral_fast.step, "reference" = spiral_fast.step_reference) with AdamW at `lr`.
    `threads`: torch intra-op threads during the run (restored after). One is fastest here: the
    model is tiny, and on a shared CPU a thread pool contends for cores (measured: the same step
    took 3-9 s with 2 threads on a loaded 2-core machine, 0.2 s with 1).
    `method`: "spiral", or "grpo" (see :func:`grpo_rollout`: N + M*G single traces per problem).
    `dynamic_sampling`: drop the problems whose advantages are all zero and sample more until the
    batch holds `problems` informative ones, for at most `max_extra_rounds` extra rollouts per
    iteration (the paper's dynamic sampling; an iteration that finds none makes no step).
    `engine`: the sampler, "hf" (transformers generate) or "vllm" (a ``spiral_fast.VLLMSampler``
    synced after every step; its model has attention heads of size 32, the smallest vLLM's CPU
    attention runs).
    `aggregation`: "text" (the paper: the aggregator reads x and its set's traces as a rendered
    prompt) or "parallel" (parallel-encoded aggregation: it reads them as keys and values, then the
    head [sep, pick]; ``SpiralConfig(aggregation="parallel")``; HF engine only).
    """

    iterations: int = 150
    seed: int = 0
    problems: int = 8
    traces: int = 8
    sets: int = 4
    set_size: int = 3
    aggregations: int = 4
    base: int = 6
    digits: int = 1
    lr: float = 2e-3
    temperature: float = 1.0
    hidden_size: int = 64
    layers: int = 2
    step_impl: str = "step"
    threads: int = 1
    method: str = "spiral"
    dynamic_sampling: bool = False
    max_extra_rounds: int = 4
    engine: str = "hf"
    aggregation: str = "text"

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("lr", "temperature"):
                if not (isinstance(value, (int, float)) and value > 0):
                    raise ValueError(f"{f.name} must be > 0, got {value!r}")
            elif f.type == "int" and f.name != "seed" and not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{f.name} must be an int >= 1, got {value!r}")
            elif f.type == "bool" and not isinstance(value, bool):
                raise ValueError(f"{f.name} must be a bool, got {value!r}")
            elif f.name in CHOICES and value not in CHOICES[f.name]:
                raise ValueError(f"{f.name} must be one of {CHOICES[f.name]}, got {value!r}")
        if self.set_size > self.traces:
            raise ValueError(f"set_size must be <= traces ({self.traces}), got {self.set_size}")
        if self.aggregation == "parallel" and self.engine != "hf":
            raise ValueError(f"aggregation='parallel' needs engine='hf' (vLLM cannot merge KV caches), "
                             f"got engine={self.engine!r}")


@dataclass(frozen=True)
class DemoRun:
    """A finished demo run: the trained model, its toy task and one metrics dict per iteration."""

    model: object
    task: object
    history: list


def run_demo(config: DemoConfig, *, on_iteration: Callable[[dict], None] | None = None,
             progress: bool = True) -> list[dict]:
    """Train a tiny random Qwen2 on the toy task; returns one metrics dict per iteration
    (``train_demo(...).history``)."""
    return train_demo(config, on_iteration=on_iteration, progress=progress).history


def train_demo(config: DemoConfig, *, on_iteration: Callable[[dict], None] | None = None,
               progress: bool = True) -> DemoRun:
    """Train a tiny random Qwen2 on the toy task with ``config.method``; returns a :class:`DemoRun`.

    Deterministic for a given config.seed (model init, problems, sets and sampling are all seeded).
    Metrics per iteration, over the iteration's first rollout (before any dynamic sampling, so
    they estimate the current policy): reward (mean reward the method trains on); trace_acc
    (share of right traces); with "spiral" also agg_reward (mean r_jg), set_value (mean over sets
    of R_j = mean_g r_jg: equal to agg_reward since every set has G responses) and set_value_std
    (spread of R_j across sets: how much the traces in a set matter). Then dropped (problems
    dropped by dynamic sampling, 0 without it), trained_problems, loss and the step's metrics.
    """
    from spiral_fast._utils import torch_threads

    with torch_threads(config.threads):
        return _train(config, on_iteration, progress)


def _aggregation_args(task, config: DemoConfig) -> dict:
    """rollout's aggregation arguments: the text template, or the head read after the traces' K/V."""
    tok = task.tokenizer
    if config.aggregation == "parallel":
        return dict(aggregation="parallel", agg_head=[tok.sep_id, tok.pick_id])
    return dict(template=task.template)


def spiral_rollout(model, task, problems, config: DemoConfig, generator):
    """SPIRAL rollouts of `problems` (N traces, M sets of K, G aggregations; one-token responses):
    (SpiralBatch, metrics)."""
    import spiral_fast

    batch = spiral_fast.rollout(
        model, [task.prompt(p) for p in problems],
        reward_fn=lambda i, set_traces, z: task.reward(problems[i], set_traces, z),
        **_aggregation_args(task, config), num_traces=config.traces, num_sets=config.sets,
        set_size=config.set_size, num_aggregations=config.aggregations,
        temperature=config.temperature, max_new_tokens=1, pad_token_id=task.tokenizer.pad_id,
        generator=generator, engine=config.engine)
    rewards = [r for pr in batch.problems for per_set in pr.rewards for r in per_set]
    set_values = [sum(per_set) / len(per_set) for pr in batch.problems for per_set in pr.rewards]
    traces = [(problems[i], y.tolist()) for i, pr in enumerate(batch.problems) for y in pr.traces]
    reward = sum(rewards) / len(rewards)
    return batch, {
        "reward": reward,
        "agg_reward": reward,
        "set_value": sum(set_values) / len(set_values),
        "set_value_std": float(torch.tensor(set_values).std()),
        "trace_acc": sum(task.trace_correct(p, y) for p, y in traces) / len(traces),
    }


def grpo_rollout(model, task, problems, config: DemoConfig, generator):
    """GRPO rollouts of `problems`: R = N + M*G single traces per problem, each rewarded 1 if its own
    answer is right; (SpiralBatch, metrics).

    Compute matching: a SPIRAL problem samples N traces and M*G aggregation responses, each one
    token long in this task, so N + M*G response tokens; GRPO samples R = N + M*G one-token traces,
    the same number of sampled response tokens per problem (the paper instead doubles the response
    length: 12 x 8192 = 8 x 4096 + 16 x 4096). The defaults give R = 8 + 4*4 = 24.

    The group is expressed as a SpiralBatch problem with one "set" whose aggregation prompt is x
    itself and whose G = R responses are the traces: the aggregator role's set baseline then is
    exactly GRPO's group mean, r_i - mean(r). The trace role holds one placeholder (the first
    response, in the only set, so its set advantage is 0) and the step runs with trace_coef = 0.
    """
    from spiral_fast.rollout.hf import sample_hf
    from spiral_fast.rollout.vllm import sample_vllm
    from spiral_fast.policy_step.batch import ProblemRollout, SpiralBatch

    del generator  # no sets to draw
    r = config.traces + config.sets * config.aggregations
    prompts = [task.prompt(p) for p in problems]
    sample = sample_hf if config.engine == "hf" else sample_vllm
    responses, lps = sample(model, prompts, r, max_new_tokens=1, temperature=config.temperature,
                            eos_token_id=None, pad_token_id=task.tokenizer.pad_id, logprobs=True)
    rows = []
    for p, (problem, x) in enumerate(zip(problems, prompts)):
        group, group_lp = responses[p * r:(p + 1) * r], lps[p * r:(p + 1) * r]
        rows.append(ProblemRollout(
            prompt=x, traces=[group[0]], sets=[(0,)], agg_prompts=[x], aggregations=[group],
            rewards=[[float(task.trace_correct(problem, y)) for y in group]],
            trace_old_logprobs=[group_lp[0]], agg_old_logprobs=[group_lp]))
    acc = sum(sum(pr.rewards[0]) for pr in rows) / (len(rows) * r)
    return SpiralBatch(rows), {"reward": acc, "trace_acc": acc}


# method -> (rollout function, SpiralConfig overrides): the only place the two methods differ
METHOD_SETUPS = {
    "spiral": (spiral_rollout, {}),
    "grpo": (grpo_rollout, {"trace_coef": 0.0}),
}


def informative_batch(batch, resample: Callable[[int], object], *, target: int, max_extra_rounds: int,
                      config):
    """Dynamic sampling: keep the problems of `batch` whose advantages under `config` are not all
    zero (``SpiralBatch.informative``) and call ``resample(count)`` for a fresh SpiralBatch of the
    shortfall, at most `max_extra_rounds` times, until `target` problems are kept.

    Returns (SpiralBatch of the kept problems in sampling order, or None if none, number dropped).
    """
    from spiral_fast.policy_step.batch import SpiralBatch

    kept, dropped = [], 0
    for extra in range(max_extra_rounds + 1):
        if extra:
            batch = resample(target - len(kept))
        informative, lost = batch.informative(config)
        dropped += lost
        kept += list(informative.problems) if informative is not None else []
        if len(kept) >= target:
            break
    return (SpiralBatch(kept) if kept else None), dropped


def _train(config: DemoConfig, on_iteration, progress: bool) -> DemoRun:
    import spiral_fast
    from spiral_fast.demo.model import tiny_qwen2
    from spiral_fast.demo.task import ToyTask

    task = ToyTask(base=config.base, num_digits=config.digits)
    torch.manual_seed(config.seed)  # generate() samples from the global RNG
    generator = torch.Generator().manual_seed(config.seed)
    heads = {}
    if config.engine == "vllm":  # vLLM's CPU attention has no head size below 32: heads of 32
        h = max(1, config.hidden_size // 32)
        heads = dict(num_heads=h, num_kv_heads=h // 2 if h % 2 == 0 else h)
    model = tiny_qwen2(len(task.tokenizer), seed=config.seed, hidden_size=config.hidden_size,
                       num_layers=config.layers, **heads)
    model.train()
    sampler = None
    if config.engine == "vllm":
        sampler = spiral_fast.VLLMSampler(model, dtype="float32", seed=config.seed, kv_cache_memory_bytes=64 << 20)
    try:
        return _loop(config, task, model, sampler, generator, on_iteration, progress)
    finally:
        if sampler is not None:
            sampler.close()


def _loop(config: DemoConfig, task, model, sampler, generator, on_iteration, progress: bool) -> DemoRun:
    import spiral_fast
    from tqdm import tqdm

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    step_fn = spiral_fast.step if config.step_impl == "step" else spiral_fast.step_reference
    collect, overrides = METHOD_SETUPS[config.method]
    # GRPO's single-trace rows have no aggregation: its batches are text mode whatever `aggregation`
    aggregation = config.aggregation if config.method == "spiral" else "text"
    step_config = spiral_fast.SpiralConfig(temperature=config.temperature, aggregation=aggregation, **overrides)

    def sample(count):
        return collect(model if sampler is None else sampler, task, task.sample_problems(count, generator), config,
                       generator)

    history = []
    bar = tqdm(range(config.iterations), desc=f"{config.method} demo", disable=not progress)
    for it in bar:
        start = time.perf_counter()
        batch, metrics = sample(config.problems)
        dropped = 0
        if config.dynamic_sampling:
            batch, dropped = informative_batch(batch, lambda n: sample(n)[0], target=config.problems,
                                               max_extra_rounds=config.max_extra_rounds, config=step_config)
        row = {"iteration": it, **metrics, "dropped": dropped,
               "trained_problems": len(batch) if batch is not None else 0, "loss": 0.0}
        if batch is not None:
            out = step_fn(model, batch, config=step_config, optimizer=optimizer)
            if sampler is not None:  # vLLM samples the new weights from the next rollout on
                row["sync_seconds"] = sampler.sync(model)["seconds"]
            row["loss"] = float(out.loss)
            row.update({f"step/{k}": float(v) for k, v in out.metrics.items()
                        if isinstance(v, (int, float)) and k not in row})
        row["seconds"] = time.perf_counter() - start
        history.append(row)
        bar.set_postfix(reward=f"{row['reward']:.2f}", traces=f"{row['trace_acc']:.2f}")
        if on_iteration is not None:
            on_iteration(row)
    return DemoRun(model=model, task=task, history=history)


def run_compare(config: DemoConfig, eval_config=None, *, baseline: str = "grpo",
                on_iteration: Callable[[str, dict], None] | None = None, progress: bool = True):
    """Train the same tiny model from the same seed with SPIRAL and with `baseline` (same loop,
    ``replace(config, method=...)``), then evaluate both with
    :func:`spiral_fast.demo.eval.evaluate_demo`. Returns {method: (DemoRun, EvalResult)}."""
    from spiral_fast.demo.eval import EvalConfig, evaluate_demo

    if baseline not in METHODS or baseline == "spiral":
        raise ValueError(f"baseline must be one of {[m for m in METHODS if m != 'spiral']}, got {baseline!r}")
    eval_config = EvalConfig() if eval_config is None else eval_config
    out = {}
    for method in ("spiral", baseline):
        run = train_demo(replace(config, method=method), progress=progress,
                         on_iteration=None if on_iteration is None else (lambda row, m=method: on_iteration(m, row)))
        out[method] = (run, evaluate_demo(run.model, config, eval_config))
    return out
