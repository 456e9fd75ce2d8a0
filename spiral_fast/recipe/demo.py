"""``spiral-fast demo``: the one training loop (``recipe.loop``) on the toy task with a tiny random model.

Two methods (``DemoConfig.method``): "spiral" trains both roles on SPIRAL rollouts; "grpo" trains
single traces, each scored on its own answer, with GRPO's group advantage, on the same number of
sampled response tokens per problem. ``run_compare`` trains both from the
same seed and evaluates them with pass@k, majority vote and recursive self-aggregation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from spiral_fast._fields import check_settings, docs, setting
from spiral_fast._utils import torch_threads
from spiral_fast.policy_step.config import SpiralConfig
from spiral_fast.recipe.loop import METHODS, Trainer, train_loop
from spiral_fast.recipe.loop import STEP_IMPLS as STEP_FUNCTIONS
from spiral_fast.recipe.scaling import EvalConfig, evaluate_demo
from spiral_fast.recipe.tiny_model import tiny_qwen2
from spiral_fast.rollout.config import RolloutConfig
from spiral_fast.rollout.sampler import ENGINES, HFSampler
from spiral_fast.rollout.vllm import VLLMSampler  # imports vLLM only when a sampler is built
from spiral_fast.tasks.toy import ToyTask

# fields with a fixed set of values (the CLI turns each into --name {choices})
STEP_IMPLS = tuple(STEP_FUNCTIONS)
CONFIG_FILE = "spiral_demo.json"  # next to the weights: the DemoConfig the model was trained with
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

    iterations: int = setting(150, "training iterations (rollout + one optimizer step each)")
    seed: int = setting(0, "seed of the model init, problems, sets and sampling", minimum=-(2**63))
    problems: int = setting(8, "problems per iteration P (RolloutConfig.problems_per_step)")
    traces: int = setting(8, "traces sampled per problem N (RolloutConfig.num_traces)")
    sets: int = setting(4, "sets drawn per problem M (RolloutConfig.num_sets)")
    set_size: int = setting(3, "traces per set K; at most --traces (RolloutConfig.set_size)")
    aggregations: int = setting(4, "aggregation responses per set G (RolloutConfig.num_aggregations)")
    base: int = setting(6, "toy task: digits are 0..base-1, answer = (sum of digits + 1) mod base")
    digits: int = setting(1, "toy task: digits per problem")
    lr: float = setting(2e-3, "AdamW learning rate")
    temperature: float = setting(1.0, "sampling and training temperature (RolloutConfig.temperature)")
    hidden_size: int = setting(64, "hidden size of the tiny Qwen2 model")
    layers: int = setting(2, "decoder layers of the tiny Qwen2 model")
    step_impl: str = setting(
        "step", "spiral_fast.step ('step') or the naive oracle spiral_fast.step_reference", choices=STEP_IMPLS
    )
    threads: int = setting(1, "torch intra-op threads (1 is fastest for the tiny model on a shared CPU)")
    method: str = setting(
        "spiral",
        "spiral, or grpo: single traces scored on their own answers, N + M*G per "
        "problem (RolloutConfig.method with grpo_match 'count')",
        choices=METHODS,
    )
    dynamic_sampling: bool = setting(
        False, "drop problems whose advantages are all zero and sample more (paper; RolloutConfig.dynamic_sampling)"
    )
    max_extra_rounds: int = setting(
        4, "dynamic sampling: extra rollouts per iteration at most (RolloutConfig.max_extra_rounds)", minimum=0
    )
    engine: str = setting(
        "hf",
        "sampler: transformers generate ('hf') or an in-process vLLM engine synced after "
        "every step ('vllm'; needs vLLM, see README; the model then has attention heads of size "
        "32)",
        choices=ENGINES,
    )
    aggregation: str = setting(
        "text",
        "'text' (traces rendered into the aggregation prompt) or 'parallel' (read as keys and values; HF engine)",
        choices=AGGREGATIONS,
    )

    def __post_init__(self):
        check_settings(self)
        if self.set_size > self.traces:
            raise ValueError(f"set_size must be <= traces ({self.traces}), got {self.set_size}")
        if self.aggregation == "parallel" and self.engine != "hf":
            raise ValueError(
                f"aggregation='parallel' needs engine='hf' (vLLM cannot merge KV caches), got engine={self.engine!r}"
            )
        try:
            self.rollout  # noqa: B018 - the RolloutConfig it derives validates the rest (e.g. M <= C(N, K))
        except ValueError as err:
            text = str(err)
            for field, name in _DEMO_NAMES.items():
                text = text.replace(field, name)
            raise ValueError(text) from None

    @property
    def rollout(self) -> RolloutConfig:
        """The loop's ``RolloutConfig`` of this demo: one-token responses; GRPO matched by response
        count (its documented match: N + M*G one-token traces per problem); the members of a set in
        their drawn order; no oversampling."""
        return RolloutConfig(
            engine=self.engine,
            method=self.method,
            grpo_match="count",
            problems_per_step=self.problems,
            num_traces=self.traces,
            num_sets=self.sets,
            set_size=self.set_size,
            num_aggregations=self.aggregations,
            max_new_tokens=1,
            agg_max_new_tokens=1,
            temperature=self.temperature,
            candidate_order="random",
            dynamic_sampling=self.dynamic_sampling,
            oversample=0.0,
            max_extra_rounds=self.max_extra_rounds,
        )

    @classmethod
    def help(cls) -> dict[str, str]:
        """{field: documentation} in declaration order (the CLI's --help)."""
        return docs(cls)


# RolloutConfig's field -> the demo's name of the same quantity (its error messages name the demo's)
_DEMO_NAMES = {
    "problems_per_step": "problems",
    "num_traces": "traces",
    "num_sets": "sets",
    "num_aggregations": "aggregations",
}


@dataclass(frozen=True)
class DemoRun:
    """A finished demo run: the trained model, its toy task and one metrics dict per iteration."""

    model: object
    task: object
    history: list


def run_demo(
    config: DemoConfig, *, on_iteration: Callable[[dict], None] | None = None, progress: bool = True
) -> list[dict]:
    """Train a tiny random Qwen2 on the toy task; returns one metrics dict per iteration
    (``train_demo(...).history``)."""
    return train_demo(config, on_iteration=on_iteration, progress=progress).history


def train_demo(
    config: DemoConfig, *, on_iteration: Callable[[dict], None] | None = None, progress: bool = True
) -> DemoRun:
    """Train a tiny random Qwen2 on the toy task with ``config.method``; returns a :class:`DemoRun`.

    Deterministic for a given config.seed (model init, problems, sets and sampling are all seeded).
    Metrics per iteration, over the iteration's first rollout (before any dynamic sampling, so
    they estimate the current policy): reward (mean reward the method trains on); trace_acc
    (share of right traces); with "spiral" also agg_reward (mean r_jg), set_value (mean over sets
    of R_j = mean_g r_jg: equal to agg_reward since every set has G responses) and set_value_std
    (spread of R_j across sets: how much the traces in a set matter). Then dropped (problems
    dropped by dynamic sampling, 0 without it), trained_problems, loss and the step's metrics.
    """
    with torch_threads(config.threads):
        return _train(config, on_iteration, progress)


def demo_settings(config: DemoConfig) -> RolloutConfig:
    """The loop's rollout settings of a demo config (``config.rollout``)."""
    return config.rollout


def demo_agg_head(config: DemoConfig):
    """The parallel-mode aggregation head [sep, pick] (None in text mode)."""
    tok = ToyTask(base=config.base).tokenizer
    return (tok.sep_id, tok.pick_id) if config.aggregation == "parallel" else None


def demo_row(row: dict, *, synced: bool = False) -> dict:
    """The demo's metrics row from the loop's: iteration (from 0), the rollout metrics, dropped,
    trained_problems, loss, step/<metric> for the step's metrics, sync_seconds (``synced``: a vLLM
    sampler), seconds (whole iteration)."""
    rollout_keys = ("reward", "agg_reward", "set_value", "set_value_std", "trace_acc")
    out = {
        "iteration": row["step"] - 1,
        **{k: row[k] for k in rollout_keys if k in row},
        "dropped": int(row["problems_dropped"]),
        "trained_problems": int(row["problems"]),
        "loss": row["loss"],
    }
    skip = set(rollout_keys) | {
        "step",
        "problems",
        "problems_dropped",
        "problems_sampled",
        "rounds",
        "lr",
        "loss",
        "trace_tokens_sampled",
        "agg_tokens_sampled",
        "seconds_rollout",
        "seconds_step",
        "seconds_sync",
    }
    out.update({f"step/{k}": float(v) for k, v in row.items() if k not in skip and isinstance(v, (int, float))})
    if synced and row["problems"] > 0:  # a vLLM engine took the new weights
        out["sync_seconds"] = row["seconds_sync"]
    out["seconds"] = row["seconds_rollout"] + row["seconds_step"] + row["seconds_sync"]
    return out


def _train(config: DemoConfig, on_iteration, progress: bool) -> DemoRun:
    task = ToyTask(base=config.base, num_digits=config.digits)
    torch.manual_seed(config.seed)  # generate() samples from the global RNG
    heads = {}
    if config.engine == "vllm":  # vLLM's CPU attention has no head size below 32: heads of 32
        h = max(1, config.hidden_size // 32)
        heads = dict(num_heads=h, num_kv_heads=h // 2 if h % 2 == 0 else h)
    model = tiny_qwen2(
        len(task.tokenizer), seed=config.seed, hidden_size=config.hidden_size, num_layers=config.layers, **heads
    )
    model.train()
    if config.engine == "vllm":
        sampler = VLLMSampler(model, dtype="float32", seed=config.seed, kv_cache_memory_bytes=64 << 20)
    else:
        sampler = HFSampler(model, pad_token_id=task.pad_token_id)
    trainer = Trainer(
        model=model,
        sampler=sampler,
        task=task,
        settings=demo_settings(config),
        config=SpiralConfig(temperature=config.temperature, aggregation=config.aggregation),
        optimizer=torch.optim.AdamW(model.parameters(), lr=config.lr),
        step_fn=STEP_FUNCTIONS[config.step_impl],
        aggregation=config.aggregation,
        agg_head=demo_agg_head(config),
    )
    trainer.generator.manual_seed(config.seed)
    history = []

    def on_step(row: dict) -> None:
        history.append(demo_row(row, synced=config.engine == "vllm"))
        if on_iteration is not None:
            on_iteration(history[-1])

    try:
        train_loop(
            trainer,
            task.train_problems(config.seed),
            steps=config.iterations,
            progress=progress,
            desc=f"{config.method} demo",
            on_step=on_step,
        )
    finally:
        sampler.close()
    return DemoRun(model=model, task=task, history=history)


def save_demo(model, config, path) -> Path:
    """Write the model (``save_pretrained``) and its DemoConfig (JSON) into the folder `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    (path / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=2) + "\n")
    return path


def load_demo(path):
    """(model, DemoConfig) from a folder written by :func:`save_demo` (``--save DIR``)."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise ValueError(
            f"model must be a folder written by `spiral-fast demo --save`, but {path / CONFIG_FILE} does not exist"
        )
    config = DemoConfig(**json.loads((path / CONFIG_FILE).read_text()))
    return AutoModelForCausalLM.from_pretrained(path), config


def run_compare(
    config: DemoConfig,
    eval_config=None,
    *,
    baseline: str = "grpo",
    on_iteration: Callable[[str, dict], None] | None = None,
    progress: bool = True,
):
    """Train the same tiny model from the same seed with SPIRAL and with `baseline` (same loop,
    ``replace(config, method=...)``), then evaluate both with
    :func:`spiral_fast.recipe.scaling.evaluate_demo`. Returns {method: (DemoRun, EvalResult)}."""
    if baseline not in METHODS or baseline == "spiral":
        raise ValueError(f"baseline must be one of {[m for m in METHODS if m != 'spiral']}, got {baseline!r}")
    eval_config = EvalConfig() if eval_config is None else eval_config
    out = {}
    for method in ("spiral", baseline):
        run = train_demo(
            replace(config, method=method),
            progress=progress,
            on_iteration=None if on_iteration is None else (lambda row, m=method: on_iteration(m, row)),
        )
        out[method] = (run, evaluate_demo(run.model, config, eval_config))
    return out
