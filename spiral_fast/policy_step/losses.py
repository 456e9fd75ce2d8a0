"""The two role losses of a step (trace role, aggregator role), each with its global normalisers."""

from __future__ import annotations

import torch

from spiral_fast.policy_step.batch import TrainedSequences
from spiral_fast.policy_step.config import SpiralConfig
from spiral_fast.policy_step.counts import GlobalCounts
from spiral_fast.policy_step.metrics import MetricSums


def role_losses(
    loss_fn,
    logp: torch.Tensor,
    seqs: TrainedSequences,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    counts: GlobalCounts,
    config: SpiralConfig,
) -> tuple[torch.Tensor | float, MetricSums]:
    """(loss, sums) of trained rows logp [R] in (seq, pos) order.

    loss_fn: ``policy_loss`` or ``policy_loss_reference`` (same signature); each role is one call
    with that role's global normalisers, so the per-micro-batch losses sum to the batch loss.
    sums: the ``MetricSums`` fields trace_loss / agg_loss (detached role losses) and the token sums
    clip_low, clip_high, ratio, kl (0-dim float32 tensors); the other fields 0.
    """
    device = logp.device
    lens = seqs.response_lens
    split = int(lens[: seqs.num_trace].sum())
    token_seq = torch.repeat_interleave(torch.arange(lens.numel()), lens).to(device)
    seq_adv = seqs.seq_adv.to(device)
    roles = (
        ("trace", slice(0, split), slice(0, seqs.num_trace), config.trace_coef, counts.trace_tokens, counts.trace_seqs),
        ("agg", slice(split, None), slice(seqs.num_trace, None), config.agg_coef, counts.agg_tokens, counts.agg_seqs),
    )
    total, sums = 0.0, MetricSums()
    for role, rows, qs, coef, tokens, nseq in roles:
        n = logp[rows].numel()
        if n == 0:
            continue
        q0 = qs.start
        loss, stats = loss_fn(
            logp[rows],
            old_logp[rows],
            token_seq[rows] - q0,
            seq_adv[qs],
            torch.full((seq_adv[qs].numel(),), float(coef), device=device),
            ref_logp=None if ref_logp is None else ref_logp[rows],
            clip=config.clip,
            kl_coef=config.kl_coef,
            normalizer=config.normalizer,
            total_tokens=tokens,
            total_sequences=nseq,
            seq_tokens=lens[qs].to(device),
            constant=config.loss_constant or tokens,
        )
        stats = stats if isinstance(stats, dict) else vars(stats)
        total = total + loss
        token_sum = lambda name: n * stats[name].detach().float()  # noqa: E731 (a mean times its tokens)
        sums = sums + MetricSums(
            **{f"{role}_loss": loss.detach()},
            clip_low=token_sum("clip_frac_low"),
            clip_high=token_sum("clip_frac_high"),
            ratio=token_sum("ratio_mean"),
            kl=token_sum("kl_mean"),
        )
    return total, sums
