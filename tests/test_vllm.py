"""spiral_fast.VLLMSampler: vLLM's behaviour log-probs equal spiral_fast.batch_logprobs of the Hugging
Face model on the sampled batch (traces and aggregations, T = 1.0 and 0.7, before and after a sync,
LoRA), closing frees the engine, bad input is rejected. One engine for the whole session (conftest.vllm_sampler)."""

import gc
import json
import weakref

import pytest
import torch
from conftest import VLLM_MODEL

import spiral_fast
from spiral_fast.recipe.tiny_model import tiny_qwen2

pytestmark = pytest.mark.vllm

# fp32 engine vs fp32 batch_logprobs: measured max |diff| 1.4e-6 (benchmarks/RESULTS.md); a wrong
# temperature or stale weights move log-probs by > 0.1.
TOL = 1e-5
EOS = 3


def model_like_engine(seed, **overrides):
    vocab = overrides.pop("vocab_size", VLLM_MODEL["vocab_size"])
    kw = {k: v for k, v in VLLM_MODEL.items() if k != "vocab_size"}
    kw.update(overrides)
    return tiny_qwen2(vocab, seed=seed, **kw)


def sample_batch(sampler, temperature, *, seed=0):
    """A SPIRAL rollout through vLLM: 2 problems, N=4, M=3 sets of K=2, G=2; reward = parity of the
    first response token."""
    gen = torch.Generator().manual_seed(seed)
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    template = spiral_fast.rollout.AggregationTemplate(head=(1,), separator=(2,), tail=(4,))
    return spiral_fast.rollout(
        sampler,
        prompts,
        reward_fn=lambda p, s, z: float(z[0] % 2),
        template=template,
        num_traces=4,
        num_sets=3,
        set_size=2,
        num_aggregations=2,
        max_new_tokens=6,
        temperature=temperature,
        eos_token_id=EOS,
        generator=gen,
        engine="vllm",
    )


def max_logprob_error(model, batch, temperature):
    """Largest |vLLM behaviour log-prob - batch_logprobs| over every trace and aggregation token."""
    want = spiral_fast.batch_logprobs(model, batch, config=spiral_fast.SpiralConfig(temperature=temperature))
    err = 0.0
    for p, pr in enumerate(batch.problems):
        got = list(zip(pr.trace_old_logprobs, want.traces[p]))
        got += [pair for lps, ws in zip(pr.agg_old_logprobs, want.aggregations[p]) for pair in zip(lps, ws)]
        for lp, w in got:
            assert lp.shape == w.shape
            err = max(err, (lp - w).abs().max().item())
    return err


@pytest.mark.parametrize("temperature", [1.0, 0.7], ids=["T1.0", "T0.7"])
def test_behaviour_logprobs_equal_the_hf_model(vllm_sampler, temperature):
    model = model_like_engine(seed=1)
    vllm_sampler.sync(model)
    batch = sample_batch(vllm_sampler, temperature)
    for pr in batch.problems:
        responses = list(pr.traces) + [z for zs in pr.aggregations for z in zs]
        for r in responses:  # ends at the first EOS (kept) or after max_new_tokens
            r = r.tolist()
            assert 1 <= len(r) <= 6 and EOS not in r[:-1]
    assert max_logprob_error(model, batch, temperature) <= TOL
    # the temperature matters: the same tokens under T=1 vs 0.7 differ far beyond TOL
    assert max_logprob_error(model, batch, 1.0 if temperature != 1.0 else 0.7) > 100 * TOL


def test_sync_pushes_new_weights_and_only_then(vllm_sampler):
    old = model_like_engine(seed=2)
    new = model_like_engine(seed=2)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.05 * torch.randn_like(p))
    vllm_sampler.sync(old)
    before = sample_batch(vllm_sampler, 1.0, seed=1)
    assert max_logprob_error(old, before, 1.0) <= TOL
    assert max_logprob_error(new, before, 1.0) > 1e-2
    stats = vllm_sampler.sync(new)
    assert stats["bytes"] == sum(t.numel() * t.element_size() for t in new.state_dict().values())
    assert stats["seconds"] > 0
    after = sample_batch(vllm_sampler, 1.0, seed=1)
    assert max_logprob_error(new, after, 1.0) <= TOL


def test_lora_sync(vllm_sampler):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        model_like_engine(seed=3), peft.LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    )
    vllm_sampler.sync(model)
    batch = sample_batch(vllm_sampler, 0.7, seed=2)
    assert max_logprob_error(model, batch, 0.7) <= TOL
    # one LoRA training step on that batch, then sync: vLLM samples the updated adapters
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    spiral_fast.step(model, batch, config=spiral_fast.SpiralConfig(temperature=0.7), optimizer=optimizer)
    assert max_logprob_error(model, batch, 0.7) > 1e-3  # the step moved the policy
    vllm_sampler.sync(model)
    after = sample_batch(vllm_sampler, 0.7, seed=2)
    assert max_logprob_error(model, after, 0.7) <= TOL


def test_recursive_aggregation_through_the_sampler(vllm_sampler):
    from spiral_fast.evaluate import recursive_aggregation

    vllm_sampler.sync(model_like_engine(seed=4))
    template = spiral_fast.rollout.AggregationTemplate(separator=(2,), tail=(4,))
    out = recursive_aggregation(
        vllm_sampler,
        [[5, 6], [7, 8, 9]],
        template=template,
        engine="vllm",
        score_fn=lambda p, r: float(r[-1] % 2),
        population=4,
        set_size=2,
        steps=2,
        max_new_tokens=3,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(out.accuracy) == len(out.populations) == 3
    for population in out.populations:
        assert [len(rows) for rows in population] == [4, 4]
        assert all(1 <= len(r) <= 3 for rows in population for r in rows)


def test_sync_rejects_another_vocabulary_or_architecture(vllm_sampler):
    from transformers import LlamaConfig, LlamaForCausalLM

    with pytest.raises(ValueError, match="vocab"):
        vllm_sampler.sync(model_like_engine(seed=0, vocab_size=VLLM_MODEL["vocab_size"] + 1))
    with pytest.raises(ValueError, match="architecture"):
        vllm_sampler.sync(model_like_engine(seed=0, num_layers=3))
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VLLM_MODEL["vocab_size"],
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    with pytest.raises(ValueError, match="architecture"):
        vllm_sampler.sync(llama)
    with pytest.raises(ValueError, match="PreTrainedModel"):
        vllm_sampler.sync(torch.nn.Linear(2, 2))


def test_sampling_rejects_bad_prompts_and_samplers(vllm_sampler):
    with pytest.raises(ValueError, match="vocab_size"):
        vllm_sampler.generate([[1, 2, VLLM_MODEL["vocab_size"]]], 1, max_new_tokens=2, temperature=1.0)
    with pytest.raises(ValueError, match="VLLMSampler"):
        spiral_fast.rollout(
            model_like_engine(seed=0), [[1, 2]], reward_fn=lambda *a: 0.0, template=lambda x, ys: x, engine="vllm"
        )


def test_constructor_rejects_models_vllm_cannot_load(tmp_path):
    """Checked before any engine starts."""
    with pytest.raises(ValueError, match="config.json"):
        spiral_fast.VLLMSampler(str(tmp_path))
    with pytest.raises(ValueError, match="PreTrainedModel"):
        spiral_fast.VLLMSampler(torch.nn.Linear(2, 2))
    unknown = tmp_path / "unknown"
    model_like_engine(seed=0).save_pretrained(unknown)
    cfg = json.loads((unknown / "config.json").read_text())
    cfg["architectures"] = ["NoSuchModelForCausalLM"]
    (unknown / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="registry"):
        spiral_fast.VLLMSampler(str(unknown))
    with pytest.raises(ValueError, match="logprobs_mode"):
        spiral_fast.VLLMSampler(model_like_engine(seed=0), logprobs_mode="raw_logprobs")
    from vllm.platforms import current_platform

    if current_platform.is_cpu():  # head size 16: the CPU attention kernels have none
        with pytest.raises(ValueError, match="head size 16"):
            spiral_fast.VLLMSampler(model_like_engine(seed=0, num_heads=4, num_kv_heads=2))


def test_close_frees_the_engine(vllm_sampler):
    """Last in this file: it closes the session's engine (a later user would rebuild it)."""
    engine = weakref.ref(vllm_sampler.llm)
    tmpdir = vllm_sampler._tmpdir
    with vllm_sampler as s:
        assert s is vllm_sampler
    gc.collect()
    assert engine() is None
    assert tmpdir is not None and not __import__("os").path.exists(tmpdir)
    with pytest.raises(ValueError, match="closed"):
        vllm_sampler.generate([[1, 2]], 1, max_new_tokens=1, temperature=1.0)
    with pytest.raises(ValueError, match="closed"):
        vllm_sampler.sync(model_like_engine(seed=0))
    vllm_sampler.close()  # idempotent
