"""What ``step`` and ``step_reference`` share: advantages, global normalisers (all-reduced once
under torch.distributed), the two role losses, the optimizer tail and the metrics."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from spiral_fast.distributed import all_reduce_sum, average_gradients, is_dtensor, sum_floats, world_size
from spiral_fast.policy_step.batch import SpiralBatch, TrainedSequences
from spiral_fast.policy_step.config import SpiralConfig


def check_args(model, batch, config, optimizer) -> None:
    """``check_inputs``, then the optimizer, and reference log-probs when ``config.kl_coef > 0``."""
    check_inputs(model, batch, config)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    if config.kl_coef > 0:
        for p, pr in enumerate(batch.problems):
            if pr.trace_ref_logprobs is None or pr.agg_ref_logprobs is None:
                raise ValueError(f"config.kl_coef={config.kl_coef} needs reference log-probs, but problems[{p}] has "
                                 "no trace_ref_logprobs / agg_ref_logprobs")


def check_inputs(model, batch, config) -> None:
    """The types of batch and config, and a causal LM with an LM head."""
    if not isinstance(batch, SpiralBatch):
        raise ValueError(f"batch must be a spiral_fast.SpiralBatch, got {type(batch).__name__}")
    if not isinstance(config, SpiralConfig):
        raise ValueError(f"config must be a spiral_fast.SpiralConfig, got {type(config).__name__}")
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "get_output_embeddings"):
        raise ValueError(f"model must be a Hugging Face causal LM, got {type(model).__name__}")
    if getattr(model.get_output_embeddings(), "weight", None) is None:
        raise ValueError(f"model {type(model).__name__} has no LM head (get_output_embeddings() has no weight): "
                         "pass the ...ForCausalLM model, not its base model")


@dataclass(frozen=True)
class StepAdvantages:
    """The advantages a step trains with (float32, flat order of ``SpiralBatch.advantage_inputs``):
    agg [A], trace [N] after the length gate, set_value [S]; gated: the number of responses
    (traces and aggregation responses) whose positive advantage the gate set to 0."""
    agg: torch.Tensor
    trace: torch.Tensor
    set_value: torch.Tensor
    gated: int


def advantages(batch: SpiralBatch, config: SpiralConfig) -> StepAdvantages:
    """``spiral_advantages`` of the whole local batch (groups never cross problems, so a rank's
    share of the problems gets the same advantages as the whole batch), then
    ``config.length_gate``: a response of more than L response tokens with a positive advantage
    gets 0 (L = trace_L for traces, agg_L for aggregation responses; None: no gate)."""
    from spiral_fast.algorithm.advantages import spiral_advantages

    f = batch.advantage_inputs()
    adv = spiral_advantages(f.rewards, f.agg_set, f.set_problem, f.set_members, f.set_offsets, f.trace_problem,
                            estimator=config.estimator, scale=config.scale, trace_credit=config.trace_credit,
                            agg_baseline=config.agg_baseline, eps=config.eps)
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
    g = sum_floats([trace_tokens, agg_tokens, trace_seqs, agg_seqs, float(rewards.sum()), rewards.numel(),
                    float(set_value.double().sum()), set_value.numel(), gated])
    return GlobalCounts(int(g[0]), int(g[1]), int(g[2]), int(g[3]), g[4] / g[5], g[6] / g[7], int(g[8]))


def role_losses(loss_fn, logp: torch.Tensor, seqs: TrainedSequences, old_logp: torch.Tensor,
                ref_logp: torch.Tensor | None, counts: GlobalCounts, config: SpiralConfig):
    """(loss, [trace_loss, agg_loss], [stat sums]) of trained rows logp [R] in (seq, pos) order.

    loss_fn: ``policy_loss`` or ``policy_loss_reference`` (same signature); each role is one call
    with that role's global normalisers, so the per-micro-batch losses sum to the batch loss.
    Stat sums (0-dim tensors): clip-low rows, clip-high rows, ratio sum, KL sum.
    """
    device = logp.device
    lens = seqs.response_lens
    split = int(lens[:seqs.num_trace].sum())
    token_seq = torch.repeat_interleave(torch.arange(lens.numel()), lens).to(device)
    seq_adv = seqs.seq_adv.to(device)
    roles = ((slice(0, split), slice(0, seqs.num_trace), config.trace_coef, counts.trace_tokens, counts.trace_seqs),
             (slice(split, None), slice(seqs.num_trace, None), config.agg_coef, counts.agg_tokens, counts.agg_seqs))
    total, parts, sums = 0.0, [], torch.zeros(4, device=device)
    for rows, qs, coef, tokens, nseq in roles:
        n = logp[rows].numel()
        if n == 0:
            parts.append(torch.zeros((), device=device))
            continue
        q0 = qs.start
        loss, stats = loss_fn(logp[rows], old_logp[rows], token_seq[rows] - q0, seq_adv[qs],
                              torch.full((seq_adv[qs].numel(),), float(coef), device=device),
                              ref_logp=None if ref_logp is None else ref_logp[rows], clip=config.clip,
                              kl_coef=config.kl_coef, normalizer=config.normalizer, total_tokens=tokens,
                              total_sequences=nseq, seq_tokens=lens[qs].to(device),
                              constant=config.loss_constant or tokens)
        stats = stats if isinstance(stats, dict) else vars(stats)
        total = total + loss
        parts.append(loss.detach())
        sums = sums + n * torch.stack([stats["clip_frac_low"], stats["clip_frac_high"], stats["ratio_mean"],
                                       stats["kl_mean"]]).detach().float()
    return total, parts, sums


@contextlib.contextmanager
def activation_checkpointing(model, enabled: bool):
    """Turn on the HF model's activation (gradient) checkpointing for the step, restore it after.

    transformers 5 names it ``activation_checkpointing_*`` (``gradient_checkpointing_*`` are
    deprecated aliases); older versions only have the latter. HF checkpoints in train mode only.
    """
    new_api = hasattr(model, "activation_checkpointing_enable")
    was_on = bool(getattr(model, "is_activation_checkpointing" if new_api else "is_gradient_checkpointing", False))
    if enabled and not was_on:
        kwargs = {"use_reentrant": False}
        if new_api:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    try:
        yield
    finally:
        if enabled and not was_on:
            (model.activation_checkpointing_disable if new_api else model.gradient_checkpointing_disable)()


@contextlib.contextmanager
def attention_implementation(model, name: str | None):
    """Keep ``model.config._attn_implementation = name`` until the backward is done: layers
    recomputed by activation checkpointing read it again, and must run the attention of the
    original forward (``packed_hidden_states`` alone restores it as soon as its forward returns).
    name None: leave the model as it is."""
    if name is None:
        yield
        return
    previous = model.config._attn_implementation
    model.config._attn_implementation = name
    try:
        yield
    finally:
        model.config._attn_implementation = previous


def finish(model, optimizer, config: SpiralConfig) -> float | None:
    """With an optimizer: average plain (non-FSDP) gradients over ranks, clip, step, zero_grad;
    returns the gradient norm before clipping (None without an optimizer or without clipping)."""
    if optimizer is None:
        return None
    params = [p for p in model.parameters() if p.grad is not None]
    if world_size() > 1 and params and not is_dtensor(params[0].grad):
        # the loss was scaled by the world size: the average over ranks is the whole-batch gradient
        average_gradients(model)
    norm = None
    if config.max_grad_norm is not None and params:
        norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad()
    return norm


METRIC_SUMS = ("trace_loss", "agg_loss", "clip_low", "clip_high", "ratio", "kl", "entropy", "unique_tokens",
               "sequence_tokens")


def metrics(sums: torch.Tensor, counts: GlobalCounts, micro_batches: int, grad_norm, device) -> dict:
    """Floats from the accumulated sums [len(METRIC_SUMS)] (one all-reduce, one host sync)."""
    vec = torch.cat([sums.detach().double(), torch.tensor([float(micro_batches)], dtype=torch.float64,
                                                          device=sums.device)])
    vec = all_reduce_sum(vec)
    values = dict(zip(METRIC_SUMS + ("micro_batches",), vec.tolist()))
    tokens = counts.trace_tokens + counts.agg_tokens
    out = {
        "loss": values["trace_loss"] + values["agg_loss"],
        "agg_loss": values["agg_loss"], "trace_loss": values["trace_loss"],
        "agg_reward_mean": counts.reward_mean, "set_value_mean": counts.set_value_mean,
        "clip_frac_low": values["clip_low"] / tokens, "clip_frac_high": values["clip_high"] / tokens,
        "clip_frac": (values["clip_low"] + values["clip_high"]) / tokens,
        "ratio_mean": values["ratio"] / tokens, "kl_mean": values["kl"] / tokens,
        "entropy_mean": values["entropy"] / tokens,
        "tokens_trained": float(tokens), "trace_tokens": float(counts.trace_tokens),
        "agg_tokens": float(counts.agg_tokens),
        "unique_tokens": values["unique_tokens"], "dedup_ratio": values["sequence_tokens"] / values["unique_tokens"],
        "micro_batches": values["micro_batches"],
        "gated_frac": counts.gated / max(counts.trace_seqs + counts.agg_seqs, 1),
    }
    if grad_norm is not None:
        out["grad_norm"] = float(grad_norm)
    if torch.device(device).type == "cuda":
        out["peak_memory_bytes"] = float(torch.cuda.max_memory_allocated(device))
    return out
