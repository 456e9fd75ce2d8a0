"""spiral_fast.step against its naive twin step_reference (loss, every parameter gradient) on tiny
random Qwen2 / Llama models; micro-batch invariance, activation checkpointing, the optimizer path,
gradient accumulation and metrics."""

import math

import pytest
import torch
from training_cases import assert_grads_close, grads, random_batch, tiny_model

import spiral_fast
from spiral_fast import SpiralConfig

OLD = dict(scale="std", agg_baseline="problem")  # the advantage defaults before issue 8
CASES = [
    # (model, lm_bias, batch kwargs, config kwargs)
    ("qwen2", False, dict(max_g=1), OLD),
    ("qwen2", False, dict(max_g=3, old=True), {}),  # the paper's defaults (issue 8)
    ("llama", False, dict(max_g=2, old=True), dict(temperature=0.7, agg_coef=0.5, trace_coef=2.0, **OLD)),
    ("llama", False, dict(max_g=3, ref=True), dict(kl_coef=0.1, **OLD)),
    ("qwen2", True, dict(max_g=2, old=True, ref=True), dict(kl_coef=0.05, normalizer="seq-mean-token-mean", **OLD)),
    (
        "qwen2",
        False,
        dict(max_g=3),
        dict(
            estimator="rloo",
            scale="none",
            trace_credit="sum",
            normalizer="constant",
            loss_constant=64.0,
            agg_baseline="problem",
        ),
    ),
    # issue 8: the length gate, no clipping, and the unclipped token-sum loss of docs/paper.md
    ("qwen2", False, dict(max_g=3, old=True), dict(length_gate=3)),
    ("llama", True, dict(max_g=3, old=True, ref=True), dict(length_gate=(2, None), kl_coef=0.05, scale="std")),
    ("qwen2", False, dict(max_g=3, old=True), dict(clip=None)),
    (
        "llama",
        False,
        dict(max_g=2, old=True),
        dict(clip=None, normalizer="constant", loss_constant=1, length_gate=(4, 2)),
    ),
]


def run(fn, model, batch, **kw):
    model.zero_grad(set_to_none=True)
    out = fn(model, batch, **kw)
    return out, grads(model)


@pytest.mark.parametrize(
    "kind,lm_bias,batch_kw,config_kw",
    [
        pytest.param(
            *c,
            id="{}{}-G{}{}{}-{}".format(
                c[0],
                "-bias" if c[1] else "",
                c[2]["max_g"],
                "-old" if c[2].get("old") else "",
                "-ref" if c[2].get("ref") else "",
                "-".join(f"{k}={v}" for k, v in c[3].items()) or "default",
            ),
        )
        for c in CASES
    ],
)
def test_step_matches_reference(kind, lm_bias, batch_kw, config_kw):
    model = tiny_model(kind, lm_bias=lm_bias)
    batch = random_batch(len(config_kw) + batch_kw["max_g"], problems=2, **batch_kw)
    config = SpiralConfig(**config_kw)
    out, g = run(spiral_fast.step, model, batch, config=config)
    ref, g_ref = run(spiral_fast.step_reference, model, batch, config=config)
    assert abs(out.loss.item() - ref.loss.item()) <= 1e-5 * max(1.0, abs(ref.loss.item()))
    assert_grads_close(g, g_ref)
    for key in (
        "agg_loss",
        "trace_loss",
        "clip_frac_low",
        "clip_frac_high",
        "kl_mean",
        "entropy_mean",
        "ratio_mean",
        "agg_reward_mean",
        "set_value_mean",
        "tokens_trained",
    ):
        assert math.isclose(out.metrics[key], ref.metrics[key], rel_tol=1e-4, abs_tol=1e-6), key
    if batch_kw.get("old") and config.clip is not None:
        assert out.metrics["clip_frac_low"] + out.metrics["clip_frac_high"] > 0  # the clipped branch is exercised
    if config.clip is None:
        assert out.metrics["clip_frac"] == 0.0
    assert out.metrics["gated_frac"] == ref.metrics["gated_frac"]
    assert (out.metrics["gated_frac"] > 0) == (config.length_gate is not None)  # the gate is exercised
    if config_kw.get("kl_coef"):
        assert out.metrics["kl_mean"] > 0


@pytest.mark.parametrize("budget", [60, 25], ids=["budget60-whole-problems", "budget25-problems-cut"])
def test_loss_and_grads_do_not_depend_on_the_micro_batch_split(budget):
    model = tiny_model("qwen2")
    batch = random_batch(7, problems=5, max_g=3, old=True)
    whole, g_whole = run(spiral_fast.step, model, batch, config=SpiralConfig(max_tokens_per_micro_batch=10_000))
    split, g_split = run(spiral_fast.step, model, batch, config=SpiralConfig(max_tokens_per_micro_batch=budget))
    assert whole.metrics["micro_batches"] == 1 and split.metrics["micro_batches"] >= 3
    if budget == 25:  # every problem is over budget: cut into its trace and set blocks
        assert split.metrics["micro_batches"] > len(batch)
    assert abs(whole.loss.item() - split.loss.item()) <= 1e-6
    assert_grads_close(g_split, g_whole, rel=1e-5)


def test_activation_checkpointing_gives_the_same_grads_and_is_restored():
    model = tiny_model("llama")
    model.train()
    batch = random_batch(3, problems=2, max_g=2)
    plain, g_plain = run(spiral_fast.step, model, batch)
    ckpt, g_ckpt = run(spiral_fast.step, model, batch, config=SpiralConfig(gradient_checkpointing=True))
    # transformers 5 name, else the 4.x one (the oldest supported version has only that)
    assert not getattr(
        model,
        "is_activation_checkpointing"
        if hasattr(type(model), "is_activation_checkpointing")
        else "is_gradient_checkpointing",
    )
    assert abs(plain.loss.item() - ckpt.loss.item()) <= 1e-6
    assert_grads_close(g_ckpt, g_plain, rel=1e-5)


def test_without_optimizer_grads_accumulate_like_backward():
    model = tiny_model("qwen2")
    batch = random_batch(4, problems=2)
    _, once = run(spiral_fast.step, model, batch)
    spiral_fast.step(model, batch)  # on top of the first call's gradients
    twice = grads(model)
    assert_grads_close(twice, {k: 2 * v for k, v in once.items()}, rel=1e-6)


@pytest.mark.parametrize("fn", [spiral_fast.step, spiral_fast.step_reference], ids=["step", "reference"])
def test_optimizer_path_changes_parameters_and_zeroes_grads(fn):
    model = tiny_model("qwen2")
    batch = random_batch(5, problems=2, max_g=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _, g = run(fn, model, batch)  # the gradient the optimizer will see
    model.zero_grad(set_to_none=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    out = fn(model, batch, config=SpiralConfig(max_grad_norm=1e6), optimizer=opt)
    for n, p in model.named_parameters():
        assert p.grad is None or not p.grad.any(), n
        torch.testing.assert_close(p.detach(), before[n] - 0.5 * g[n], rtol=0, atol=1e-6)
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    assert math.isclose(
        out.metrics["grad_norm"], torch.cat([v.reshape(-1) for v in g.values()]).norm().item(), rel_tol=1e-4
    )


def test_grad_clipping_bounds_the_update():
    model = tiny_model("qwen2")
    batch = random_batch(6, problems=2, max_g=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    out = spiral_fast.step(model, batch, config=SpiralConfig(max_grad_norm=1e-3), optimizer=opt)
    step_norm = torch.cat([(p.detach() - before[n]).reshape(-1) for n, p in model.named_parameters()]).norm()
    assert out.metrics["grad_norm"] > 1e-3 and step_norm.item() <= 1e-3 * (1 + 1e-4)


def test_metrics_are_present_and_finite():
    model = tiny_model("qwen2")
    batch = random_batch(8, problems=3, max_g=3, old=True)
    out = spiral_fast.step(model, batch, config=SpiralConfig(max_tokens_per_micro_batch=80))
    expected = {
        "loss",
        "agg_loss",
        "trace_loss",
        "agg_reward_mean",
        "set_value_mean",
        "clip_frac_low",
        "clip_frac_high",
        "clip_frac",
        "ratio_mean",
        "kl_mean",
        "entropy_mean",
        "tokens_trained",
        "trace_tokens",
        "agg_tokens",
        "unique_tokens",
        "dedup_ratio",
        "micro_batches",
        "gated_frac",
    }
    assert expected <= out.metrics.keys()
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.metrics.values())
    rewards = [r for pr in batch.problems for rs in pr.rewards for r in rs]
    assert math.isclose(out.metrics["agg_reward_mean"], sum(rewards) / len(rewards), rel_tol=1e-6)
    assert out.metrics["dedup_ratio"] > 1  # prompts are shared
    assert out.metrics["tokens_trained"] == out.metrics["trace_tokens"] + out.metrics["agg_tokens"]
    assert out.metrics["micro_batches"] >= 2
    assert math.isclose(out.loss.item(), out.metrics["loss"], rel_tol=1e-6)


def test_bad_arguments_raise():
    model = tiny_model("qwen2")
    batch = random_batch(9, problems=1)
    with pytest.raises(ValueError, match="batch must be"):
        spiral_fast.step(model, [batch])
    with pytest.raises(ValueError, match="config must be"):
        spiral_fast.step(model, batch, config={"kl_coef": 0.1})
    with pytest.raises(ValueError, match=r"kl_coef=0.1 needs reference log-probs, but problems\[0\]"):
        spiral_fast.step(model, batch, config=SpiralConfig(kl_coef=0.1))
    with pytest.raises(ValueError, match="has no LM head"):
        spiral_fast.step(model.model, batch)
    with pytest.raises(ValueError, match="optimizer must be"):
        spiral_fast.step(model, batch, optimizer="adam")


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_step_matches_reference_on_cuda(kind):
    """The CUDA path (Triton log-probs, policy loss and tree attention) against the reference."""
    model = tiny_model(kind).cuda()
    batch = random_batch(21, problems=3, max_g=3, old=True)
    out, g = run(spiral_fast.step, model, batch)
    ref, g_ref = run(spiral_fast.step_reference, model, batch)
    assert abs(out.loss.item() - ref.loss.item()) <= 1e-4 * max(1.0, abs(ref.loss.item()))
    assert_grads_close(g, g_ref, rel=1e-3)  # TF32-free fp32 kernels, but other summation orders than cuBLAS
    assert out.metrics["peak_memory_bytes"] > 0


@pytest.mark.gpu
def test_bf16_step_on_cuda_gives_finite_metrics_and_grads():
    model = tiny_model("qwen2").cuda().to(torch.bfloat16)
    batch = random_batch(22, problems=3, max_g=3)
    out = spiral_fast.step(model, batch, config=SpiralConfig(max_tokens_per_micro_batch=64))
    assert all(math.isfinite(v) for v in out.metrics.values())
    assert all(torch.isfinite(p.grad.float()).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("impl", ["step", "step_reference"])
def test_behaviour_logprob_mismatch_is_reported(impl):
    """logprob_mismatch_mean / _max: |old - new| over the trained tokens (traces in a set, every
    aggregation response), computed by hand from batch_logprobs (the forward before the update)."""
    model = tiny_model("qwen2", seed=3)
    batch = random_batch(5, problems=2, old=True)
    new = spiral_fast.batch_logprobs(model, batch)
    diffs = torch.cat(
        [
            (pr.trace_old_logprobs[i] - nt[i]).abs()
            for pr, nt in zip(batch.problems, new.traces)
            for i in pr.trained_traces()
        ]
        + [
            (o - n).abs()
            for pr, na in zip(batch.problems, new.aggregations)
            for os_, ns in zip(pr.agg_old_logprobs, na)
            for o, n in zip(os_, ns)
        ]
    )
    out = getattr(spiral_fast, impl)(model, batch, config=SpiralConfig())
    assert math.isclose(out.metrics["logprob_mismatch_mean"], float(diffs.mean()), rel_tol=1e-4)
    assert math.isclose(out.metrics["logprob_mismatch_max"], float(diffs.max()), rel_tol=1e-4)
    on_policy = getattr(spiral_fast, impl)(model, random_batch(5, problems=2), config=SpiralConfig())
    assert on_policy.metrics["logprob_mismatch_mean"] == on_policy.metrics["logprob_mismatch_max"] == 0.0
