"""Dynamic sampling (the paper's): train only on problems that teach something, sampling more when a
round leaves the batch short.

A problem teaches nothing when every advantage of it is 0 (e.g. all its rewards are equal:
``SpiralBatch.informative_mask``). ``rollout.oversample`` samples more problems than needed in the
first round (one call) so that, most of the time, no second round (two more sequential engine calls)
is needed; ``first_round_size`` is that count and ``informative_batch`` keeps the first P informative
problems in sampling order, sampling more for at most ``max_extra_rounds`` rounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from spiral_fast.policy_step.batch import SpiralBatch


def first_round_size(problems: int, oversample: float) -> int:
    """ceil(P * (1 + oversample)): the problems the first round samples, in one call."""
    return math.ceil(problems * (1.0 + oversample) - 1e-9)


def share_of_room(counts: list[int], room: int) -> list[int]:
    """How many of each rank's informative problems to keep when together they exceed ``room``:
    round-robin over ranks (rank r holds the step's slots r, r + world, ...), so the kept ones are
    the first ``room`` in slot order up to the interleaving."""
    keep = [0] * len(counts)
    while room > 0 and any(k < c for k, c in zip(keep, counts)):
        for r, c in enumerate(counts):
            if room > 0 and keep[r] < c:
                keep[r] += 1
                room -= 1
    return keep


def informative_batch(
    batch,
    resample: Callable[[int], object],
    *,
    target: int,
    max_extra_rounds: int,
    config,
    count: Callable[[int], int] = lambda n: n,
    rank_counts: Callable[[int], list[int]] | None = None,
    rank: int = 0,
):
    """Keep the problems of ``batch`` whose advantages under ``config`` are not all zero, at most
    ``target`` of them (over all ranks) in sampling order; while short, call ``resample(shortfall)``
    for a fresh SpiralBatch (or None), at most ``max_extra_rounds`` times.

    ``count(n)``: the global number of problems when this process holds n (the sum over ranks);
    ``rank_counts(n)``: every rank's n (under torch.distributed; None on one process), used to trim a
    round that overshoots ``target`` (oversampling) to exactly ``target``.

    Returns (SpiralBatch of the kept problems in sampling order, or None if none, number dropped
    (problems with all-zero advantages), rounds sampled).
    """
    kept, dropped, rounds, total = [], 0, 0, 0
    for extra in range(max_extra_rounds + 1):
        if extra:
            batch = resample(target - total)
        rounds += 1
        flags = batch.informative_mask(config) if batch is not None else []
        good = [pr for pr, f in zip(batch.problems, flags) if f] if batch is not None else []
        dropped += len(flags) - len(good)
        room = target - total
        if rank_counts is None:
            good = good[:room]
        else:
            good = good[: share_of_room(rank_counts(len(good)), room)[rank]]
        kept += good
        total = count(len(kept))
        if total >= target:
            break
    return (SpiralBatch(kept) if kept else None), dropped, rounds
