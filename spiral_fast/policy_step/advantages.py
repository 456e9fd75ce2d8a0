"""The advantages a step trains with: ``spiral_advantages`` of the local batch, then
``SpiralConfig.length_gate``. Used by ``step``, ``step_reference`` and ``SpiralBatch.informative``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from spiral_fast.algorithm.advantages import spiral_advantages
from spiral_fast.policy_step.config import SpiralConfig


class AdvantageSource(Protocol):
    """What ``advantages`` reads of a batch: a ``SpiralBatch`` is one. Structural because
    ``batch.py`` imports this module (``SpiralBatch.informative`` calls ``advantages``): importing
    it back, even only for type checkers, would close an import circle."""

    problems: Sequence[Any]  # each with .traces [N_p tensors] and .aggregations [M_p lists of tensors]

    def advantage_inputs(self) -> Any:
        """The batch's ``AdvantageInputs`` (CSR tensors of its structure)."""


@dataclass(frozen=True)
class StepAdvantages:
    """The advantages a step trains with (float32, flat order of ``SpiralBatch.advantage_inputs``):
    agg [A], trace [N] after the length gate, set_value [S]; gated: the number of responses
    (traces and aggregation responses) whose positive advantage the gate set to 0."""

    agg: torch.Tensor
    trace: torch.Tensor
    set_value: torch.Tensor
    gated: int


def advantages(batch: AdvantageSource, config: SpiralConfig) -> StepAdvantages:
    """``spiral_advantages`` of the whole local batch (groups never cross problems, so a rank's
    share of the problems gets the same advantages as the whole batch), then
    ``config.length_gate``: a response of more than L response tokens with a positive advantage
    gets 0 (L = trace_L for traces, agg_L for aggregation responses; None: no gate)."""
    f = batch.advantage_inputs()
    adv = spiral_advantages(
        f.rewards,
        f.agg_set,
        f.set_problem,
        f.set_members,
        f.set_offsets,
        f.trace_problem,
        estimator=config.estimator,
        scale=config.scale,
        trace_credit=config.trace_credit,
        agg_baseline=config.agg_baseline,
        eps=config.eps,
    )
    gate = config.length_gate
    trace_limit, agg_limit = gate if isinstance(gate, tuple) else (gate, gate)
    # response lengths in the flat order: traces by problem, aggregation responses by problem, set
    trace_len = [y.numel() for pr in batch.problems for y in pr.traces]
    agg_len = [z.numel() for pr in batch.problems for zs in pr.aggregations for z in zs]
    trace, trace_gated = _length_gate(adv.trace, trace_len, trace_limit)
    agg, agg_gated = _length_gate(adv.agg, agg_len, agg_limit)
    return StepAdvantages(agg=agg, trace=trace, set_value=adv.set_value, gated=trace_gated + agg_gated)


def _length_gate(adv: torch.Tensor, lengths: list, limit: int | None) -> tuple[torch.Tensor, int]:
    """adv with the positive entries of responses longer than limit set to 0, and their count."""
    if limit is None:
        return adv, 0
    hit = (torch.tensor(lengths, dtype=torch.int64) > limit) & (adv > 0)
    return adv.masked_fill(hit, 0.0), int(hit.sum())
