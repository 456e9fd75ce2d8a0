"""An oracle of one SPIRAL training step that shares nothing with spiral_fast but the model.

Written from the formulas (docs/paper.md, the docstrings of ``SpiralConfig``,
``spiral_advantages`` and ``policy_loss``) in plain Python loops over problems, sets, responses
and tokens: no packing, no fused op, no shared helper of the package. Input: the keyword
arguments of each ``ProblemRollout`` (plain lists) and a config object, read field by field.

For one problem with traces y_i, sets S_j with responses z_jg and rewards r_jg:
- set value R_j = mean_g r_jg; set advantage A_j = adv(R_j among the problem's sets);
- aggregation advantage = adv(r_jg among its set's responses) (agg_baseline "set") or among all of
  the problem's responses ("problem");
- adv(x among group) = x - mean(group) ("grpo") or x - mean(other members) ("rloo"); with
  scale "std" divided by (unbiased std of the group + eps); 0 in a group of one;
- trace advantage = mean ("mean") or sum ("sum") of A_j over the sets holding the trace; a trace in
  no set is not trained;
- length gate L: a response with more than L tokens and a positive advantage gets 0;
- per token t of a response with advantage A: ratio = exp(logp - old) (old = logp detached when
  no behaviour log-prob is given); term = -ratio A, or the constant -(1 - eps_low) A when ratio <
  1 - eps_low and A < 0, or -(1 + eps_high) A when ratio > 1 + eps_high and A > 0 (PPO clip; no
  clip with clip None); plus kl_coef (exp(ref - logp) - (ref - logp) - 1);
- role loss = sum of terms / role's tokens ("token-mean"), mean over the role's sequences of the
  sequence's token mean ("seq-mean-token-mean"), sum / loss_constant ("constant", default the
  role's tokens); loss = trace_coef * trace loss + agg_coef * agg loss.
"""

from __future__ import annotations

import math

import torch


# --------------------------------------------------------------------------- advantages
def group_advantages(values: list, estimator: str, scale: str, eps: float) -> list:
    n = len(values)
    if n < 2:
        return [0.0] * n
    mean = sum(values) / n
    out = []
    for v in values:
        if estimator == "grpo":
            out.append(v - mean)
        else:
            out.append(v - (sum(values) - v) / (n - 1))
    if scale == "std":
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        out = [a / (std + eps) if std + eps > 0 else 0.0 for a in out]
    return out


def gate_lengths(config):
    """(trace L, aggregation L) of the length gate, None where there is none."""
    gate = config.length_gate
    if gate is None or isinstance(gate, int):
        return gate, gate
    return gate[0], gate[1]


def problem_advantages(pr: dict, config) -> dict:
    """{"trace": {i: A} (traces in some set), "agg": [[A per response] per set], "set_value": [R_j],
    "gated": responses whose advantage the gate zeroed, "gate_ambiguous": long responses whose
    advantage is positive by rounding only, "responses": trained responses}."""
    est, scale, eps = config.estimator, config.scale, config.eps
    rewards = pr["rewards"]
    set_value = [sum(rs) / len(rs) for rs in rewards]
    set_adv = group_advantages(set_value, est, scale, eps)
    if config.agg_baseline == "set":
        agg = [group_advantages(list(rs), est, scale, eps) for rs in rewards]
    else:
        flat = group_advantages([r for rs in rewards for r in rs], est, scale, eps)
        agg, k = [], 0
        for rs in rewards:
            agg.append(flat[k : k + len(rs)])
            k += len(rs)
    trace = {}
    for i in range(len(pr["traces"])):
        credits = [set_adv[j] for j, s in enumerate(pr["sets"]) if i in s]
        if credits:
            trace[i] = sum(credits) / len(credits) if config.trace_credit == "mean" else sum(credits)
    trace_L, agg_L = gate_lengths(config)
    counts = dict(gated=0, gate_ambiguous=0)

    def gate(a: float, length: int, limit) -> float:
        if limit is None or length <= limit or a <= 0:
            return a
        if a < ZERO:  # positive only by rounding: gated or not, both are right
            counts["gate_ambiguous"] += 1
            return a
        counts["gated"] += 1
        return 0.0

    trace = {i: gate(a, len(pr["traces"][i]), trace_L) for i, a in trace.items()}
    agg = [[gate(a, len(z), agg_L) for a, z in zip(advs, zs)] for advs, zs in zip(agg, pr["aggregations"])]
    responses = len(trace) + sum(len(zs) for zs in pr["aggregations"])
    return dict(trace=trace, agg=agg, set_value=set_value, responses=responses, **counts)


# --------------------------------------------------------------------------- sequences, log-probs
def trained_sequences(problems: list, config) -> tuple[list, list, list]:
    """(trace-role sequences, aggregator-role sequences, per-problem advantages); a sequence is a
    dict of prompt, response (lists), adv, old, ref (lists of floats or None)."""
    traces, aggs, advs = [], [], []
    for pr in problems:
        adv = problem_advantages(pr, config)
        advs.append(adv)
        for i, y in enumerate(pr["traces"]):
            if i in adv["trace"]:
                traces.append(
                    dict(
                        prompt=pr["prompt"],
                        response=y,
                        adv=adv["trace"][i],
                        old=pr["trace_old_logprobs"][i] if pr.get("trace_old_logprobs") else None,
                        ref=pr["trace_ref_logprobs"][i] if pr.get("trace_ref_logprobs") else None,
                    )
                )
        for j, zs in enumerate(pr["aggregations"]):
            for g, z in enumerate(zs):
                aggs.append(
                    dict(
                        prompt=pr["agg_prompts"][j],
                        response=z,
                        adv=adv["agg"][j][g],
                        old=pr["agg_old_logprobs"][j][g] if pr.get("agg_old_logprobs") else None,
                        ref=pr["agg_ref_logprobs"][j][g] if pr.get("agg_ref_logprobs") else None,
                    )
                )
    return traces, aggs, advs


def response_logprobs(model, prompt: list, response: list, temperature: float):
    """Log-probs [len(response)] (float64, differentiable) and entropies (detached) of the response
    tokens under the model at a temperature: one plain forward of prompt + response, full logits."""
    device = model.get_output_embeddings().weight.device
    ids = torch.tensor([list(prompt) + list(response)], device=device)
    logits = model(input_ids=ids).logits[0].double()
    # position k predicts token k + 1: the response's tokens are predicted by rows P-1 .. P+L-2
    rows = torch.log_softmax(logits[len(prompt) - 1 : -1] / temperature, dim=-1)
    logp = rows.gather(1, torch.tensor(response, device=device)[:, None])[:, 0]
    entropy = -(rows.exp() * rows).sum(-1).detach()
    return logp.cpu(), entropy.cpu()


# --------------------------------------------------------------------------- loss and metrics
ZERO = 1e-9  # an advantage this small is 0 up to rounding: its tokens have no defined clip side


def role_loss(seqs: list, config, stats: dict):
    """The role's normalised loss (differentiable 0-dim float64); adds token stats to ``stats``."""
    tokens = sum(len(s["response"]) for s in seqs)
    lo, hi = config.clip if config.clip is not None else (math.inf, math.inf)
    total = torch.zeros((), dtype=torch.float64)
    for s in seqs:
        a, lp = s["adv"], s["logp"]
        old = lp.detach() if s["old"] is None else torch.tensor(s["old"], dtype=torch.float64)
        ratio = torch.exp(lp - old)
        below, above = ratio.detach() < 1 - lo, ratio.detach() > 1 + hi
        # PPO's min(ratio A, clamp(ratio) A): the clamped constant where it is the smaller term
        low, high = below & (a < 0), above & (a > 0)
        term = torch.where(
            low, torch.full_like(lp, -(1 - lo) * a), torch.where(high, torch.full_like(lp, -(1 + hi) * a), -ratio * a)
        )
        if abs(a) < ZERO:
            stats["clip_ambiguous"] += int((below | above).sum())
        else:
            stats["clip_low"] += int(low.sum())
            stats["clip_high"] += int(high.sum())
        stats["ratio"] += ratio.sum().item()
        if config.kl_coef > 0:
            delta = torch.tensor(s["ref"], dtype=torch.float64) - lp
            k3 = torch.exp(delta) - delta - 1
            term = term + config.kl_coef * k3
            stats["kl"] += k3.sum().item()
        stats["entropy"] += s["entropy"].sum().item()
        if config.normalizer == "seq-mean-token-mean":
            total = total + term.sum() / len(s["response"]) / len(seqs)
        elif config.normalizer == "token-mean":
            total = total + term.sum() / tokens
        else:
            total = total + term.sum() / (config.loss_constant if config.loss_constant is not None else tokens)
    return total


def oracle_step(model, problems: list, config) -> tuple[torch.Tensor, dict]:
    """(loss: differentiable 0-dim float64 tensor, metrics dict of floats) of the whole batch;
    ``loss.backward()`` gives the oracle's gradients. clip_ambiguous: tokens outside the clip range
    whose advantage is 0 up to rounding (counted as clipped on either side, or neither)."""
    traces, aggs, advs = trained_sequences(problems, config)
    for s in traces + aggs:
        s["logp"], s["entropy"] = response_logprobs(model, s["prompt"], s["response"], config.temperature)
    stats = dict(clip_low=0, clip_high=0, clip_ambiguous=0, ratio=0.0, kl=0.0, entropy=0.0)
    zero = torch.zeros((), dtype=torch.float64)
    trace_loss = config.trace_coef * role_loss(traces, config, stats) if traces else zero
    agg_loss = config.agg_coef * role_loss(aggs, config, stats) if aggs else zero
    trace_tokens = sum(len(s["response"]) for s in traces)
    agg_tokens = sum(len(s["response"]) for s in aggs)
    tokens = trace_tokens + agg_tokens
    rewards = [r for pr in problems for rs in pr["rewards"] for r in rs]
    set_values = [v for adv in advs for v in adv["set_value"]]
    metrics = {
        "loss": (trace_loss + agg_loss).item(),
        "trace_loss": trace_loss.item(),
        "agg_loss": agg_loss.item(),
        "agg_reward_mean": sum(rewards) / len(rewards),
        "set_value_mean": sum(set_values) / len(set_values),
        "clip_frac_low": stats["clip_low"] / tokens,
        "clip_frac_high": stats["clip_high"] / tokens,
        "clip_frac": (stats["clip_low"] + stats["clip_high"]) / tokens,
        "ratio_mean": stats["ratio"] / tokens,
        "kl_mean": stats["kl"] / tokens,
        "entropy_mean": stats["entropy"] / tokens,
        "tokens_trained": float(tokens),
        "trace_tokens": float(trace_tokens),
        "agg_tokens": float(agg_tokens),
        "clip_ambiguous": float(stats["clip_ambiguous"]),
        "gated_frac": sum(a["gated"] for a in advs) / sum(a["responses"] for a in advs),
        "gate_ambiguous_frac": sum(a["gate_ambiguous"] for a in advs) / sum(a["responses"] for a in advs),
    }
    return trace_loss + agg_loss, metrics
