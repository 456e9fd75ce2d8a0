"""The order of a set's members in its aggregation prompt (``RolloutConfig.candidate_order``).

The paper's sets are unordered and trace indices are exchangeable, so the order in which a set's
candidates are rendered is ours to choose. Rendered in the same order, two sets that start with the
same candidate give aggregation prompts that share everything up to the end of that candidate: the
rollout engine's prefix cache prefills the shared part once, and the step's trie encodes it once.

What is minimised: the unique tokens of the trie of a problem's M aggregation prompts
a_j = head + x + sep + y_{j,1} + sep + ... + sep + y_{j,K} + tail (``AggregationTemplate``'s form;
a chat template that numbers its candidates has the same structure, its separators depend on the
position only). Below a trie node the sets still to place each choose their next candidate; the
node's children are the distinct chosen contents, whose tokens themselves form a trie (two different
traces that start alike share their common start), and each child is the same problem one level
deeper. Equal traces are one candidate (their content is what is rendered).

``shared_order`` solves this exactly by a memoised search over each node's choices where a node has
at most ``EXACT_CHOICES`` of them (the paper's M = K = 4 has 256 at the root), and greedily above
that (the content that the most sets hold goes next in all of them). Among orders of equal cost it
keeps each set's drawn order, so a candidate's position depends on the draws wherever sharing does
not decide it: the aggregator sees no position bias beyond what sharing needs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from functools import cache

ORDERS = ("shared", "random")
# above this many joint choices at one trie node the search takes the greedy choice at that node
EXACT_CHOICES = 4096


def shared_order(
    sets: Sequence[Sequence[int]], traces: Sequence[Sequence[int]], *, separator_tokens: int = 1
) -> list[tuple[int, ...]]:
    """Each set's members reordered so that the sets' rendered prompts share the most prefix tokens.

    sets: M sets of K trace indices (in drawn order); traces: the problem's N traces (token ids).
    separator_tokens: tokens rendered before each candidate (weighs a trie node against candidate
    tokens; 1 makes the result exact for ``AggregationTemplate(separator=(s,))``). Returns M tuples
    with the same members as ``sets``, only reordered; ``prompt_trie_tokens`` of the result is the
    least over all orders where every node's search is exact (see the module docstring).
    """
    if not isinstance(separator_tokens, int) or separator_tokens < 0:
        raise ValueError(f"separator_tokens must be an int >= 0, got {separator_tokens!r}")
    for j, s in enumerate(sets):
        bad = [i for i in s if not (isinstance(i, int) and 0 <= i < len(traces))]
        if bad:
            raise ValueError(f"sets[{j}] names traces {bad} of a problem with {len(traces)} traces")
    # content ids: equal traces are one candidate; ids follow the token order, so sorting ids sorts tokens
    contents = sorted({tuple(map(int, t)) for t in traces})
    cid = {c: k for k, c in enumerate(contents)}
    of = [cid[tuple(map(int, t))] for t in traces]
    lengths = [len(c) for c in contents]

    def lcp(a: tuple, b: tuple) -> int:
        n = 0
        for u, v in zip(a, b):
            if u != v:
                break
            n += 1
        return n

    adjacent = [lcp(contents[k], contents[k + 1]) for k in range(len(contents) - 1)]

    def trie_tokens(ids: Sequence[int]) -> int:
        """Unique tokens of the trie of these contents: sum of lengths minus the common prefix of
        each neighbour pair in sorted order (the LCP of two sorted strings is the least adjacent one)."""
        ids = sorted(ids)
        total = sum(lengths[k] for k in ids)
        for a, b in zip(ids, ids[1:]):
            total -= min(adjacent[a:b])
        return total

    def children(group: tuple, choice: tuple) -> dict[int, tuple]:
        """For each chosen content, the group one level below: the remaining multisets (sorted)."""
        below: dict[int, set] = {}
        for rest, c in zip(group, choice):
            left = list(rest)
            left.remove(c)
            below.setdefault(c, set()).add(tuple(left))
        return {c: tuple(sorted(g)) for c, g in below.items()}

    def step_cost(group: tuple, choice: tuple) -> int:
        below = children(group, choice)
        return trie_tokens(list(below)) + sum(cost(g) for g in below.values())

    @cache
    def cost(group: tuple) -> int:
        """Trie tokens below a node whose sets still hold ``group`` (distinct sorted content multisets)."""
        group = tuple(g for g in group if g)
        if not group:
            return 0
        options = [sorted(set(g)) for g in group]
        if math.prod(map(len, options)) > EXACT_CHOICES:
            return separator_tokens + step_cost(group, greedy(group))
        return separator_tokens + min(step_cost(group, choice) for choice in itertools.product(*options))

    def greedy(group: tuple) -> tuple:
        """The content held by the most sets (then the longest, then the first) goes next in all of them."""
        choice: list = [None] * len(group)
        while None in choice:
            open_ = [k for k, c in enumerate(choice) if c is None]
            counts: dict[int, int] = {}
            for k in open_:
                for c in set(group[k]):
                    counts[c] = counts.get(c, 0) + 1
            best = min(counts, key=lambda c: (-counts[c], -lengths[c], c))
            for k in open_:
                if best in group[k]:
                    choice[k] = best
        return tuple(choice)

    remaining = [list(s) for s in sets]  # trace indices still to place, in drawn order
    ordered: list[list[int]] = [[] for _ in sets]

    def place(members: list[int]) -> None:
        """Choose each set's next candidate below one node, then recurse into the children."""
        members = [j for j in members if remaining[j]]
        if not members:
            return
        # sets with equal remaining contents take the same path (free for the second); the first such
        # set's drawn order ranks the options, so ties keep the drawn order
        groups: dict[tuple, list[int]] = {}
        for j in members:
            groups.setdefault(tuple(sorted(of[i] for i in remaining[j])), []).append(j)
        keys = list(groups)
        options = [list(dict.fromkeys(of[i] for i in remaining[groups[k][0]])) for k in keys]
        if math.prod(map(len, options)) > EXACT_CHOICES:
            picked = dict(zip(sorted(keys), greedy(tuple(sorted(keys)))))
            choice = tuple(picked[k] for k in keys)
        else:
            choice = min(itertools.product(*options), key=lambda ch: step_cost(tuple(keys), ch))  # first minimum
        below: dict[int, list[int]] = {}
        for k, c in zip(keys, choice):
            for j in groups[k]:
                member = next(i for i in remaining[j] if of[i] == c)  # equal traces: the first drawn
                remaining[j].remove(member)
                ordered[j].append(member)
                below.setdefault(c, []).append(j)
        for c in sorted(below):
            place(below[c])

    place(list(range(len(sets))))
    return [tuple(o) for o in ordered]


def prompt_trie_tokens(prompts: Sequence[Sequence[int]]) -> int:
    """Unique tokens of the trie of ``prompts``: the tokens a prefix cache prefills for them (each
    shared prefix once). Plain Python; for measurements and tests."""
    nodes: dict[tuple[int, int], int] = {}  # (parent node, token) -> node; node 0 is the root
    for p in prompts:
        node = 0
        for t in p:
            node = nodes.setdefault((node, int(t)), len(nodes) + 1)
    return len(nodes)


def order_sets(order: str, sets, traces) -> list[tuple[int, ...]]:
    """``sets`` in the members' order ``order`` asks for: "shared" (``shared_order``) or "random" (as drawn)."""
    if order == "shared":
        return shared_order(sets, traces)
    if order == "random":
        return [tuple(s) for s in sets]
    raise ValueError(f"candidate_order must be one of {list(ORDERS)}, got {order!r}")
