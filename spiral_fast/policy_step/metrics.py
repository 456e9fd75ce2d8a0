"""The metrics of a step: this rank's sums under their names (``MetricSums``), summed over ranks in
one all-reduce with one host sync, then turned into the floats of ``StepOutput.metrics``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from spiral_fast.distributed import all_reduce_max, all_reduce_sum
from spiral_fast.policy_step.counts import GlobalCounts

MAX_FIELDS = ("mismatch_max",)  # reduced with a max over micro-batches and ranks, not a sum


@dataclass(frozen=True)
class MetricSums:
    """This rank's sums over its trained tokens / micro-batches, each a Python number or a 0-dim
    tensor on the step's device (accumulated without a host sync). ``+`` adds field by field.

    The field order below is the layout of the one all-reduce (``reduce``); no other code knows it.
    trace_loss / agg_loss: the role losses (already normalised globally, so they add up);
    clip_low / clip_high / ratio / kl / entropy: token sums of the clip indicators, ratios, KL and
    entropies; unique_tokens: tokens encoded (packed); sequence_tokens: tokens of the trained
    sequences before sharing; micro_batches: forwards with a real micro-batch; mismatch /
    mismatch_tokens / mismatch_max: sum, count and largest |old - new| log-prob over the tokens with
    behaviour log-probs, new = the step's forward, before any update (``mismatch_max`` is reduced
    with a max: the one field not summed, in a second collective on several ranks only).
    """

    trace_loss: torch.Tensor | float = 0.0
    agg_loss: torch.Tensor | float = 0.0
    clip_low: torch.Tensor | float = 0.0
    clip_high: torch.Tensor | float = 0.0
    ratio: torch.Tensor | float = 0.0
    kl: torch.Tensor | float = 0.0
    entropy: torch.Tensor | float = 0.0
    unique_tokens: torch.Tensor | int = 0
    sequence_tokens: torch.Tensor | int = 0
    micro_batches: int = 0
    mismatch: torch.Tensor | float = 0.0
    mismatch_tokens: torch.Tensor | int = 0
    mismatch_max: torch.Tensor | float = 0.0

    def __add__(self, other: MetricSums) -> MetricSums:
        def combine(name):
            a, b = getattr(self, name), getattr(other, name)
            return torch.maximum(torch.as_tensor(a), torch.as_tensor(b)) if name in MAX_FIELDS else a + b

        return MetricSums(**{f.name: combine(f.name) for f in dataclasses.fields(self)})

    @staticmethod
    def mismatch_of(old: torch.Tensor, new: torch.Tensor, given: torch.Tensor) -> MetricSums:
        """The mismatch sums of rows with behaviour log-probs (``given``): |old - new| of each."""
        diff = (old - new.detach()).abs().float() * given
        return MetricSums(
            mismatch=diff.sum(), mismatch_tokens=given.sum(), mismatch_max=diff.max() if diff.numel() else 0.0
        )

    def reduce(self, device) -> dict[str, float]:
        """Every field summed over ranks: one float64 all-reduce of the fields stacked in field
        order on ``device``, one host sync. Returns {field name: float}."""

        def stacked(names):
            return torch.stack(
                [
                    torch.as_tensor(getattr(self, n), dtype=torch.float64, device=device).detach().reshape(())
                    for n in names
                ]
            )

        names = [f.name for f in dataclasses.fields(self) if f.name not in MAX_FIELDS]
        out = dict(zip(names, all_reduce_sum(stacked(names)).tolist()))
        return out | dict(zip(MAX_FIELDS, all_reduce_max(stacked(MAX_FIELDS)).tolist()))


def metrics(sums: MetricSums, counts: GlobalCounts, grad_norm, device) -> dict:
    """The floats of ``StepOutput.metrics`` (see ``spiral_fast.step``) from this rank's sums and
    the global counts; one all-reduce, one host sync."""
    values = sums.reduce(device)
    tokens = counts.trace_tokens + counts.agg_tokens
    out = {
        "loss": values["trace_loss"] + values["agg_loss"],
        "agg_loss": values["agg_loss"],
        "trace_loss": values["trace_loss"],
        "agg_reward_mean": counts.reward_mean,
        "set_value_mean": counts.set_value_mean,
        "clip_frac_low": values["clip_low"] / tokens,
        "clip_frac_high": values["clip_high"] / tokens,
        "clip_frac": (values["clip_low"] + values["clip_high"]) / tokens,
        "ratio_mean": values["ratio"] / tokens,
        "kl_mean": values["kl"] / tokens,
        "entropy_mean": values["entropy"] / tokens,
        "tokens_trained": float(tokens),
        "trace_tokens": float(counts.trace_tokens),
        "agg_tokens": float(counts.agg_tokens),
        "unique_tokens": values["unique_tokens"],
        "dedup_ratio": values["sequence_tokens"] / values["unique_tokens"],
        "micro_batches": values["micro_batches"],
        "gated_frac": counts.gated / max(counts.trace_seqs + counts.agg_seqs, 1),
        # sampler vs trainer: |behaviour - current| log-prob at the step's forward (0 without behaviour log-probs)
        "logprob_mismatch_mean": values["mismatch"] / max(values["mismatch_tokens"], 1.0),
        "logprob_mismatch_max": values["mismatch_max"],
    }
    if grad_norm is not None:
        out["grad_norm"] = float(grad_norm)
    if torch.device(device).type == "cuda":
        out["peak_memory_bytes"] = float(torch.cuda.max_memory_allocated(device))
    return out
