"""spiral_fast.batch_logprobs against a per-sequence full-logit forward written here (plain HF
forward, log_softmax(logits / T), gather): every trace (also those in no set) and every
aggregation response, at two temperatures, whole problems and problems cut by the budget."""

import pytest
import torch
from training_cases import random_batch, tiny_model

import spiral_fast
from spiral_fast import SpiralConfig
from spiral_fast.policy_step.microbatch import micro_batches


def full_logit_logprobs(model, prompt, response, temperature):
    ids = torch.cat([prompt, response])[None]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    lsm = torch.log_softmax(logits / temperature, dim=-1)
    return lsm[prompt.numel() - 1 : -1].gather(1, response[:, None]).squeeze(1)


@pytest.mark.parametrize(
    "kind,lm_bias,temperature,budget",
    [
        pytest.param("qwen2", False, 1.0, 8192, id="qwen2-T1-whole"),
        pytest.param("llama", True, 0.7, 25, id="llama-bias-T0.7-problems-cut"),
        pytest.param("qwen2", True, 1.0, 40, id="qwen2-bias-T1-budget40"),
    ],
)
def test_batch_logprobs_match_full_logit_forward(kind, lm_bias, temperature, budget):
    model = tiny_model(kind, lm_bias=lm_bias)
    batch = random_batch(11, problems=3, max_g=3)
    config = SpiralConfig(temperature=temperature, max_tokens_per_micro_batch=budget)
    if budget < 8192:  # the budget really cuts problems into parts
        assert len(micro_batches(batch, budget, all_traces=True)) > len(batch)
    out = spiral_fast.batch_logprobs(model, batch, config=config)
    assert isinstance(out, spiral_fast.BatchLogprobs)
    assert len(out.traces) == len(out.aggregations) == len(batch)
    untrained = 0
    for p, pr in enumerate(batch.problems):
        assert len(out.traces[p]) == len(pr.traces)
        untrained += len(pr.traces) - len({i for s in pr.sets for i in s})
        for i, y in enumerate(pr.traces):
            got = out.traces[p][i]
            assert got.dtype == torch.float32 and got.device.type == "cpu" and not got.requires_grad
            want = full_logit_logprobs(model, pr.prompt, y, temperature)
            torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5)
        assert [len(zs) for zs in out.aggregations[p]] == [len(zs) for zs in pr.aggregations]
        for j, zs in enumerate(pr.aggregations):
            for g, z in enumerate(zs):
                got = out.aggregations[p][j][g]
                assert got.dtype == torch.float32 and got.shape == z.shape
                want = full_logit_logprobs(model, pr.agg_prompts[j], z, temperature)
                torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5)
    assert untrained > 0  # traces in no set are covered


def test_temperature_changes_the_logprobs_and_no_grad_is_kept():
    model = tiny_model("qwen2")
    batch = random_batch(12, problems=1, max_g=2)
    hot = spiral_fast.batch_logprobs(model, batch, config=SpiralConfig(temperature=2.0))
    cold = spiral_fast.batch_logprobs(model, batch)
    assert not torch.allclose(hot.traces[0][0], cold.traces[0][0])
    assert all(p.grad is None for p in model.parameters())


def test_filled_reference_logprobs_give_zero_kl():
    """The documented use: reference log-probs of the current model make the k3 KL vanish."""
    model = tiny_model("qwen2")
    batch = random_batch(13, problems=2, max_g=2)
    lp = spiral_fast.batch_logprobs(model, batch)
    ref = spiral_fast.SpiralBatch(
        [
            spiral_fast.ProblemRollout(
                pr.prompt,
                pr.traces,
                pr.sets,
                pr.agg_prompts,
                pr.aggregations,
                pr.rewards,
                trace_ref_logprobs=lp.traces[p],
                agg_ref_logprobs=lp.aggregations[p],
            )
            for p, pr in enumerate(batch.problems)
        ]
    )
    out = spiral_fast.step(model, ref, config=SpiralConfig(kl_coef=0.1))
    assert abs(out.metrics["kl_mean"]) <= 1e-6


def test_bad_arguments_raise():
    model = tiny_model("qwen2")
    batch = random_batch(14, problems=1)
    with pytest.raises(ValueError, match="batch must be"):
        spiral_fast.batch_logprobs(model, [batch])
    with pytest.raises(ValueError, match="config must be"):
        spiral_fast.batch_logprobs(model, batch, config={"temperature": 1.0})
    with pytest.raises(ValueError, match="has no LM head"):
        spiral_fast.batch_logprobs(model.model, batch)
