"""Per-token log-probs and entropies in plain PyTorch: the spec, the test oracle, the benchmark baseline.

These functions materialise the full [N, V] logits, so they are for small shapes (and for the
"naive" benchmark peer). Shapes: N tokens (any leading dims ``...``), H hidden, V vocab.

    z       = (hidden @ weight.T + bias) / temperature           [..., V]
    logp    = log_softmax(z)[target]                              [...]
    entropy = -sum_j p_j log p_j = lse(z) - sum_j p_j z_j         [...]

Positions whose target equals ``ignore_index`` give 0 for both (and, through ``torch.where``, no
gradient). Outputs are float32 unless ``dtype=torch.float64`` is asked for (the test truth).
"""

from __future__ import annotations

import torch


def _from_scaled_logits(
    z: torch.Tensor, targets: torch.Tensor, ignore_index: int, return_entropy: bool, out_dtype: torch.dtype
):
    valid = targets != ignore_index
    safe = torch.where(valid, targets, torch.zeros_like(targets))
    logsm = torch.log_softmax(z, dim=-1)
    logp = logsm.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    logp = torch.where(valid, logp, torch.zeros_like(logp)).to(out_dtype)
    if not return_entropy:
        return logp
    p = logsm.exp()
    # p * log p is 0 * -inf = nan where a logit is -inf (a masked vocabulary entry); its limit is 0.
    # Masking log p itself (not the product) keeps the backward free of 0 * inf too.
    plogp = p * torch.where(p > 0, logsm, torch.zeros_like(logsm))
    entropy = -plogp.sum(-1)
    entropy = torch.where(valid, entropy, torch.zeros_like(entropy)).to(out_dtype)
    return logp, entropy


def logprobs_from_logits_reference(
    logits, targets, *, temperature=1.0, ignore_index=-100, return_entropy=False, dtype=None
):
    """logits [..., V], targets [...] int64 -> logp [...] (and entropy [...]).

    Computed in ``dtype`` (default: the logits' dtype); returned in float32, or float64 when
    ``dtype`` is float64.
    """
    dtype = dtype or logits.dtype
    z = logits.to(dtype) / temperature
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return _from_scaled_logits(z, targets, ignore_index, return_entropy, out_dtype)


def token_logprobs_reference(
    hidden, weight, targets, *, temperature=1.0, ignore_index=-100, return_entropy=False, bias=None, dtype=None
):
    """hidden [..., H], weight [V, H], bias [V] or None, targets [...] -> logp [...] (and entropy).

    The logits are computed (and soft-maxed) in ``dtype`` (default: the hidden states' dtype),
    which is how plain PyTorch would run the op in that dtype; float64 gives the test truth.
    """
    dtype = dtype or hidden.dtype
    logits = hidden.to(dtype) @ weight.to(dtype).T
    if bias is not None:
        logits = logits + bias.to(dtype)
    return logprobs_from_logits_reference(
        logits, targets, temperature=temperature, ignore_index=ignore_index, return_entropy=return_entropy, dtype=dtype
    )
