"""Sampling with a Hugging Face causal LM: ``sample_hf`` through ``generate`` (the reference) and
``sample_decode``, its faster twin (one prefill per distinct prompt, a plain decode loop); both draw
tokens by ``draw_tokens`` from the same uniforms, so they sample the same tokens."""

from __future__ import annotations

import hashlib
import inspect

import torch

from spiral_fast.models.lora import unwrap_peft


def _trim(tokens: list[int], eos_token_id: int | None) -> int:
    """Length of a sampled response: up to and including the first EOS (what follows is padding)."""
    if eos_token_id is not None and eos_token_id in tokens:
        return tokens.index(eos_token_id) + 1
    return len(tokens)


def row_seed(seed: int, *parts) -> int:
    """A 63-bit seed derived from ``seed`` and ``parts`` (e.g. the sample index): the same on every
    process and in any batch."""
    return int(hashlib.sha256("/".join(map(str, (seed,) + parts)).encode()).hexdigest()[:15], 16)


def draw_tokens(logits, temperature: float, uniforms):
    """One token per row of ``logits`` [rows, V], drawn from softmax(logits / T) by inverse CDF:
    token = the first index whose cumulative probability exceeds u * total, u = ``uniforms`` [rows]
    (float64, in [0, 1)). Exactly a sample of the softmax (no top-k / top-p), and the draw of a row
    depends only on its own logits and its own u. Returns (tokens [rows] int64, logprobs [rows]
    float32: log softmax(logits / T) at the token, computed from the raw logits: NaN / inf logits
    give -inf, so a step on them is skipped). Non-finite logits are drawn as transformers'
    ``remove_invalid_values`` makes them (NaN -> 0, +-inf -> the float extremes)."""
    z = logits.float() / temperature
    finite = bool(torch.isfinite(z).all())
    clean = z if finite else torch.where(z != z, 0.0, z).clamp(torch.finfo(z.dtype).min, torch.finfo(z.dtype).max)
    clean = clean.double() if not finite else clean  # the float extremes overflow float32 sums
    probs = (clean - clean.amax(-1, keepdim=True)).exp()
    # float64 cumulative sum: a float32 one over ~50k entries is off by up to ~1e-3 of the mass
    cdf = probs.double().cumsum(-1)
    target = uniforms.to(cdf.device, torch.float64)[:, None] * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, target, right=True)[:, 0].clamp_max(z.shape[-1] - 1)
    lp = z.gather(-1, tokens[:, None])[:, 0] - z.logsumexp(-1)
    if not finite:
        lp = lp.nan_to_num(nan=float("-inf"), posinf=float("-inf"))
    return tokens, lp


class Uniforms:
    """One uniform per row per decode step: from each row's own generator (seeded rows) or from
    torch's global RNG (``generators=None``). Both samplers below draw from it in the same order."""

    def __init__(self, rows: int, generators: list | None):
        self.rows, self.generators = rows, generators

    def __call__(self):
        if self.generators is None:
            return torch.rand(self.rows, dtype=torch.float64)
        return torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators])


def _uniforms(prompts, num_samples, seeds) -> Uniforms:
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"seeds must give one seed per prompt ({len(prompts)}), got {len(seeds)}")
    rows = len(prompts) * num_samples
    if seeds is None:
        return Uniforms(rows, None)
    return Uniforms(
        rows, [torch.Generator().manual_seed(row_seed(seed, s)) for seed in seeds for s in range(num_samples)]
    )


class CDFSampler:
    """A transformers logits processor that draws each row's next token with ``draw_tokens`` (under
    greedy decoding, ``do_sample=False``, its one-hot scores make generate take that token): plain
    sampling at T whose draws come from ``Uniforms`` (per-row seeds: a problem's samples are the
    same whatever the batch, up to the float rounding of a differently shaped forward)."""

    def __init__(self, uniforms: Uniforms, temperature: float):
        self.uniforms, self.temperature = uniforms, temperature

    def __call__(self, input_ids, scores):
        chosen, _ = draw_tokens(scores, self.temperature, self.uniforms())
        return torch.full_like(scores, float("-inf")).scatter_(-1, chosen[:, None], 0.0)


def sample_hf(
    model,
    prompts: list[list[int]],
    num_samples: int,
    *,
    max_new_tokens: int,
    temperature: float,
    eos_token_id,
    pad_token_id: int,
    logprobs: bool,
    seeds: list[int] | None = None,
):
    """num_samples responses per prompt with HF generate, all prompts in one left-padded batch (the
    reference of ``sample_decode``, and the path for models it does not run).

    seeds: None draws from torch's global RNG; one int per prompt makes each response a function of
    its prompt's seed and its index alone (``Uniforms``), whatever else is in the batch. Returns
    (responses, logprobs): responses[p * num_samples + s] token ids; logprobs per response token
    under softmax(logits / temperature) (the policy the step trains), or None.
    """
    from transformers import GenerationConfig, LogitsProcessorList

    uniforms = _uniforms(prompts, num_samples, seeds)
    device = next(model.parameters()).device
    ids, mask, width = _left_padded([p for p in prompts for _ in range(num_samples)], pad_token_id, device)
    # do_sample=False with CDFSampler's one-hot scores: plain sampling at the temperature (no top-k,
    # no top-p), so the behaviour policy is exactly softmax(logits / T) and the log-probs below are
    # its own. remove_invalid_values: inf/NaN logits (diverged weights) are made finite for the draw
    # instead of failing it; their log-probs stay non-finite, so the step that trains on them is
    # skipped (``policy_step.optimizer.finish``).
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        return_dict_in_generate=True,
        output_logits=logprobs,
        remove_invalid_values=True,
        do_sample=False,
        num_beams=1,
    )
    processors = LogitsProcessorList([CDFSampler(uniforms, temperature)])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=mask, generation_config=config, logits_processor=processors
            )
    finally:
        model.train(was_training)
    new = out.sequences[:, width:]
    token_lp = None
    if logprobs:
        # [rows, steps] log-prob of each sampled token; float32 whatever the model dtype.
        logits = torch.stack(out.logits, dim=1).float() / temperature
        token_lp = logits.log_softmax(-1).gather(-1, new[..., None])[..., 0].cpu()
        # NaN logits (diverged weights): the token had no defined probability; -inf keeps the batch
        # valid (batches refuse NaN) and the step on it non-finite, so it is skipped
        token_lp = token_lp.nan_to_num(nan=float("-inf"), posinf=float("-inf"))
    return _split(new.cpu(), token_lp, eos_token_id)


def _left_padded(rows: list[list[int]], pad_token_id: int, device):
    """Left padding: every row's last prompt token sits in the last column, where generation starts."""
    width = max(len(p) for p in rows)
    ids = torch.tensor([[pad_token_id] * (width - len(p)) + p for p in rows], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows], device=device)
    return ids, mask, width


def _split(tokens, token_lp, eos_token_id):
    """Per-row responses (up to the first EOS) and their log-probs from [rows, steps] blocks."""
    responses, lps = [], [] if token_lp is not None else None
    for r, row in enumerate(tokens.tolist()):
        n = _trim(row, eos_token_id)
        responses.append(row[:n])
        if token_lp is not None:
            lps.append(token_lp[r, :n].tolist())
    return responses, lps


def decodable(model) -> bool:
    """Whether ``sample_decode`` runs ``model``: a transformers causal LM (or a LoRA PeftModel,
    run as its wrapped model) whose forward takes a cache, position ids and ``logits_to_keep``."""
    try:
        net = unwrap_peft(model)
    except ValueError:
        return False
    params = inspect.signature(net.forward).parameters
    return ("past_key_values" in params or "cache" in params) and all(
        k in params for k in ("position_ids", "logits_to_keep", "attention_mask")
    )


def _cache_of(out):
    """The KV cache a forward returned (``cache`` from transformers 5.25 on, else ``past_key_values``)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def sample_decode(
    model,
    prompts: list[list[int]],
    num_samples: int,
    *,
    max_new_tokens: int,
    temperature: float,
    eos_token_id,
    pad_token_id: int,
    logprobs: bool,
    seeds: list[int] | None = None,
):
    """``sample_hf`` without ``generate``: the same draws (``Uniforms``, ``draw_tokens``) and the same
    returns, faster on a CPU (measured in scripts/profile_rollout.py):

    - each distinct prompt is prefilled once, then its KV cache is repeated ``num_samples`` times
      (generate prefills every sample's copy of the prompt: G times the same aggregation prompt);
    - only the last position's logits are computed ([rows, V] per step);
    - the log-prob of the drawn token is taken at each step (no [rows, steps, V] logits kept);
    - the loop stops when every row has sampled EOS.
    Shapes: prompts P lists of token ids; rows = P * num_samples, ordered as ``sample_hf``'s.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    uniforms = _uniforms(prompts, num_samples, seeds)
    net = unwrap_peft(model)  # a PeftModel's wrapped model runs its adapters
    # transformers 5.25 renamed the cache argument (past_key_values warns there); 5.19 knows only the old name
    cache_arg = "cache" if "cache" in inspect.signature(net.forward).parameters else "past_key_values"
    device = next(net.parameters()).device
    ids, mask, _ = _left_padded(prompts, pad_token_id, device)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    rows = len(prompts) * num_samples
    tokens = torch.full((rows, max_new_tokens), pad_token_id, dtype=torch.long)
    token_lp = torch.zeros(rows, max_new_tokens) if logprobs else None
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
            cache, logits = _cache_of(out), out.logits[:, -1]
            if num_samples > 1:  # [P, ...] -> [P * n, ...], each prompt's rows together
                cache.batch_repeat_interleave(num_samples)
                logits = logits.repeat_interleave(num_samples, 0)
                mask = mask.repeat_interleave(num_samples, 0)
                positions = positions.repeat_interleave(num_samples, 0)
            position = positions[:, -1:] + 1
            one = torch.ones(rows, 1, dtype=mask.dtype, device=device)
            for t in range(max_new_tokens):
                tok, lp = draw_tokens(logits, temperature, uniforms())
                tok = tok.masked_fill(done, pad_token_id)  # what generate gives a finished row
                tokens[:, t] = tok.cpu()
                if logprobs:
                    token_lp[:, t] = lp.cpu()
                if eos_token_id is not None:
                    done |= tok == eos_token_id
                if t == max_new_tokens - 1 or bool(done.all()):
                    break
                mask = torch.cat([mask, one], 1)
                out = net(
                    input_ids=tok[:, None],
                    attention_mask=mask,
                    position_ids=position,
                    use_cache=True,
                    logits_to_keep=1,
                    **{cache_arg: cache},
                )
                cache, logits = _cache_of(out), out.logits[:, -1]
                position = position + 1
    finally:
        net.train(was_training)
    return _split(tokens, token_lp, eos_token_id)
