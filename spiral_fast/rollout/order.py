"""The order of a set's members in its aggregation prompt (``RolloutConfig.candidate_order``).

The paper's sets are unordered and trace indices are exchangeable, so the order in which a set's
candidates are rendered is ours to choose. Rendered in the same order, two sets that start with the
same candidate give aggregation prompts that share everything up to the end of that candidate: the
rollout engine's prefix cache prefills the shared part once, and the step's trie encodes it once.

``shared_order`` picks the orders greedily, as a trie is built: at each depth, among the sets still
to place, the candidate that the most of them contain goes next in all of those sets (equal traces
count as one candidate), then each group is ordered the same way, deeper, on its own. Ties go to the
candidate whose tokens sort first, then to the lower index, so the result is deterministic.
"""
from __future__ import annotations

from typing import Sequence

ORDERS = ("shared", "random")


def shared_order(sets: Sequence[Sequence[int]], traces: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Each set's members reordered to maximise the prefix the sets' rendered prompts share.

    sets: M sets of trace indices; traces: the problem's N traces (token ids). Returns M tuples with
    the same members as ``sets`` (only their order changes).
    """
    for j, s in enumerate(sets):
        bad = [i for i in s if not 0 <= i < len(traces)]
        if bad:
            raise ValueError(f"sets[{j}] names traces {bad} of a problem with {len(traces)} traces")
    key = [tuple(map(int, t)) for t in traces]
    remaining = [list(s) for s in sets]
    ordered: list[list[int]] = [[] for _ in sets]

    def place(group: list[int]) -> None:
        while group:
            holders: dict[tuple, list[int]] = {}  # candidate content -> sets of the group holding it
            for j in group:
                for content in {key[i] for i in remaining[j]}:
                    holders.setdefault(content, []).append(j)
            if not holders:  # every set of the group is complete
                return
            best = min(holders, key=lambda c: (-len(holders[c]), c))
            taken = holders[best]
            for j in taken:
                member = min(i for i in remaining[j] if key[i] == best)
                remaining[j].remove(member)
                ordered[j].append(member)
            place(taken)
            group = [j for j in group if j not in taken and remaining[j]]

    place(list(range(len(sets))))
    return [tuple(o) for o in ordered]


def order_sets(order: str, sets, traces) -> list[tuple[int, ...]]:
    """``sets`` in the members' order ``order`` asks for: "shared" (``shared_order``) or "random" (as drawn)."""
    if order == "shared":
        return shared_order(sets, traces)
    if order == "random":
        return [tuple(s) for s in sets]
    raise ValueError(f"candidate_order must be one of {list(ORDERS)}, got {order!r}")
