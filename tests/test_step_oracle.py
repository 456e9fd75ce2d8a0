"""spiral_fast.step and step_reference against an independent oracle (tests/step_oracle.py: plain
loops from the formulas, sharing nothing with the package but the model): loss, every parameter's
gradient and the metrics, for every normaliser, both role coefficients != 1, KL, temperature,
behaviour log-probs and every advantage option.

``step`` and ``step_reference`` share the advantages, normalisers, role losses and metrics of
``spiral_fast/policy_step/`` (advantages.py, counts.py, losses.py, metrics.py); only an outside
oracle sees a bug there."""

from __future__ import annotations

import math
import random

import pytest
import torch
from step_oracle import oracle_step
from training_cases import assert_grads_close, grads, random_problem_kwargs, tiny_model

import spiral_fast
from spiral_fast import ProblemRollout, SpiralBatch, SpiralConfig


def f32(values):
    """Round log-probs to float32 as ProblemRollout stores them: oracle and step read the same numbers."""
    if isinstance(values, list):
        return [f32(v) for v in values]
    return float(torch.tensor(values, dtype=torch.float32))


def problems(seed: int, count: int, **kw) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        pr = random_problem_kwargs(rng, **kw)
        out.append({k: f32(v) if k.endswith("logprobs") else v for k, v in pr.items()})
    return out


def batch_of(prs: list[dict]) -> SpiralBatch:
    return SpiralBatch([ProblemRollout(**pr) for pr in prs])


CASES = [
    # (id, model, lm_bias, batch kwargs, config kwargs)
    ("defaults", "qwen2", False, dict(max_g=3), {}),
    (
        "token-mean-coefs-temperature-old",
        "llama",
        False,
        dict(max_g=3, old=True),
        dict(temperature=0.7, agg_coef=0.5, trace_coef=2.0, estimator="grpo", scale="std", normalizer="token-mean"),
    ),
    (
        "seq-mean-kl-rloo-std-sum",
        "qwen2",
        True,
        dict(max_g=3, old=True, ref=True),
        dict(
            kl_coef=0.1,
            normalizer="seq-mean-token-mean",
            estimator="rloo",
            scale="std",
            trace_credit="sum",
            agg_coef=1.5,
            trace_coef=0.25,
        ),
    ),
    (
        "constant-64-rloo-none",
        "qwen2",
        False,
        dict(max_g=3),
        dict(
            normalizer="constant",
            loss_constant=64.0,
            estimator="rloo",
            scale="none",
            trace_credit="mean",
            agg_coef=0.3,
            trace_coef=3.0,
        ),
    ),
    (
        "constant-default-asymmetric-clip-grpo-none",
        "llama",
        False,
        dict(max_g=2, old=True, ref=True),
        dict(
            normalizer="constant",
            clip=(0.1, 0.05),
            estimator="grpo",
            scale="none",
            kl_coef=0.02,
            agg_coef=2.0,
            trace_coef=0.5,
            temperature=1.3,
        ),
    ),
    (
        "micro-batches-cut",
        "qwen2",
        False,
        dict(max_g=3, old=True),
        dict(max_tokens_per_micro_batch=25, agg_coef=0.7, trace_coef=1.9, scale="std", trace_credit="sum"),
    ),
    (
        "agg-baseline-set",
        "qwen2",
        False,
        dict(max_g=3, old=True),
        dict(agg_baseline="set", estimator="grpo", scale="std", agg_coef=0.6, trace_coef=1.4),
    ),
    (
        "agg-baseline-problem",
        "llama",
        False,
        dict(max_g=3),
        dict(agg_baseline="problem", estimator="rloo", scale="none", agg_coef=1.2, trace_coef=0.8),
    ),
    ("length-gate-int", "qwen2", False, dict(max_g=3), dict(length_gate=3, scale="none", agg_coef=0.9, trace_coef=1.1)),
    (
        "length-gate-pair",
        "llama",
        False,
        dict(max_g=3, old=True),
        dict(length_gate=(2, 4), estimator="rloo", scale="std", normalizer="seq-mean-token-mean"),
    ),
    (
        "no-clip-token-sum",
        "qwen2",
        False,
        dict(max_g=3, old=True),
        dict(clip=None, normalizer="constant", loss_constant=1.0, agg_coef=0.4, trace_coef=2.5, length_gate=(None, 2)),
    ),
]

EXACT = ("tokens_trained", "trace_tokens", "agg_tokens")
CLIP = ("clip_frac_low", "clip_frac_high", "clip_frac")
CLOSE = ("loss", "trace_loss", "agg_loss", "agg_reward_mean", "set_value_mean", "ratio_mean", "kl_mean", "entropy_mean")


def run_step(fn, model, batch, config):
    model.zero_grad(set_to_none=True)
    out = fn(model, batch, config=config)
    return out, grads(model)


def run_oracle(model, prs, config):
    model.zero_grad(set_to_none=True)
    loss, metrics = oracle_step(model, prs, config)
    loss.backward()
    return loss.item(), metrics, grads(model)


@pytest.mark.parametrize("fn", [spiral_fast.step, spiral_fast.step_reference], ids=["step", "reference"])
@pytest.mark.parametrize("kind,lm_bias,batch_kw,config_kw", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_step_matches_oracle(fn, kind, lm_bias, batch_kw, config_kw):
    model = tiny_model(kind, lm_bias=lm_bias)
    prs = problems(len(config_kw) * 7 + batch_kw["max_g"], 3, **batch_kw)
    config = SpiralConfig(**config_kw)
    out, g = run_step(fn, model, batch_of(prs), config)
    loss, want, g_want = run_oracle(model, prs, config)

    assert math.isclose(out.loss.item(), loss, rel_tol=1e-5, abs_tol=1e-7), (out.loss.item(), loss)
    assert_grads_close(g, g_want, rel=1e-4)
    for key in EXACT:
        assert math.isclose(out.metrics[key], want[key], rel_tol=1e-9, abs_tol=1e-12), (
            key,
            out.metrics[key],
            want[key],
        )
    for key in CLIP:  # token counts; a 0-advantage token outside the range may count on either side
        slack = want["clip_ambiguous"] / want["tokens_trained"]
        assert abs(out.metrics[key] - want[key]) <= slack + 1e-12, (key, out.metrics[key], want[key], slack)
    for key in CLOSE:
        assert math.isclose(out.metrics[key], want[key], rel_tol=1e-5, abs_tol=1e-7), (key, out.metrics[key], want[key])
    assert abs(out.metrics["gated_frac"] - want["gated_frac"]) <= want["gate_ambiguous_frac"] + 1e-12, "gated_frac"
    if "length_gate" in config_kw:
        assert want["gated_frac"] > 0  # the gate is exercised
    # the case exercises what it claims to
    if batch_kw.get("old") and config.clip is not None:
        assert want["clip_frac_low"] > 0 and want["clip_frac_high"] > 0
    if config.kl_coef:
        assert want["kl_mean"] > 0
    if "max_tokens_per_micro_batch" in config_kw and fn is spiral_fast.step:
        assert out.metrics["micro_batches"] > len(prs)  # problems were cut into parts


def test_the_cases_tell_the_options_apart():
    """Every advantage option and normaliser changes the oracle's loss on the test problems, so a
    step that ignored one would fail above."""
    model = tiny_model("qwen2")
    prs = problems(5, 3, max_g=3, old=True)
    base = dict(estimator="grpo", scale="std", trace_credit="mean", normalizer="token-mean", agg_baseline="problem")
    flips = dict(
        estimator="rloo",
        scale="none",
        trace_credit="sum",
        normalizer="seq-mean-token-mean",
        agg_coef=0.5,
        trace_coef=2.0,
        temperature=0.7,
        clip=(0.1, 0.1),
        agg_baseline="set",
        length_gate=3,
    )
    with torch.no_grad():
        ref = oracle_step(model, prs, SpiralConfig(**base))[0].item()
        assert not math.isclose(ref, oracle_step(model, prs, SpiralConfig(**base, clip=None))[0].item(), rel_tol=1e-6)
        for key, value in flips.items():
            other = oracle_step(model, prs, SpiralConfig(**{**base, key: value}))[0].item()
            assert not math.isclose(ref, other, rel_tol=1e-6), key
