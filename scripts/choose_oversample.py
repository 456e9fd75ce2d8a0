"""How rollout.oversample's default was chosen: from a measured run's metrics (problems_sampled,
problems_dropped, rounds, seconds_rollout per step), estimate the informative fraction q and the cost
of a problem and of a round (least squares: seconds_rollout ~ c_p * problems_sampled + c_r * rounds),
then simulate dynamic sampling (``recipe.dynamic_sampling`` semantics: a round samples
ceil(shortfall * (1 + oversample)) problems, each informative with probability q, for at most
1 + max_extra_rounds rounds) and print the expected rollout seconds per trained problem.

    python scripts/choose_oversample.py [benchmarks/results/smollm2/spiral_metrics.jsonl]
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np


def fit(rows: list[dict]) -> tuple[float, float, float]:
    """(q, seconds per sampled problem, seconds per round) of a run's metrics rows."""
    q = sum(r["problems_sampled"] - r["problems_dropped"] for r in rows) / sum(r["problems_sampled"] for r in rows)
    x = np.array([[r["problems_sampled"], r["rounds"]] for r in rows])
    cp, cr = np.linalg.lstsq(x, np.array([r["seconds_rollout"] for r in rows]), rcond=None)[0]
    return q, float(cp), float(cr)


def simulate(
    problems: int,
    oversample: float,
    q: float,
    cp: float,
    cr: float,
    *,
    max_extra_rounds: int = 4,
    trials: int = 2000,
    seed: int = 0,
) -> dict:
    """Expected seconds per trained problem, rounds, sampled and kept problems of one step."""
    rng = np.random.default_rng(seed)
    cost = kept = rounds = sampled = 0.0
    for _ in range(trials):
        have = 0
        for extra in range(max_extra_rounds + 1):
            k = math.ceil((problems - have) * (1 + oversample) - 1e-9)
            sampled, rounds, cost = sampled + k, rounds + 1, cost + cp * k + cr
            have = min(problems, have + int(rng.binomial(k, q)))
            if have >= problems:
                break
        kept += have
    return {
        "s_per_trained_problem": cost / kept,
        "rounds": rounds / trials,
        "sampled": sampled / trials,
        "kept": kept / trials,
    }


def main(path: str) -> None:
    with open(path) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    q, cp, cr = fit(rows)
    print(
        f"{path}: {len(rows)} steps, informative fraction q = {q:.3f}, {cp:.2f} s per sampled problem, "
        f"{cr:.2f} s per round"
    )
    for problems in (2, 8, 256):
        for oversample in (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0):
            r = simulate(problems, oversample, q, cp, cr, trials=2000 if problems < 100 else 300)
            print(
                f"P={problems:3d} oversample={oversample:.1f}: {r['s_per_trained_problem']:6.2f} s per trained "
                f"problem, {r['rounds']:.2f} rounds, {r['sampled']:6.1f} sampled, {r['kept']:6.2f} kept"
            )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/smollm2/spiral_metrics.jsonl")
