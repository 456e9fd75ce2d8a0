"""Balanced split of a batch into micro-batches under a token budget."""

from __future__ import annotations

import heapq


def split_problems(sizes: list[int], budget: int) -> list[list[int]]:
    """Partition problem indices into micro-batches of total size <= budget, balanced.

    sizes [P]: unique tokens of each problem; a problem larger than the budget gets a
    micro-batch of its own (problems are never cut, so their shared prefixes are encoded once).
    The others go, longest first, to the currently lightest of k micro-batches (LPT), with k the
    smallest count, from ceil(total / budget) up, for which every micro-batch fits: loads then
    differ by at most about one problem. Each micro-batch lists its problems in increasing order;
    micro-batches are ordered by their first problem.
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    alone = [[p] for p, s in enumerate(sizes) if s > budget]
    rest = [p for p, s in enumerate(sizes) if s <= budget]
    bins: list[list[int]] = []
    if rest:
        total = sum(sizes[p] for p in rest)
        order = sorted(rest, key=lambda p: (-sizes[p], p))
        for k in range(max(1, -(-total // budget)), len(rest) + 1):
            heap = [(0, b) for b in range(k)]
            bins = [[] for _ in range(k)]
            fits = True
            for p in order:
                load, b = heapq.heappop(heap)
                load += sizes[p]
                fits &= load <= budget
                bins[b].append(p)
                heapq.heappush(heap, (load, b))
            if fits:
                break
    out = [sorted(b) for b in bins if b] + alone
    return sorted(out, key=lambda b: b[0])


def micro_batches(batch, budget: int, *, all_traces: bool = False, cut: bool = True) -> list[list]:
    """Work items of ``SpiralBatch.trained_sequences`` per micro-batch of at most ``budget`` unique
    tokens (upper bounds, see ``ProblemRollout.part_sizes``), balanced by ``split_problems``.
    all_traces: size the trace blocks with every trace, also those in no set (``batch_logprobs``).

    A problem within budget stays whole (all its prefixes shared, also across its aggregation
    prompts); a problem over budget is cut into its parts, the trace block (x + traces) and one
    block per set (a_j + its G_j responses), each keeping its own shared prefix. A part over budget
    gets a micro-batch of its own. Normalisers are global, so the cut changes no loss or gradient.
    cut=False keeps every problem whole (parallel-encoded aggregation: a set attends to its traces).
    """
    items, sizes = [], []
    for p, pr in enumerate(batch.problems):
        parts = pr.part_sizes(all_traces=all_traces)
        if sum(parts.values()) <= budget or not cut:
            items.append(p)
            sizes.append(sum(parts.values()))
        else:
            items.extend((p, part) for part in parts)
            sizes.extend(parts.values())
    return [[items[i] for i in b] for b in split_problems(sizes, budget)]
