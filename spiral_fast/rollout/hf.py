"""Sampling through Hugging Face ``generate``."""
from __future__ import annotations

import hashlib

import torch


def _trim(tokens: list[int], eos_token_id: int | None) -> int:
    """Length of a sampled response: up to and including the first EOS (what follows is padding)."""
    if eos_token_id is not None and eos_token_id in tokens:
        return tokens.index(eos_token_id) + 1
    return len(tokens)


def row_seed(seed: int, *parts) -> int:
    """A 63-bit seed derived from ``seed`` and ``parts`` (e.g. the sample index): the same on every
    process and in any batch."""
    return int(hashlib.sha256("/".join(map(str, (seed,) + parts)).encode()).hexdigest()[:15], 16)


class GumbelSampler:
    """A transformers logits processor that draws each row's next token with its own generator.

    argmax(logits / T + g), g ~ Gumbel(0, 1) i.i.d., is a sample of softmax(logits / T) (the Gumbel-max
    trick). Under greedy decoding (``do_sample=False``) this turns generate into plain sampling at T
    whose draws depend only on each row's seed, not on which other rows share the batch: a problem's
    samples are then the same whatever the batch (the world size, the round's other problems), up to
    the float rounding of a differently shaped forward.
    """

    def __init__(self, seeds: list[int], temperature: float):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = temperature

    def __call__(self, input_ids, scores):
        # [rows, V] noise, one row per generator, on the CPU (generators are CPU generators), then moved
        noise = torch.stack([torch.rand(scores.shape[-1], generator=g, dtype=torch.float64) for g in self.generators])
        gumbel = -torch.log(-torch.log(noise.clamp_min(1e-300)))  # float64: no -inf from log(0) at u -> 0
        scores = scores.float() / self.temperature + gumbel.to(scores.device, torch.float32)
        # only the argmax matters (greedy): a one-hot row keeps the chosen token and nothing else
        chosen = scores.argmax(-1, keepdim=True)
        return torch.full_like(scores, float("-inf")).scatter_(-1, chosen, 0.0)


def sample_hf(model, prompts: list[list[int]], num_samples: int, *, max_new_tokens: int,
              temperature: float, eos_token_id, pad_token_id: int, logprobs: bool, seeds: list[int] | None = None):
    """num_samples responses per prompt with HF generate, all prompts in one left-padded batch.

    seeds: None draws from torch's global RNG (HF's multinomial sampling); one int per prompt makes
    each response a function of its prompt's seed and its index alone (``GumbelSampler``), whatever
    else is in the batch. Returns (responses, logprobs): responses[p * num_samples + s] token ids;
    logprobs per response token under softmax(logits / temperature) (the policy the step trains), or None.
    """
    from transformers import GenerationConfig, LogitsProcessorList

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
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"seeds must give one seed per prompt ({len(prompts)}), got {len(seeds)}")
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if seeds is None else \
        dict(do_sample=False, num_beams=1)  # GumbelSampler draws; greedy keeps its one-hot choice
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                              pad_token_id=pad_token_id, return_dict_in_generate=True,
                              output_logits=logprobs, remove_invalid_values=True, **sampling)
    processors = LogitsProcessorList()
    if seeds is not None:
        processors.append(GumbelSampler([row_seed(seed, s) for seed in seeds for s in range(num_samples)],
                                        temperature))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                 logits_processor=processors)
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
