"""Plots and a table of the real-model comparison (issue 18): SPIRAL vs GRPO on SmolLM2-135M-Instruct.

    python scripts/plot_real_model.py --runs runs/smollm2_spiral runs/smollm2_grpo \
        --evals base=runs/eval_base.json spiral=runs/eval_spiral.json grpo=runs/eval_grpo.json --out docs/smollm2

Writes OUT_training.png (per step: the reward each run trains on, smoothed, and the share of right
traces) and OUT_eval.png (pass@k, majority vote@k, RSA accuracy per step; ``spiral-fast eval --json``
results), and prints a Markdown table of both.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from spiral_fast.recipe.scaling import EvalResult, format_table, plot_eval  # noqa: E402


def read_rows(run: str) -> list[dict]:
    with open(Path(run) / "metrics.jsonl") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def smooth(values: list[float], window: int = 10) -> list[float]:
    out = []
    for i in range(len(values)):
        part = values[max(0, i - window + 1) : i + 1]
        out.append(sum(part) / len(part))
    return out


def plot_training(runs: dict[str, list[dict]], path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), dpi=120)
    for name, rows in runs.items():
        steps = [r["step"] for r in rows]
        # the first round's reward of each step: aggregation reward (SPIRAL) or trace reward (GRPO)
        (line,) = axes[0].plot(steps, smooth([r["reward"] for r in rows]), lw=2, label=f"{name} (10-step mean)")
        axes[0].plot(steps, [r["reward"] for r in rows], lw=0.6, alpha=0.35, color=line.get_color())
        axes[1].plot(steps, smooth([r["trace_acc"] for r in rows]), lw=2, color=line.get_color(), label=name)
    axes[0].set_title("reward trained on (SPIRAL: aggregation r_jg; GRPO: trace)")
    axes[1].set_title("search traces right on their own (10-step mean)")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("SmolLM2-135M-Instruct, LoRA r=16, a + b (a, b in 0..20), 2-core CPU")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def training_table(runs: dict[str, list[dict]]) -> str:
    lines = [
        "| run | steps | reward, first 10 steps | reward, last 10 steps | trace acc, first 10 | trace acc, last 10 "
        "| steps trained | wall time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rows in runs.items():

        def mean(key, part):
            return sum(r[key] for r in part) / len(part)

        wall = sum(r["seconds_rollout"] + r["seconds_step"] + r["seconds_sync"] for r in rows)
        trained = sum(r["problems"] > 0 for r in rows)
        lines.append(
            f"| {name} | {len(rows)} | {mean('reward', rows[:10]):.3f} | {mean('reward', rows[-10:]):.3f} | "
            f"{mean('trace_acc', rows[:10]):.3f} | {mean('trace_acc', rows[-10:]):.3f} | {trained} | "
            f"{wall / 60:.1f} min |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=[], help="output folders of spiral-fast train")
    parser.add_argument("--evals", nargs="+", default=[], metavar="NAME=JSON", help="spiral-fast eval --json files")
    parser.add_argument("--out", default="docs/smollm2", help="prefix of the PNG files")
    args = parser.parse_args()
    if args.runs:
        runs = {Path(r).name.removeprefix("smollm2_"): read_rows(r) for r in args.runs}
        print(f"training curves: {plot_training(runs, Path(args.out + '_training.png'))}")
        print(training_table(runs))
    if args.evals:
        results = {}
        for item in args.evals:
            name, _, path = item.partition("=")
            (result,) = json.loads(Path(path).read_text()).values()
            results[name] = EvalResult(**result)
        print(
            f"evaluation: {plot_eval(results, args.out + '_eval.png', title='SmolLM2-135M-Instruct on 200 held-out a + b problems')}"
        )
        print(format_table(results))


if __name__ == "__main__":
    main()
