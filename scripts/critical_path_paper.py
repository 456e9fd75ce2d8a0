"""Critical path in decode steps, two-phase vs pipelined, at the paper's shape (N=8, K=4, M=4, G=4,
traces and aggregations of up to 4096 tokens) under two plain length models:

- "lognormal": a problem has a difficulty d ~ LogNormal(0, 0.4); each of its responses has length
  min(4096, max(16, round(median * d * LogNormal(0, 0.6))))
  (--median, default 1500): right-skewed, a few per cent hit the cap,
  hard problems write longer traces and longer aggregations;
- "uniform": every length uniform on [256, 4096], independent of the problem.

    python scripts/critical_path_paper.py --problems 8 32 128 --slots 0 256 --seeds 5

Prints one line per (model, P, slots): the mean over seeds of the two-phase and the pipelined
critical path and their ratio. slots 0 = unlimited concurrency.
"""

import argparse
import json
import random

from spiral_fast.rollout.pipeline import critical_path

CAP = 4096


def lengths(
    model: str, difficulty: list[float], per_problem: int, rng: random.Random, median: int = 1500
) -> list[list[int]]:
    out = []
    for d in difficulty:
        if model == "lognormal":
            out.append([min(CAP, max(16, round(median * d * rng.lognormvariate(0, 0.6)))) for _ in range(per_problem)])
        else:
            out.append([rng.randint(256, CAP) for _ in range(per_problem)])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--slots", type=int, nargs="+", default=[0, 256])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--median", type=int, default=1500, help="the lognormal model's median length")
    ap.add_argument("--N", type=int, default=8)
    ap.add_argument("--M", type=int, default=4)
    ap.add_argument("--G", type=int, default=4)
    args = ap.parse_args()
    for model in ("lognormal", "uniform"):
        for P in args.problems:
            for slots in args.slots:
                two = pipe = 0
                for seed in range(args.seeds):
                    rng = random.Random(seed)
                    # the same problem difficulty for a problem's traces and its aggregations
                    difficulty = [rng.lognormvariate(0, 0.4) for _ in range(P)]
                    tr = lengths(model, difficulty, args.N, rng, args.median)
                    ag = lengths(model, difficulty, args.M * args.G, rng, args.median)
                    kw = {} if slots == 0 else {"max_running": slots}
                    two += critical_path(tr, ag, pipelined=False, **kw)
                    pipe += critical_path(tr, ag, pipelined=True, **kw)
                print(
                    json.dumps(
                        {
                            "model": model if model == "uniform" else f"lognormal median {args.median}",
                            "problems": P,
                            "slots": slots or "unlimited",
                            "two_phase": round(two / args.seeds),
                            "pipelined": round(pipe / args.seeds),
                            "ratio": round(pipe / two, 3),
                        }
                    )
                )


if __name__ == "__main__":
    main()
