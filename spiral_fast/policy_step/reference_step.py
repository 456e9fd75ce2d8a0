"""``step_reference``: the naive twin of ``step`` and its end-to-end oracle.

Every trained sequence runs alone through the model with full logits, log_softmax and gather
(in parallel mode, an aggregation sequence over its concatenated context with a dense mask);
the loss is ``policy_loss_reference`` (one autograd graph) with the same global normalisers as
``step``; one backward over the whole batch. No prefix sharing, no fused log-probs, no
micro-batches: memory grows with the sum of all sequence lengths times the vocabulary.
"""

from __future__ import annotations

import torch

from spiral_fast.algorithm.reference import policy_loss_reference
from spiral_fast.distributed import world_size
from spiral_fast.policy_step.advantages import advantages
from spiral_fast.policy_step.config import SpiralConfig
from spiral_fast.policy_step.counts import global_counts
from spiral_fast.policy_step.losses import role_losses
from spiral_fast.policy_step.metrics import MetricSums, metrics
from spiral_fast.policy_step.model_context import activation_checkpointing
from spiral_fast.policy_step.optimizer import finish
from spiral_fast.policy_step.step import StepOutput
from spiral_fast.policy_step.validate import check_args
from spiral_fast.policy_step.wrappers import forward_rounds, unwrap


def parallel_context(tokens: list, prompt_lens: list, context: list, k: int):
    """The concatenated context of aggregation sequence k in parallel mode, for a plain HF forward.

    tokens[c] = x + y_i for c in `context` (prompt_lens[c] = |x|), tokens[k] = h_j + z_jg.
    Returns (ids [n], position_ids [n], allowed [n, n] bool): ids = x, y_i in `context` order,
    h_j + z_jg; positions 0.. for x, |x|.. for each y_i, p_j = max_c len(tokens[c]) on for h_j + z_jg;
    x causal, each y_i sees x and itself causally, h_j + z_jg sees everything before it.
    """
    x = tokens[context[0]][: prompt_lens[context[0]]]
    parts = [x] + [tokens[c][prompt_lens[c] :] for c in context] + [tokens[k]]
    lx, p = x.numel(), max(tokens[c].numel() for c in context)
    pos = [torch.arange(lx)] + [torch.arange(lx, lx + y.numel()) for y in parts[1:-1]]
    pos.append(torch.arange(p, p + tokens[k].numel()))
    part = torch.repeat_interleave(torch.arange(len(parts)), torch.tensor([t.numel() for t in parts]))
    idx = torch.arange(part.numel())
    causal = idx[None, :] <= idx[:, None]
    sees = (part[:, None] == part[None, :]) | (part[None, :] == 0) | (part[:, None] == len(parts) - 1)
    return torch.cat(parts), torch.cat(pos), causal & sees


def step_reference(model, batch, *, config=SpiralConfig(), optimizer=None) -> StepOutput:
    """Same contract and result as ``spiral_fast.step`` (loss, gradients, metrics up to float
    rounding), computed the plain way: model(input_ids=sequence[None]).logits per sequence.

    With ``config.aggregation="parallel"`` each aggregation response runs alone over its whole
    context (x, its set's traces, h_j, z_jg concatenated) with an explicit dense 4-D mask and
    position ids (``parallel_context``): the traces are re-encoded per response, so the gradient
    through their keys and values is summed by autograd rather than by the shared DAG."""
    wrapped = unwrap(model)  # DDP, torch.compile, LoRA (runs as its wrapped model, adapters active)
    inner = wrapped.model
    check_args(inner, batch, config, optimizer)
    model = wrapped.fsdp_root or inner  # an FSDP2 model's own forward gathers its weights
    adv = advantages(batch, config)
    counts = global_counts(batch, adv.set_value, adv.gated)
    seqs = batch.trained_sequences(range(len(batch)), adv.agg, adv.trace, aggregation=config.aggregation)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    logps, entropies = [], []
    rounds = forward_rounds(len(seqs.tokens), wrapped.fsdp_root)  # before any forward: a collective
    with activation_checkpointing(model, config.gradient_checkpointing):
        for k, (tokens, start) in enumerate(zip(seqs.tokens, seqs.prompt_lens.tolist())):
            ids = tokens.to(device)
            context = seqs.contexts[k] if seqs.contexts is not None else None
            if context is None:
                logits = model(input_ids=ids[None], use_cache=False).logits[0, start - 1 : -1].float()
            else:
                full, pos, allowed = parallel_context(seqs.tokens, seqs.prompt_lens.tolist(), context, k)
                mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
                out = model(
                    input_ids=full[None].to(device),
                    position_ids=pos[None].to(device),
                    attention_mask=mask[None, None].to(device),
                    use_cache=False,
                )
                first = full.numel() - ids.numel()  # where h_j + z_jg starts in the concatenated context
                logits = out.logits[0, first + start - 1 : -1].float()
            lsm = torch.log_softmax(logits / config.temperature, dim=-1)
            logps.append(lsm.gather(1, ids[start:, None]).squeeze(1))
            entropies.append(-(lsm.exp() * lsm).sum(-1).detach())
        stand_in = 0.0
        for _ in range(rounds - len(seqs.tokens)):
            # FSDP2: every rank runs as many forwards as the largest rank (zero loss here)
            stand_in = stand_in + model(input_ids=ids[None], use_cache=False).logits.float().sum() * 0.0
        logp = torch.cat(logps)
        old = torch.where(seqs.old_given.to(device), seqs.old_logp.to(device), logp.detach())
        ref = None if seqs.ref_logp is None else seqs.ref_logp.to(device)
        loss, loss_sums = role_losses(policy_loss_reference, logp, seqs, old, ref, counts, config)
        (loss * world_size() + stand_in).backward()
    grad_norm, skipped = finish(model, optimizer, config, ddp=wrapped.average_grads, loss=loss.detach())
    seq_tokens = sum(t.numel() for t in seqs.tokens)  # nothing shared: every sequence token is encoded
    sums = loss_sums + MetricSums(
        entropy=torch.cat(entropies).sum(), unique_tokens=seq_tokens, sequence_tokens=seq_tokens, micro_batches=1
    )
    sums = sums + MetricSums.mismatch_of(old, logp, seqs.old_given.to(device))
    out = metrics(sums, counts, grad_norm, device)
    if optimizer is not None:
        out["nonfinite"] = float(skipped)
    return StepOutput(loss=torch.tensor(out["loss"]), metrics=out)
