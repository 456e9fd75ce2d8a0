"""Small verifiable arithmetic tasks: train and eval JSONL for SPIRAL training of a small real LM.

Each line is ``{"problem": "What is 47 + 8?", "answer": "55"}``. A task is the finite set of all its
problems; the eval split is a seeded random sample of them and the train split is the rest, so no
problem text is in both (checked before writing).

    python scripts/make_arithmetic_data.py --task add_2d1d            # -> examples/data/add_2d1d_{train,eval}.jsonl
    python scripts/make_arithmetic_data.py --task add_2d1d --eval 300 --seed 0 --out examples/data

``scripts/measure_base_model.py`` imports ``TASKS`` and ``split`` from here.
"""

from __future__ import annotations

import argparse
import json
import os
import random


def _pairs(a_range, b_range, op, keep=lambda a, b: True):
    sym, fn = {"+": ("+", lambda a, b: a + b), "-": ("-", lambda a, b: a - b), "*": ("\u00d7", lambda a, b: a * b)}[op]
    return [(f"What is {a} {sym} {b}?", str(fn(a, b))) for a in a_range for b in b_range if keep(a, b)]


# name -> (description, list of (problem, answer)); every list is all the problems of its task.
TASKS = {
    "add_1d": ("a + b, a and b in 0..9 (100 problems)", lambda: _pairs(range(10), range(10), "+")),
    "add_0_20": ("a + b, a and b in 0..20 (441 problems)", lambda: _pairs(range(21), range(21), "+")),
    "add_2d1d": ("a + b, a in 10..99, b in 0..9 (900 problems)", lambda: _pairs(range(10, 100), range(10), "+")),
    "add_2d": ("a + b, a and b in 10..99 (8100 problems)", lambda: _pairs(range(10, 100), range(10, 100), "+")),
    "sub_0_20": (
        "a - b, 0 <= b <= a <= 20 (231 problems)",
        lambda: _pairs(range(21), range(21), "-", keep=lambda a, b: b <= a),
    ),
    "sub_2d1d": ("a - b, a in 10..99, b in 0..9 (900 problems)", lambda: _pairs(range(10, 100), range(10), "-")),
    "mul_1d": ("a * b, a and b in 1..9 (81 problems)", lambda: _pairs(range(1, 10), range(1, 10), "*")),
    "mul_2_12": ("a * b, a and b in 2..12 (121 problems)", lambda: _pairs(range(2, 13), range(2, 13), "*")),
}


def problems(task: str) -> list[tuple[str, str]]:
    """All (problem, answer) pairs of ``task``, in a fixed order."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    return TASKS[task][1]()


def split(task: str, n_eval: int, seed: int = 0, n_train: int | None = None):
    """(train, eval) lists of (problem, answer): eval a seeded sample of ``n_eval`` problems, train the
    rest (at most ``n_train`` of them, shuffled with the same seed); disjoint by problem text."""
    items = problems(task)
    if n_eval >= len(items):
        raise ValueError(f"task {task!r} has {len(items)} problems, cannot hold out n_eval={n_eval}")
    rng = random.Random(seed)
    order = list(range(len(items)))
    rng.shuffle(order)
    eval_items = [items[i] for i in order[:n_eval]]
    train_items = [items[i] for i in order[n_eval:]][:n_train]
    assert not {p for p, _ in eval_items} & {p for p, _ in train_items}
    return train_items, eval_items


def write_jsonl(path: str, items) -> None:
    with open(path, "w") as f:
        for problem, answer in items:
            f.write(json.dumps({"problem": problem, "answer": answer}) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="add_2d1d", choices=sorted(TASKS))
    parser.add_argument("--eval", type=int, default=300, help="held-out problems (default 300)")
    parser.add_argument("--train", type=int, default=None, help="cap on train problems (default: all the rest)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "data")
    )
    args = parser.parse_args(argv)
    train, held_out = split(args.task, args.eval, args.seed, args.train)
    os.makedirs(args.out, exist_ok=True)
    for name, items in (("train", train), ("eval", held_out)):
        path = os.path.join(os.path.normpath(args.out), f"{args.task}_{name}.jsonl")
        write_jsonl(path, items)
        print(f"{path}: {len(items)} problems")


if __name__ == "__main__":
    main()
