"""The paper's test-time scaling evaluation of a model on a task: pass@k and majority vote over k
traces (k = 1..samples), and recursive self-aggregation (RSA) over its steps, all through
:mod:`spiral_fast.evaluate` (``spiral-fast eval`` on the toy task, the real-model comparison).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from spiral_fast._utils import check_fields, torch_threads
from spiral_fast.evaluate import majority_vote, pass_at_k, recursive_aggregation
from spiral_fast.rollout.sampler import as_sampler
from spiral_fast.tasks.toy import ToyTask


@dataclass(frozen=True)
class EvalConfig:
    """Settings of `spiral-fast eval` (the CLI exposes each field as --field-name).

    `problems` problems (balanced answers, drawn with `seed`); `samples` traces each for pass@k and
    majority vote at k = 1..samples; RSA with a population of `population`, sets of `set_size`
    (None: the set size the model was trained with) and `steps` steps; sampling at `temperature`.
    `votes`: random orderings of the samples that majority vote@k averages over (each takes its
    first k samples; ties go to the first in that order, i.e. at random).
    `threads`: torch intra-op threads during the evaluation (restored after; one is fastest for
    the tiny model on a shared CPU, as in the demo).
    """

    problems: int = 64
    samples: int = 16
    population: int = 8
    set_size: int | None = None
    steps: int = 10
    seed: int = 0
    temperature: float = 1.0
    votes: int = 32
    threads: int = 1
    max_new_tokens: int = 1
    agg_max_new_tokens: int | None = None

    def __post_init__(self):
        check_fields(self)
        if self.set_size is not None and self.set_size > self.population:
            raise ValueError(f"set_size must be <= population ({self.population}), got {self.set_size}")


@dataclass(frozen=True)
class EvalResult:
    """pass_at_k[k-1] and majority[k-1] for k = 1..samples (means over problems); rsa: steps + 1
    RSA accuracies (step 0 = single traces)."""

    pass_at_k: list
    majority: list
    rsa: list


def evaluate_demo(model, demo_config, config: EvalConfig = EvalConfig()) -> EvalResult:
    """pass@k, majority vote@k and RSA of `model` on the toy task of `demo_config` (base, digits).

    Deterministic for config.seed: the problems, the set draws and the sampling are all seeded
    (torch's global RNG is forked, so the caller's is left alone). RSA renders text-mode
    aggregation prompts (the task's template), whatever ``demo_config.aggregation`` trained.
    """
    task = ToyTask(base=demo_config.base, num_digits=demo_config.digits)
    set_size = config.set_size or demo_config.set_size
    if set_size > config.population:
        raise ValueError(f"set_size must be <= population ({config.population}), got {set_size}")
    generator = torch.Generator().manual_seed(config.seed)
    problems = task.sample_problems(config.problems, generator)
    with torch_threads(config.threads):
        return evaluate_task(model, task, problems, config, set_size=set_size, generator=generator)


def evaluate_task(
    sampler,
    task,
    problems: list,
    config: EvalConfig,
    *,
    set_size: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> EvalResult:
    """pass@k and majority vote@k over ``config.samples`` traces per problem (``task.score``,
    ``task.answer_of``), and RSA (population ``config.population``, sets of ``set_size`` or
    ``config.set_size``, ``config.steps`` steps) of ``sampler`` (a Sampler or an HF model) on
    ``problems`` of ``task``. With ``samples == population`` the pass@k / majority samples are RSA's
    step-0 population (one sampling instead of two). Seeded by ``config.seed`` (torch's global RNG
    is forked). ``progress``: a bar over the RSA populations with the latest accuracy."""
    sampler = as_sampler(sampler, pad_token_id=task.pad_token_id)
    set_size = set_size or config.set_size
    if set_size is None or set_size > config.population:
        raise ValueError(f"set_size must be an int <= population ({config.population}), got {set_size}")
    generator = generator if generator is not None else torch.Generator().manual_seed(config.seed)
    prompts = [task.prompt(p) for p in problems]
    n = config.samples
    bar = tqdm(total=config.steps + 1, desc="RSA populations", disable=not progress)

    def on_step(t: int, accuracy: float) -> None:
        bar.update(1)
        bar.set_postfix(step=t, accuracy=f"{accuracy:.3f}")

    with torch.random.fork_rng(devices=[]), bar:
        torch.manual_seed(config.seed)
        traces = None
        if n != config.population:  # else the samples are RSA's step-0 population (sampled once)
            traces, _ = sampler.generate(
                prompts,
                n,
                max_new_tokens=config.max_new_tokens,
                temperature=config.temperature,
                eos_token_id=task.eos_token_id,
                logprobs=False,
            )
        rsa = recursive_aggregation(
            sampler,
            prompts,
            template=task.template,
            score_fn=lambda p, r: float(task.score(problems[p], r)),
            population=config.population,
            set_size=set_size,
            steps=config.steps,
            temperature=config.temperature,
            max_new_tokens=config.max_new_tokens,
            agg_max_new_tokens=config.agg_max_new_tokens,
            eos_token_id=task.eos_token_id,
            generator=generator,
            on_step=on_step,
        )
    rows = rsa.populations[0] if traces is None else [traces[p * n : (p + 1) * n] for p in range(len(problems))]
    right = [[task.score(x, y) == 1.0 for y in row] for x, row in zip(problems, rows)]
    answers = [[task.answer_of(y) for y in row] for row in rows]
    pass_k = [float(pass_at_k(n, [sum(r) for r in right], k).mean()) for k in range(1, n + 1)]
    orders = [torch.randperm(n, generator=generator).tolist() for _ in range(config.votes)]
    majority = []
    for k in range(1, n + 1):
        hits = 0
        for ans, ok in zip(answers, right):
            for order in orders:
                winner = majority_vote([ans[i] for i in order[:k]])
                # the vote is right when a right response gave the winning answer
                hits += winner is not None and any(ans[i] == winner and ok[i] for i in order[:k])
        majority.append(hits / (len(problems) * len(orders)))
    return EvalResult(pass_at_k=pass_k, majority=majority, rsa=list(rsa.accuracy))


def format_table(results: dict) -> str:
    """One text table: pass@k and maj@k per k, then RSA per step, one column per named result."""
    names = list(results)
    width = max([12] + [len(name) + 2 for name in names])
    lines = [f"{'':14}" + "".join(f"{name:>{width}}" for name in names)]
    some = next(iter(results.values()))
    rows = [
        (label.format(k), lambda r, key=key, k=k: getattr(r, key)[k - 1])
        for label, key in (("pass@{}", "pass_at_k"), ("maj@{}", "majority"))
        for k in range(1, len(getattr(some, key)) + 1)
    ]
    rows += [(f"RSA step {t}", lambda r, t=t: r.rsa[t]) for t in range(len(some.rsa))]
    for label, value in rows:
        lines.append(f"{label:14}" + "".join(f"{value(results[n]):{width}.3f}" for n in names))
    return "\n".join(lines)


def plot_eval(results: dict, path, *, title: str = "test-time scaling on the toy task") -> Path:
    """One PNG, three panels (pass@k, majority vote@k, RSA accuracy per step), one line per named
    result; returns the path (parent folders created)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a training machine
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("results must hold at least one evaluation, got {}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), dpi=120)
    panels = (
        ("pass@k", "pass_at_k", "k (samples)"),
        ("majority vote@k", "majority", "k (samples)"),
        ("recursive self-aggregation", "rsa", "RSA step"),
    )
    for ax, (label, key, xlabel) in zip(axes, panels):
        for name, result in results.items():
            ys = getattr(result, key)
            xs = range(len(ys)) if key == "rsa" else range(1, len(ys) + 1)
            ax.plot(list(xs), ys, marker="o", ms=3, label=name)
        ax.set_title(label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
