"""Sampling through Hugging Face ``generate``."""
from __future__ import annotations

import torch


def _trim(tokens: list[int], eos_token_id: int | None) -> int:
    """Length of a sampled response: up to and including the first EOS (what follows is padding)."""
    if eos_token_id is not None and eos_token_id in tokens:
        return tokens.index(eos_token_id) + 1
    return len(tokens)


def sample_hf(model, prompts: list[list[int]], num_samples: int, *, max_new_tokens: int,
               temperature: float, eos_token_id, pad_token_id: int, logprobs: bool):
    """num_samples responses per prompt with HF generate, all prompts in one left-padded batch.

    Returns (responses, logprobs): responses[p * num_samples + s] token ids; logprobs per response
    token under softmax(logits / temperature) (the policy the step trains), or None.
    """
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    rows = [p for p in prompts for _ in range(num_samples)]
    # Left padding: every row's last prompt token sits in the last column, where generation starts.
    ids = torch.tensor([[pad_token_id] * (width - len(p)) + p for p in rows], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows], device=device)
    # top_k=0 / top_p=1.0: plain sampling at the temperature, so the behaviour policy is exactly
    # softmax(logits / T) and the log-probs below are its own. remove_invalid_values: inf/NaN logits
    # (diverged weights) are made finite for the draw instead of failing it; their log-probs stay
    # non-finite, so the step that trains on them is skipped (``policy_step.optimizer.finish``).
    config = GenerationConfig(do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                              max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                              pad_token_id=pad_token_id, return_dict_in_generate=True,
                              output_logits=logprobs, remove_invalid_values=True)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    finally:
        model.train(was_training)
    new = out.sequences[:, width:]
    responses, lps = [], [] if logprobs else None
    if logprobs:
        # [rows, steps] log-prob of each sampled token; float32 whatever the model dtype.
        logits = torch.stack(out.logits, dim=1).float() / temperature
        token_lp = logits.log_softmax(-1).gather(-1, new[..., None])[..., 0].cpu()
        # NaN logits (diverged weights): the token had no defined probability; -inf keeps the batch
        # valid (batches refuse NaN) and the step on it non-finite, so it is skipped
        token_lp = token_lp.nan_to_num(nan=float("-inf"), posinf=float("-inf"))
    new = new.cpu().tolist()
    for r, tokens in enumerate(new):
        n = _trim(tokens, eos_token_id)
        responses.append(tokens[:n])
        if logprobs:
            lps.append(token_lp[r, :n].tolist())
    return responses, lps
