"""Critical path of a SPIRAL rollout in decode steps, phase by phase or pipelined.

A model of a continuous-batching engine (vLLM): at every decode step each running sequence gets one
token; a sequence of length L admitted at step t finishes at step t + L and frees its slot. Requests
wait in first-come order for one of ``max_running`` slots (None: unlimited, every ready request
runs at once). A problem's aggregation requests become ready when its own N traces are finished
(``pipelined=True``) or when every trace of the rollout is (``pipelined=False``, two calls).
Prefill is not counted (one step per admission wave at most; decode dominates long responses).
"""

from __future__ import annotations

import heapq
from collections import deque


def critical_path(trace_lengths, agg_lengths, *, pipelined: bool, max_running: int | None = None) -> int:
    """Decode steps from the first trace token to the last aggregation token.

    trace_lengths: per problem p, the token lengths of its N traces ([P][N]).
    agg_lengths: per problem p, the lengths of its M*G aggregation responses ([P][M*G]).
    pipelined: aggregations of p start when p's traces finish (True) or when all traces do (False).
    max_running: concurrent sequences the engine decodes (vLLM's max_num_seqs); None = unlimited.

    With max_running=None this is max_p(max(trace_p) + max(agg_p)) pipelined and
    max(all traces) + max(all aggregations) phase by phase.
    """
    if len(trace_lengths) != len(agg_lengths):
        raise ValueError(
            f"trace_lengths and agg_lengths must have one entry per problem, got "
            f"{len(trace_lengths)} and {len(agg_lengths)}"
        )
    if max_running is not None and max_running < 1:
        raise ValueError(f"max_running must be None or >= 1, got {max_running}")
    for name, lengths in (("trace_lengths", trace_lengths), ("agg_lengths", agg_lengths)):
        if any(length < 0 for row in lengths for length in row):
            raise ValueError(f"{name} must hold lengths >= 0")
    if any(len(row) == 0 for row in trace_lengths):
        raise ValueError("trace_lengths: every problem needs at least one trace")
    slots = float("inf") if max_running is None else max_running
    ready = deque(("t", p, length) for p, row in enumerate(trace_lengths) for length in row)
    traces_left = [len(row) for row in trace_lengths]
    all_traces_left = sum(traces_left)
    running: list[tuple[int, int, str, int]] = []  # heap of (finish step, order, kind, problem)
    order = now = 0
    while ready or running:
        while ready and len(running) < slots:  # admit in first-come order
            kind, p, length = ready.popleft()
            heapq.heappush(running, (now + length, order, kind, p))
            order += 1
        now = running[0][0]
        while running and running[0][0] == now:  # every request finishing at this step
            _, _, kind, p = heapq.heappop(running)
            if kind != "t":
                continue
            traces_left[p] -= 1
            all_traces_left -= 1
            if pipelined and traces_left[p] == 0:
                ready.extend(("a", p, length) for length in agg_lengths[p])
            elif not pipelined and all_traces_left == 0:
                ready.extend(("a", q, length) for q, row in enumerate(agg_lengths) for length in row)
    return now
