"""``step``: one SPIRAL training step with prefix-shared packing, fused log-probs and the fused
policy loss, micro-batched under a token budget with global normalisers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spiral_fast.algorithm.policy_loss import policy_loss
from spiral_fast.distributed import world_size
from spiral_fast.models.hf import ATTN_NAME
from spiral_fast.models.hf import register as register_attention
from spiral_fast.models.lora import fused_lora_linears
from spiral_fast.ops import dispatch
from spiral_fast.policy_step.advantages import advantages
from spiral_fast.policy_step.config import SpiralConfig
from spiral_fast.policy_step.counts import global_counts
from spiral_fast.policy_step.forward import lm_head, response_logprobs
from spiral_fast.policy_step.losses import role_losses
from spiral_fast.policy_step.memory_estimate import micro_batch_budget
from spiral_fast.policy_step.metrics import MetricSums, metrics
from spiral_fast.policy_step.microbatch import micro_batches
from spiral_fast.policy_step.model_context import activation_checkpointing, attention_implementation
from spiral_fast.policy_step.optimizer import finish
from spiral_fast.policy_step.validate import check_args
from spiral_fast.policy_step.wrappers import forward_rounds, unwrap, within_forward


@dataclass(frozen=True)
class StepOutput:
    """loss: 0-dim float32 tensor (detached, CPU), the whole-batch loss (all ranks).
    metrics: dict of floats (see ``spiral_fast.step``)."""

    loss: torch.Tensor
    metrics: dict


def step(model, batch, *, config=SpiralConfig(), optimizer=None) -> StepOutput:
    """One SPIRAL training step of a Hugging Face decoder-only causal LM on a ``SpiralBatch``.

    Advantages (``spiral_advantages``, then ``config.length_gate``), then per micro-batch (at most
    ``config.max_tokens_per_micro_batch`` unique tokens, "auto": estimated from memory, see
    ``SpiralConfig``; balanced; whole problems, a problem over
    budget cut into its trace block and per-set aggregation blocks, see ``microbatch.micro_batches``):
    ``pack_sequences`` (trie) of its trained sequences (x + y_i for traces in a set, a_j + z_jg),
    ``packed_hidden_states``, ``token_logprobs`` of the response tokens with the model's LM head
    (weight and bias of ``model.get_output_embeddings()``; logits are never formed), the two role
    losses of ``policy_loss`` with global normalisers, backward. Without behaviour log-probs the
    step is on-policy (old = current, detached). With ``config.aggregation="parallel"`` the packed
    batch is a DAG: h_j + z_jg attends to the keys and values of x + y_i, i in S_j (one forward
    serves both roles; each trace is encoded once per problem; problems are never cut).

    optimizer None: gradients accumulate in ``.grad`` like ``loss.backward()``. With an optimizer:
    clip to ``config.max_grad_norm``, ``optimizer.step()`` (skipped when the step is non-finite),
    ``optimizer.zero_grad()``.
    torch.distributed: each rank passes its share of the problems; normalisers are all-reduced
    once, the local loss is scaled by the world size so that averaging gradients over ranks
    (DDP / FSDP2 convention) gives the whole-batch gradient; with an optimizer and plain
    (non-FSDP2) parameters the step does that average itself before clipping.
    Wrapped models: FSDP2 (``fully_shard`` on each decoder layer and on the model: the step's forward
    runs inside the root's forward hooks, gradients are reduce-scattered by FSDP2);
    ``DistributedDataParallel`` (unwrapped; the step averages the gradients over ranks once, also
    without an optimizer, as DDP's backward would); ``torch.compile`` (unwrapped: the step runs its
    own forward). FSDP1 and ``DataParallel`` raise ValueError.

    Returns ``StepOutput(loss, metrics)``; metrics (floats, whole batch over all ranks): loss,
    agg_loss, trace_loss, agg_reward_mean, set_value_mean, clip_frac_low / clip_frac_high /
    clip_frac, ratio_mean, kl_mean, entropy_mean, tokens_trained, trace_tokens, agg_tokens,
    unique_tokens (encoded), dedup_ratio (sequence tokens / unique tokens), micro_batches,
    logprob_mismatch_mean / logprob_mismatch_max (|behaviour - current| log-prob over the tokens that
    have behaviour log-probs, at the step's forward before the update: how far the sampler's policy
    is from the trainer's; 0 without behaviour log-probs), gated_frac (responses whose positive advantage ``config.length_gate`` set to 0, divided by the
    trained responses: traces in at least one set plus aggregation responses; 0 without a gate),
    grad_norm (with an optimizer and clipping), nonfinite (with an optimizer: 1.0 when the loss or the
    gradient norm was inf or NaN on some rank: the optimizer did not step, the gradients were dropped,
    the weights and optimizer state are unchanged; else 0.0), peak_memory_bytes (CUDA only: the allocator peak of
    the step, whose start resets the peak statistics; omitted on the CPU). Under torch.distributed
    micro_batches is the total over ranks. ``backend/<op>/<backend>`` = 1.0 for the backend each
    spiral_fast op of the step ran on (e.g. ``backend/token_logprobs/triton``; "auto" falls back to
    torch for an op whose Triton path failed its self-check, see ``spiral_fast.self_check``).
    """
    wrapped = unwrap(model)  # DDP, torch.compile, LoRA; an FSDP2 root's hooks run around each forward
    model = wrapped.model
    check_args(model, batch, config, optimizer)
    device = lm_head(model)[0].device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    adv = advantages(batch, config)
    counts = global_counts(batch, adv.set_value, adv.gated)
    bins = micro_batches(batch, micro_batch_budget(model, config), cut=config.aggregation == "text")
    scale = float(world_size())
    sums = MetricSums()
    if config.gradient_checkpointing:
        register_attention()
    attn = ATTN_NAME if config.gradient_checkpointing else None
    # fused_lora_linears: PEFT's LoRA layers as one autograd node each (ops.lora_linear), forward and backward
    with (
        activation_checkpointing(model, config.gradient_checkpointing),
        attention_implementation(model, attn),
        fused_lora_linears(model),
        dispatch.recording() as backends,
    ):
        for i in range(forward_rounds(len(bins), wrapped.fsdp_root)):
            # i >= len(bins): a stand-in forward/backward (zero loss) joining the other ranks' FSDP2 collectives
            real = i < len(bins)
            items = bins[i] if real else bins[-1]
            seqs = batch.trained_sequences(items, adv.agg, adv.trace, aggregation=config.aggregation)
            # trained rows in (seq, pos) order, the order of the old log-probs; the LM head is read
            # inside the forward: under FSDP2 that is where the root's parameters are unsharded.
            # Parallel mode: a DAG, each h_j + z_jg over the keys and values of its set's traces
            logp, entropy, packed = within_forward(
                wrapped.fsdp_root,
                lambda: response_logprobs(
                    model,
                    seqs.tokens,
                    seqs.prompt_lens,
                    config,
                    return_entropy=True,
                    contexts=seqs.contexts,
                    share_limits=seqs.share_limits,
                ),
            )
            old = torch.where(seqs.old_given.to(device), seqs.old_logp.to(device), logp.detach())
            ref = None if seqs.ref_logp is None else seqs.ref_logp.to(device)
            loss, loss_sums = role_losses(policy_loss, logp, seqs, old, ref, counts, config)
            (loss * (scale if real else 0.0)).backward()
            if real:
                sums = (
                    sums
                    + loss_sums
                    + MetricSums(
                        entropy=entropy.detach().sum(),
                        unique_tokens=packed.num_tokens,
                        sequence_tokens=int(packed.seq_lengths.sum()),
                        micro_batches=1,
                    )
                )
                sums = sums + MetricSums.mismatch_of(old, logp, seqs.old_given.to(device))
    grad_norm, skipped = finish(
        model,
        optimizer,
        config,
        ddp=wrapped.average_grads,
        loss=torch.as_tensor(sums.trace_loss) + torch.as_tensor(sums.agg_loss),
    )
    out = metrics(sums, counts, grad_norm, device)
    if optimizer is not None:
        out["nonfinite"] = float(skipped)
    out.update({f"backend/{op}/{name}": 1.0 for op, name in sorted(backends.items())})
    return StepOutput(loss=torch.tensor(out["loss"]), metrics=out)
