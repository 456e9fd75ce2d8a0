"""``batch_logprobs``: per-token log-probs of every response of a ``SpiralBatch`` under a model,
through the packed, micro-batched path of ``step`` without grad (behaviour log-probs recomputed,
``*_ref_logprobs`` from a frozen reference model, evaluation)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spiral_fast.models.lora import fused_lora_linears
from spiral_fast.policy_step.config import SpiralConfig
from spiral_fast.policy_step.forward import response_logprobs
from spiral_fast.policy_step.memory_estimate import micro_batch_budget
from spiral_fast.policy_step.microbatch import micro_batches
from spiral_fast.policy_step.validate import check_inputs
from spiral_fast.policy_step.wrappers import forward_rounds, unwrap, within_forward


@dataclass(frozen=True)
class BatchLogprobs:
    """``traces[p][i]``: float32 CPU tensor [len(y_i)], log-probs of the tokens of trace i of problem p
    (every trace, also those in no set); ``aggregations[p][j][g]``: the same for response g of set j.
    The nesting matches ``ProblemRollout(trace_*_logprobs=..., agg_*_logprobs=...)``."""

    traces: list
    aggregations: list


def batch_logprobs(model, batch, *, config=SpiralConfig()) -> BatchLogprobs:
    """Log-probs of every response token of ``batch`` under ``model`` (a Hugging Face causal LM or a
    LoRA ``peft.PeftModel``) at ``config.temperature``.

    log_softmax(logits / temperature)[token] of each token of each trace y_i given x and of each
    aggregation response z_jg given a_j, computed as ``step`` computes them: micro-batches of at
    most ``config.max_tokens_per_micro_batch`` unique tokens (whole problems, a problem over budget
    cut into its trace block and per-set blocks), each packed into a prefix tree and run through
    ``packed_hidden_states`` and ``token_logprobs`` (``config.logprob_backend``) under
    ``torch.no_grad``. Only those config fields and ``config.aggregation`` matter: in parallel mode
    z_jg is scored given h_j over the keys and values of x and the traces of set j (a DAG layout,
    problems never cut), as ``step`` trains it and parallel-mode ``rollout`` samples it. The model
    is used in its current mode (call ``model.eval()`` first if it has dropout). Wrapped models as
    in ``step``: FSDP2 (every rank passes its own problems; the forwards run inside the root's
    hooks), DDP, torch.compile.

    Fill reference log-probs: ``ProblemRollout(..., trace_ref_logprobs=out.traces[p],
    agg_ref_logprobs=out.aggregations[p])``. Returns ``BatchLogprobs`` of CPU float32 tensors.
    """
    wrapped = unwrap(model)  # DDP, torch.compile, LoRA; an FSDP2 root's hooks run around each forward
    model = wrapped.model
    check_inputs(model, batch, config)
    traces = [[None] * len(pr.traces) for pr in batch.problems]
    aggregations = [[[None] * len(zs) for zs in pr.aggregations] for pr in batch.problems]
    parallel = config.aggregation == "parallel"
    with torch.no_grad(), fused_lora_linears(model):
        bins = micro_batches(batch, micro_batch_budget(model, config), all_traces=True, cut=not parallel)
        for b in range(forward_rounds(len(bins), wrapped.fsdp_root)):
            # b >= len(bins): a stand-in forward (result unused) joining the other ranks' FSDP2 all-gathers
            items = bins[min(b, len(bins) - 1)]
            slots, tokens, prompt_lens, contexts, limits = [], [], [], [], []
            for item in items:
                p, part = (item, None) if isinstance(item, int) else item
                pr = batch.problems[p]
                first_trace = len(tokens)  # x + y_i is row first_trace + i (parallel mode: items are whole)
                if part in (None, "traces"):
                    for i, y in enumerate(pr.traces):
                        slots.append((traces[p], i))
                        tokens.append(torch.cat([pr.prompt, y]))
                        prompt_lens.append(pr.prompt.numel())
                        contexts.append(None)
                        limits.append(pr.prompt.numel())  # each member trace is its own keys
                for j, zs in enumerate(pr.aggregations):
                    if part in (None, j):
                        for g, z in enumerate(zs):
                            slots.append((aggregations[p][j], g))
                            tokens.append(torch.cat([pr.agg_prompts[j], z]))
                            prompt_lens.append(pr.agg_prompts[j].numel())
                            contexts.append([first_trace + i for i in pr.sets[j]] if parallel else None)
                            limits.append(None)
            prompt_lens = torch.tensor(prompt_lens, dtype=torch.int64)
            logp, _, _ = within_forward(
                wrapped.fsdp_root,
                lambda: response_logprobs(
                    model,
                    tokens,
                    prompt_lens,
                    config,
                    contexts=contexts if parallel else None,
                    share_limits=limits if parallel else None,
                ),
            )
            if b >= len(bins):
                continue
            lens = [t.numel() - n for t, n in zip(tokens, prompt_lens.tolist())]
            for (row, k), lp in zip(slots, logp.float().cpu().split(lens)):
                row[k] = lp
    return BatchLogprobs(traces=traces, aggregations=aggregations)
