"""Parallel-encoded aggregation sampling with a Hugging Face model: the aggregator reads its set's
traces as keys and values (merged KV caches), never as a re-encoded text prompt.

For problem x with traces y_i and set S_j: one forward of every x + y_i gives the traces' caches
(x's keys and values are the same in every row: taken from the set's first member). Each
aggregation row's cache is x's followed by those of y_i, i in S_j, in the set's order (the order does
not matter: attention with fixed positions is invariant to it). The head h_j is prefilled at positions
p_j = |x| + max_{i in S_j} |y_i| on, then z is sampled token by token at the following positions: the
semantics that ``SpiralConfig(aggregation="parallel")`` trains (``batch_logprobs`` scores it).
"""

from __future__ import annotations

import inspect

import torch


def _cache_name(model) -> str:
    """transformers renamed the forward's `past_key_values` to `cache` (5.2x); both exist in the field."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(out):
    return out["cache"] if "cache" in out else out["past_key_values"]


def check_parallel_args(
    model, prompts, template, agg_head, engine: str, max_new_tokens: int, agg_max_new_tokens: int
) -> list[int]:
    """The head as a list of ints, or ValueError: a template, an empty or non-integer head, the vLLM
    engine, or positions that could pass the model's max_position_embeddings."""
    if engine != "hf":
        raise ValueError(
            f"aggregation='parallel' needs engine='hf', got engine={engine!r}: vLLM cannot merge "
            "the traces' KV caches into one aggregation context"
        )
    if template is not None:
        raise ValueError(
            "aggregation='parallel' renders no aggregation prompt: pass template=None and the "
            f"head as agg_head, got template={template!r}"
        )
    if agg_head is None or isinstance(agg_head, (str, bytes)) or not hasattr(agg_head, "__len__") or not agg_head:
        raise ValueError(f"agg_head must be a non-empty list of token ids for aggregation='parallel', got {agg_head!r}")
    head = list(agg_head.tolist() if isinstance(agg_head, torch.Tensor) else agg_head)
    if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in head):
        raise ValueError(f"agg_head must hold token ids (ints >= 0), got {agg_head!r}")
    max_pos = getattr(model.config, "max_position_embeddings", None)
    longest = max(map(len, prompts)) + max_new_tokens + len(head) + agg_max_new_tokens
    if max_pos is not None and longest > max_pos:
        raise ValueError(
            f"aggregation='parallel' may reach position {longest - 1} (|x| {max(map(len, prompts))} + "
            f"max_new_tokens {max_new_tokens} + agg_head {len(head)} + agg_max_new_tokens "
            f"{agg_max_new_tokens}), past the model's max_position_embeddings={max_pos}"
        )
    return head


def _trace_caches(model, prompts: list[list[int]], traces: list[list[int]], num_traces: int, pad_token_id: int):
    """Per layer (keys, values) [R, Hkv, L, D] of one right-padded forward of every x + y_i (row
    p * num_traces + i): right padding leaves each row's real tokens and positions untouched."""
    rows = [prompts[r // num_traces] + y for r, y in enumerate(traces)]
    width = max(map(len, rows))
    device = next(model.parameters()).device
    ids = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    out = model(input_ids=ids, attention_mask=mask, use_cache=True)
    return [(layer.keys, layer.values) for layer in _cache_of(out).layers]


def sample_parallel_hf(
    model,
    prompts: list[list[int]],
    traces: list[list[int]],
    sets: list[list[tuple]],
    head: list[int],
    num_samples: int,
    *,
    max_new_tokens: int,
    temperature: float,
    eos_token_id,
    pad_token_id: int,
    logprobs: bool,
):
    """num_samples aggregation responses per set over merged trace caches, all sets in one batch.

    prompts [P] x; traces [P * N] y (row p * N + i); sets[p]: M tuples of trace indices; head: h.
    Returns (responses, logprobs) in (problem, set, sample) order, as ``sample_hf``: token ids up to
    and including EOS; log-probs under softmax(logits / temperature), or None.
    """
    from transformers import DynamicCache

    num_traces = len(traces) // len(prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            caches = _trace_caches(model, prompts, traces, num_traces, pad_token_id)
            # each aggregation row: (trace rows, their token spans) as [(row, start, end)], and p_j
            rows, starts = [], []
            for p, x in enumerate(prompts):
                for s in sets[p]:
                    first = p * num_traces + s[0]
                    spans = [(first, 0, len(x))]
                    spans += [(p * num_traces + i, len(x), len(x) + len(traces[p * num_traces + i])) for i in s]
                    for _ in range(num_samples):
                        rows.append(spans)
                        starts.append(max(end for _, _, end in spans))
            ctx_len = [sum(e - b for _, b, e in spans) for spans in rows]
            width = max(ctx_len)

            def merged(t: torch.Tensor) -> torch.Tensor:
                # [B, Hkv, width, D]: each row's spans concatenated, zero-padded at the end (masked)
                out = t.new_zeros(len(rows), t.shape[1], width, t.shape[3])
                for r, spans in enumerate(rows):
                    out[r, :, : ctx_len[r]] = torch.cat([t[row, :, b:e] for row, b, e in spans], dim=1)
                return out

            cache = DynamicCache(ddp_cache_data=[(merged(k), merged(v)) for k, v in caches])
            mask = torch.tensor([[1] * n + [0] * (width - n) for n in ctx_len], device=device)
            pos = torch.tensor(starts, device=device)[:, None]
            step_ids = torch.tensor([head] * len(rows), device=device)
            step_pos = pos + torch.arange(len(head), device=device)
            cache_kwarg = _cache_name(model)
            tokens, token_lp = [], []
            done = torch.zeros(len(rows), dtype=torch.bool, device=device)
            for _ in range(max_new_tokens):
                mask = torch.cat([mask, mask.new_ones(len(rows), step_ids.shape[1])], dim=1)
                out = model(
                    input_ids=step_ids,
                    position_ids=step_pos,
                    attention_mask=mask,
                    use_cache=True,
                    **{cache_kwarg: cache},
                )
                cache = _cache_of(out)
                lsm = torch.log_softmax(out.logits[:, -1].float() / temperature, dim=-1)
                nxt = torch.multinomial(lsm.exp(), 1)  # plain sampling: the policy the step trains
                tokens.append(nxt[:, 0])
                token_lp.append(lsm.gather(1, nxt)[:, 0])
                if eos_token_id is not None:
                    done |= nxt[:, 0] == eos_token_id
                    if bool(done.all()):
                        break
                step_ids, step_pos = nxt, step_pos[:, -1:] + 1
    finally:
        model.train(was_training)
    tokens = torch.stack(tokens, 1).cpu().tolist()
    token_lp = torch.stack(token_lp, 1).cpu()
    responses, lps = [], [] if logprobs else None
    for r, seq in enumerate(tokens):
        n = seq.index(eos_token_id) + 1 if eos_token_id is not None and eos_token_id in seq else len(seq)
        responses.append(seq[:n])
        if logprobs:
            lps.append(token_lp[r, :n].tolist())
    return responses, lps
