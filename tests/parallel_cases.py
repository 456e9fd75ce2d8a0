"""Random SPIRAL problems in parallel-aggregation form, as packing input (sequences + contexts) and as
ProblemRollouts, for tests/test_parallel_*.py: traces sharing prefixes or duplicated, overlapping sets
listed in random order, heads shared between sets, aggregation responses sharing prefixes."""

from __future__ import annotations

import random


def random_problem(
    rng: random.Random, *, vocab: int, max_len: int = 8, num_traces: int = 4, num_sets: int = 3, max_g: int = 3
) -> dict:
    """One problem: prompt x, traces, sets (tuples, random member order), heads, aggregations (per set)."""
    toks = lambda lo, hi: [rng.randrange(vocab) for _ in range(rng.randint(lo, hi))]  # noqa: E731
    x = toks(1, 5)
    traces = []
    for _ in range(num_traces):
        if traces and rng.random() < 0.3:  # shares a prefix with (or duplicates) an earlier trace
            base = rng.choice(traces)
            traces.append(base[: rng.randint(1, len(base))] + toks(0, 3))
        else:
            traces.append(toks(1, max_len))
    sets = [tuple(rng.sample(range(num_traces), rng.randint(1, min(3, num_traces)))) for _ in range(num_sets)]
    shared_head = toks(1, 3)
    heads = [shared_head if rng.random() < 0.5 else toks(1, 3) for _ in sets]
    aggregations = []
    for _ in sets:
        zs = [toks(1, 5)]
        for _ in range(rng.randint(0, max_g - 1)):
            zs.append(zs[0][: rng.randint(1, len(zs[0]))] + toks(0, 2) if rng.random() < 0.5 else toks(1, 5))
        aggregations.append(zs)
    return dict(prompt=x, traces=traces, sets=sets, agg_prompts=heads, aggregations=aggregations)


def as_sequences(problems: list[dict]) -> tuple[list[list[int]], list, list]:
    """(sequences, contexts, share_limits) of some problems as `pack_sequences` takes them: every
    trace that sits in a set as x + y_i (no context, shareable up to |x|), then every h_j + z_jg with
    its set's trace sequences as context (in the set's member order)."""
    seqs, contexts, limits, aggs = [], [], [], []
    for pr in problems:
        used = sorted({i for s in pr["sets"] for i in s})
        row = {}
        for i in used:
            row[i] = len(seqs)
            seqs.append(pr["prompt"] + pr["traces"][i])
            contexts.append(None)
            limits.append(len(pr["prompt"]))
        for s, h, zs in zip(pr["sets"], pr["agg_prompts"], pr["aggregations"]):
            aggs += [(h + z, [row[i] for i in s]) for z in zs]
    for seq, ctx in aggs:
        seqs.append(seq)
        contexts.append(ctx)
        limits.append(None)
    return seqs, contexts, limits


def random_dag(seed: int, *, problems: int = 2, vocab: int = 4, **kw) -> tuple[list[list[int]], list, list]:
    rng = random.Random(seed)
    return as_sequences([random_problem(rng, vocab=vocab, **kw) for _ in range(problems)])
