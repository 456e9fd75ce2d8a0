"""The demo's SPIRAL loop: rollout on the toy task -> spiral_fast.step with AdamW, per iteration."""
from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Callable

import torch

STEP_IMPLS = ("step", "reference")
ENGINES = ("hf", "vllm")  # spiral_fast.rollout's samplers


@dataclass(frozen=True)
class DemoConfig:
    """Settings of `spiral-fast demo` (the CLI exposes each field as --field-name).

    Per iteration: `problems` problems, N=`traces` traces each, M=`sets` sets of K=`set_size`
    traces, G=`aggregations` aggregation responses per set; then one step of `step_impl`
    ("step" = spiral_fast.step, "reference" = spiral_fast.step_reference) with AdamW at `lr`.
    `threads`: torch intra-op threads during the run (restored after). One is fastest here: the
    model is tiny, and on a shared CPU a thread pool contends for cores (measured: the same step
    took 3-9 s with 2 threads on a loaded 2-core machine, 0.2 s with 1).
    `engine`: the sampler, "hf" (transformers generate) or "vllm" (a ``spiral_fast.VLLMSampler``
    synced after every step; its model has attention heads of size 32, the smallest vLLM's CPU
    attention runs).
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
    engine: str = "hf"

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("lr", "temperature"):
                if not (isinstance(value, (int, float)) and value > 0):
                    raise ValueError(f"{f.name} must be > 0, got {value!r}")
            elif f.type == "int" and f.name != "seed" and not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{f.name} must be an int >= 1, got {value!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.step_impl not in STEP_IMPLS:
            raise ValueError(f"step_impl must be one of {STEP_IMPLS}, got {self.step_impl!r}")
        if self.set_size > self.traces:
            raise ValueError(f"set_size must be <= traces ({self.traces}), got {self.set_size}")


def run_demo(config: DemoConfig, *, on_iteration: Callable[[dict], None] | None = None,
             progress: bool = True) -> list[dict]:
    """Train a tiny random Qwen2 on the toy task; returns one metrics dict per iteration.

    Deterministic for a given config.seed (model init, problems, sets and sampling are all seeded).
    Metrics: agg_reward (mean r_jg); set_value (mean over sets of R_j = mean_g r_jg: equal to
    agg_reward since every set has G responses) and set_value_std (spread of R_j across sets: how
    much the traces in a set matter); trace_acc (share of right traces); loss; the step's metrics.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(config, on_iteration, progress)
    finally:
        torch.set_num_threads(threads)


def _train(config: DemoConfig, on_iteration, progress: bool) -> list[dict]:
    import spiral_fast
    from spiral_fast.demo.model import tiny_qwen2
    from spiral_fast.demo.task import ToyTask

    task = ToyTask(base=config.base, num_digits=config.digits)
    tok = task.tokenizer
    torch.manual_seed(config.seed)  # generate() samples from the global RNG
    generator = torch.Generator().manual_seed(config.seed)
    heads = {}
    if config.engine == "vllm":  # vLLM's CPU attention has no head size below 32: heads of 32
        h = max(1, config.hidden_size // 32)
        heads = dict(num_heads=h, num_kv_heads=h // 2 if h % 2 == 0 else h)
    model = tiny_qwen2(len(tok), seed=config.seed, hidden_size=config.hidden_size,
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


def _loop(config: DemoConfig, task, model, sampler, generator, on_iteration, progress: bool) -> list[dict]:
    import spiral_fast
    from tqdm import tqdm

    tok = task.tokenizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    step_fn = spiral_fast.step if config.step_impl == "step" else spiral_fast.step_reference
    step_config = spiral_fast.SpiralConfig(temperature=config.temperature)

    history = []
    bar = tqdm(range(config.iterations), desc="spiral demo", disable=not progress)
    for it in bar:
        start = time.perf_counter()
        problems = task.sample_problems(config.problems, generator)
        batch = spiral_fast.rollout(
            model if sampler is None else sampler, [task.prompt(p) for p in problems],
            reward_fn=lambda i, set_traces, z: task.reward(problems[i], set_traces, z),
            template=task.template, num_traces=config.traces, num_sets=config.sets,
            set_size=config.set_size, num_aggregations=config.aggregations,
            temperature=config.temperature, max_new_tokens=1, pad_token_id=tok.pad_id,
            generator=generator, engine=config.engine)
        out = step_fn(model, batch, config=step_config, optimizer=optimizer)
        sync = sampler.sync(model) if sampler is not None else None  # vLLM samples the new weights next
        rewards = [r for pr in batch.problems for per_set in pr.rewards for r in per_set]
        set_values = [sum(per_set) / len(per_set) for pr in batch.problems for per_set in pr.rewards]
        traces = [(problems[i], y.tolist()) for i, pr in enumerate(batch.problems) for y in pr.traces]
        row = {
            "iteration": it,
            "agg_reward": sum(rewards) / len(rewards),
            "set_value": sum(set_values) / len(set_values),
            "set_value_std": float(torch.tensor(set_values).std()),
            "trace_acc": sum(task.trace_correct(p, y) for p, y in traces) / len(traces),
            "loss": float(out.loss),
            "seconds": time.perf_counter() - start,
        }
        if sync is not None:
            row["sync_seconds"] = sync["seconds"]
        row.update({f"step/{k}": float(v) for k, v in out.metrics.items()
                    if isinstance(v, (int, float)) and k not in row})
        history.append(row)
        bar.set_postfix(reward=f"{row['agg_reward']:.2f}", traces=f"{row['trace_acc']:.2f}")
        if on_iteration is not None:
            on_iteration(row)
    return history
