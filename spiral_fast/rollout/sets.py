"""Sets of traces and the text-mode aggregation template."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AggregationTemplate:
    """a_j = head + prompt + separator + trace_1 + separator + ... + trace_K + tail (token ids).

    The problem x is repeated so that the aggregator can check the traces against it; ``head``,
    ``separator`` and ``tail`` are fixed token-id sequences (e.g. the encoded instruction text).
    """

    head: tuple[int, ...] = ()
    separator: tuple[int, ...] = ()
    tail: tuple[int, ...] = ()

    def __call__(self, prompt: Sequence[int], traces: Sequence[Sequence[int]]) -> list[int]:
        out = list(self.head) + list(prompt)
        for trace in traces:
            out += list(self.separator) + list(trace)
        return out + list(self.tail)


def draw_sets(
    num_traces: int, num_sets: int, set_size: int, *, generator: torch.Generator | None = None, distinct: bool = True
) -> list[tuple[int, ...]]:
    """M sets of K distinct trace indices in [0, N), as the paper draws them.

    distinct=True (the paper's Algorithm 1): the M sets are distinct as unordered sets, drawn
    uniformly without replacement from all C(N, K) subsets; M > C(N, K) is a ``ValueError``.
    distinct=False: each set is drawn on its own (uniform over subsets), so sets may repeat.
    Either way a trace may sit in several sets or in none, and each set lists its traces in
    uniformly random order: the order in which the aggregator sees them.

    Cost O(M K) draws when M <= C(N, K) / 2 (rejection of repeated subsets: each accepted set
    costs at most 2 draws on average), else one permutation of the C(N, K) <= 2 M subset ranks.
    generator: a torch.Generator for every random choice (None: torch's global RNG).
    """
    check_set_sizes(num_traces, num_sets, set_size, distinct=distinct)
    draw = lambda: tuple(torch.randperm(num_traces, generator=generator)[:set_size].tolist())  # noqa: E731
    if not distinct:
        return [draw() for _ in range(num_sets)]
    total = math.comb(num_traces, set_size)
    if 2 * num_sets > total:
        # most subsets are taken: a random permutation of all ranks wastes no draws
        ranks = torch.randperm(total, generator=generator)[:num_sets].tolist()
        sets = []
        for r in ranks:
            members = _unrank(r, num_traces, set_size)
            sets.append(tuple(members[k] for k in torch.randperm(set_size, generator=generator).tolist()))
        return sets
    # a uniform subset redrawn while it repeats an earlier one: the accepted sets are a uniform
    # draw without replacement, and at most half the subsets are taken, so a draw is kept with
    # probability >= 1/2
    sets, seen = [], set()
    while len(sets) < num_sets:
        s = draw()
        key = tuple(sorted(s))
        if key not in seen:
            seen.add(key)
            sets.append(s)
    return sets


def check_set_sizes(num_traces: int, num_sets: int, set_size: int, *, distinct: bool = True) -> None:
    """``ValueError`` naming the argument unless ``draw_sets`` can draw these sets."""
    for name, value in (("num_traces", num_traces), ("num_sets", num_sets), ("set_size", set_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if set_size > num_traces:
        raise ValueError(f"set_size must be <= num_traces={num_traces}, got {set_size}")
    if not isinstance(distinct, bool):
        raise ValueError(f"distinct must be a bool, got {distinct!r}")
    total = math.comb(num_traces, set_size)
    if distinct and num_sets > total:
        raise ValueError(
            f"num_sets must be <= C(num_traces={num_traces}, set_size={set_size}) = {total} "
            f"distinct sets, got {num_sets}"
        )


def _unrank(rank: int, n: int, k: int) -> list[int]:
    """The rank-th K-subset of range(n) in lexicographic order (sorted members), rank in [0, C(n, k))."""
    out = []
    for x in range(n):
        if k == 0:
            break
        first = math.comb(n - 1 - x, k - 1)  # subsets whose smallest remaining member is x
        if rank < first:
            out.append(x)
            k -= 1
        else:
            rank -= first
    return out
