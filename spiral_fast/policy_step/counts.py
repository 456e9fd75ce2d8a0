"""The global normalisers of a step: trained tokens / sequences per role and reward statistics,
summed over ranks in one collective, so micro-batches and ranks add up to the whole batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spiral_fast.distributed import sum_floats
from spiral_fast.policy_step.batch import SpiralBatch


@dataclass(frozen=True)
class GlobalCounts:
    """Global (all ranks) normalisers and reward statistics, Python numbers."""

    trace_tokens: int
    agg_tokens: int
    trace_seqs: int
    agg_seqs: int
    reward_mean: float
    set_value_mean: float
    gated: int = 0


def global_counts(batch: SpiralBatch, set_value: torch.Tensor, gated: int = 0) -> GlobalCounts:
    """Counts of trained tokens / sequences per role and reward sums, summed over ranks in one
    collective: every normaliser is global, so micro-batches and ranks add up to the whole batch.
    gated: this rank's responses gated by the length gate (``StepAdvantages.gated``)."""
    trace_tokens = agg_tokens = trace_seqs = agg_seqs = 0
    for pr in batch.problems:
        used = pr.trained_traces()
        trace_seqs += len(used)
        trace_tokens += sum(pr.traces[i].numel() for i in used)
        agg_seqs += sum(len(zs) for zs in pr.aggregations)
        agg_tokens += sum(z.numel() for zs in pr.aggregations for z in zs)
    rewards = batch.advantage_inputs().rewards.double()
    g = sum_floats(
        [
            trace_tokens,
            agg_tokens,
            trace_seqs,
            agg_seqs,
            float(rewards.sum()),
            rewards.numel(),
            float(set_value.double().sum()),
            set_value.numel(),
            gated,
        ]
    )
    return GlobalCounts(int(g[0]), int(g[1]), int(g[2]), int(g[3]), g[4] / g[5], g[6] / g[7], int(g[8]))
