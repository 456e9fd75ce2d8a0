"""The demo's plot: aggregation reward and set value over iterations (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path


def plot_history(history: list[dict], path: str | Path, *, title: str = "SPIRAL demo") -> Path:
    """Write a PNG of agg_reward, set_value (+/- its spread across sets) and trace_acc per
    iteration (a GRPO run: trace_acc) to `path` (parent folders created); returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a training machine
    import matplotlib.pyplot as plt

    if not history:
        raise ValueError("history must hold at least one iteration, got []")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    it = [row["iteration"] for row in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if "set_value" in history[0]:  # a SPIRAL run
        value = [row["set_value"] for row in history]
        spread = [row["set_value_std"] for row in history]
        ax.fill_between(
            it,
            [v - s for v, s in zip(value, spread)],
            [v + s for v, s in zip(value, spread)],
            color="tab:orange",
            alpha=0.2,
            label="set value ± std across sets",
        )
        ax.plot(it, value, color="tab:orange", lw=2.5, label="set value R_j (mean over sets)")
        ax.plot(
            it,
            [row["agg_reward"] for row in history],
            color="tab:blue",
            lw=1.2,
            ls="--",
            label="aggregation reward r_jg (mean)",
        )
        ax.plot(
            it,
            [row["trace_acc"] for row in history],
            color="tab:green",
            lw=1,
            alpha=0.8,
            label="trace accuracy (not trained on directly)",
        )
    else:  # single-trace GRPO: the traces are what is rewarded
        ax.plot(
            it,
            [row["trace_acc"] for row in history],
            color="tab:green",
            lw=2.5,
            label="trace accuracy = trace reward (mean)",
        )
    ax.set_xlabel("iteration")
    ax.set_ylabel("reward")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
