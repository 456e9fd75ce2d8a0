"""HFSampler on a LoRA PeftModel samples from an out-of-place merged copy (issue 23 item 1): the copy's
logits are the PeftModel's, before and after optimizer steps (with and without sync), the trainer's
frozen base weights stay bitwise unchanged over many syncs, and the behaviour log-probs are those
``spiral_fast.batch_logprobs`` computes for the PeftModel."""

import pytest
import torch
from training_cases import tiny_model

import spiral_fast
from spiral_fast.rollout.sampler import HFSampler

peft = pytest.importorskip("peft", reason="peft is not installed (pip install spiral_fast[dev])")

IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])


def lora_model(kind="llama", seed=0, **lora_kw):
    """A tiny random model with a random rank-4 LoRA on every linear layer but the LM head."""
    model = tiny_model(kind, seed=seed)
    cfg = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False)
    cfg.update(lora_kw)
    torch.manual_seed(seed + 1)
    return peft.get_peft_model(model, peft.LoraConfig(**cfg))


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


def adapter_step(model, seed):
    """One SGD step on the adapters with random gradients (what an optimizer does to them: in place)."""
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.05)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()


def test_a_peft_model_is_sampled_from_a_merged_copy_by_default():
    model = lora_model()
    sampler = HFSampler(model)
    assert sampler.merged and not spiral_fast.models.lora.is_peft_model(sampler.model)
    assert not HFSampler(model, merged=False).merged and HFSampler(model, merged=False).model is model
    assert not HFSampler(model, copy=True).merged  # FSDP2's unsharded copy stays a PeftModel
    assert not HFSampler(tiny_model("llama")).merged  # a plain model is sampled as it is
    with pytest.raises(ValueError, match="merged=True"):
        HFSampler(tiny_model("llama"), merged=True)
    with pytest.raises(ValueError, match="merged must be"):
        HFSampler(model, merged="yes")
    with pytest.raises(ValueError, match="merged=True and copy=True"):
        HFSampler(model, merged=True, copy=True)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_merged_logits_follow_the_peft_model_through_steps(kind):
    model = lora_model(kind)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    sampler = HFSampler(model)
    with model.disable_adapter():
        base = logits(model)
    want = logits(model)
    assert (want - base).abs().max() > 1e-2  # the adapters matter
    torch.testing.assert_close(logits(sampler.model), want, atol=2e-5, rtol=1e-5)
    for step in range(12):
        adapter_step(model, step)
        info = sampler.sync(model)
        assert info["bytes"] > 0
        torch.testing.assert_close(logits(sampler.model), logits(model), atol=2e-5, rtol=1e-5)
    params = dict(model.named_parameters())
    # the trainer's frozen base weights are bitwise those it started with: no in-place merge / unmerge
    assert all(torch.equal(params[n], w) for n, w in frozen.items())
    # the copy owns only the merged layers: every other tensor is the trainer's own
    shared = {p.data_ptr() for p in model.parameters()}
    assert sampler.model.model.embed_tokens.weight.data_ptr() in shared
    assert sampler.model.model.layers[0].self_attn.q_proj.weight.data_ptr() not in shared


def test_generate_refreshes_a_stale_copy_and_disable_adapter_samples_the_base():
    model = lora_model()
    sampler = HFSampler(model)
    adapter_step(model, 0)  # no sync: generate must notice the adapters changed
    prompt = IDS[0].tolist()
    torch.manual_seed(0)
    (y,), (lp,) = sampler.generate([prompt], 1, max_new_tokens=4, temperature=0.7)
    x = torch.tensor(prompt + y)[None]
    with torch.no_grad():
        want = (model(input_ids=x).logits[0, len(prompt) - 1 : -1] / 0.7).log_softmax(-1)
        want = want.gather(1, torch.tensor(y)[:, None])[:, 0]
        with model.disable_adapter():
            base = (model(input_ids=x).logits[0, len(prompt) - 1 : -1] / 0.7).log_softmax(-1)
            base = base.gather(1, torch.tensor(y)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(lp), want, atol=2e-5, rtol=0)
    assert (base - want).abs().max() > 1e-3
    with model.disable_adapter():
        torch.manual_seed(0)
        (yb,), (lpb,) = sampler.generate([prompt], 1, max_new_tokens=4, temperature=0.7)
        with torch.no_grad():
            ref = model(input_ids=torch.tensor(prompt + yb)[None]).logits[0, len(prompt) - 1 : -1] / 0.7
        ref = ref.log_softmax(-1).gather(1, torch.tensor(yb)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(lpb), ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_merged_behaviour_logprobs_equal_batch_logprobs(temperature):
    model = lora_model()
    sampler = HFSampler(model)
    adapter_step(model, 3)
    sampler.sync(model)
    template = spiral_fast.rollout.AggregationTemplate(head=(1,), separator=(2,), tail=(4,))
    batch = spiral_fast.rollout(
        sampler,
        [[5, 6, 7, 8], [9, 10, 11]],
        reward_fn=lambda p, s, z: float(z[0] % 2),
        template=template,
        num_traces=4,
        num_sets=3,
        set_size=2,
        num_aggregations=2,
        max_new_tokens=5,
        temperature=temperature,
        eos_token_id=3,
        generator=torch.Generator().manual_seed(0),
    )
    want = spiral_fast.batch_logprobs(model, batch, config=spiral_fast.SpiralConfig(temperature=temperature))
    pairs = 0
    for p, pr in enumerate(batch.problems):
        got = list(zip(pr.trace_old_logprobs, want.traces[p]))
        got += [pair for lps, ws in zip(pr.agg_old_logprobs, want.aggregations[p]) for pair in zip(lps, ws)]
        for lp, w in got:
            torch.testing.assert_close(lp, w, atol=3e-5, rtol=0)
            pairs += 1
    assert pairs == 2 * (4 + 3 * 2)


# ---- sample_decode (HFSampler's loop) against sample_hf (generate, the reference) ----

PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16, 17]]


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("seeds", [None, [4, 5, 6]], ids=["global-rng", "seeded"])
def test_sample_decode_draws_what_generate_draws(kind, seeds):
    from spiral_fast.rollout.hf import sample_decode, sample_hf

    for model in (tiny_model(kind, seed=1), lora_model(kind)):  # a PeftModel runs as its wrapped model
        kw = dict(max_new_tokens=7, temperature=0.8, eos_token_id=None, pad_token_id=0, logprobs=True, seeds=seeds)
        torch.manual_seed(0)
        kw["eos_token_id"] = sample_hf(model, PROMPTS, 3, **kw)[0][0][2]  # row 0 then stops at its 3rd token
        torch.manual_seed(0)
        ref, ref_lp = sample_hf(model, PROMPTS, 3, **kw)
        torch.manual_seed(0)
        got, got_lp = sample_decode(model, PROMPTS, 3, **kw)
        assert got == ref
        assert len({len(r) for r in ref}) > 1  # some rows stopped at EOS, others ran to max_new_tokens
        for a, b in zip(got_lp, ref_lp):
            torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=2e-5, rtol=0)
        _, none = sample_decode(model, PROMPTS, 2, **{**kw, "logprobs": False})
        assert none is None


def test_seeded_rows_do_not_depend_on_the_batch():
    from spiral_fast.rollout.hf import sample_decode

    model = tiny_model("llama", seed=2)
    kw = dict(max_new_tokens=6, temperature=1.0, eos_token_id=None, pad_token_id=0, logprobs=True)
    alone, _ = sample_decode(model, PROMPTS[1:2], 4, seeds=[7], **kw)
    together, _ = sample_decode(model, PROMPTS, 4, seeds=[1, 7, 9], **kw)
    assert together[4:8] == alone


def test_draw_tokens_samples_the_softmax():
    from spiral_fast.rollout.hf import draw_tokens

    logits = torch.tensor([[2.0, 0.5, -1.0, float("-inf"), 1.0]])
    T = 0.7
    probs = (logits / T).softmax(-1)[0].double()
    n = 40000
    gen = torch.Generator().manual_seed(0)
    tokens, lp = draw_tokens(logits.expand(n, 5), T, torch.rand(n, generator=gen, dtype=torch.float64))
    freq = torch.bincount(tokens, minlength=5).double() / n
    assert freq[3] == 0  # a zero-probability token is never drawn
    assert (freq - probs).abs().max() < 4 * (probs * (1 - probs) / n).sqrt().max()
    torch.testing.assert_close(lp, (logits / T).log_softmax(-1)[0][tokens])
    # the inverse CDF at its edges: u = 0 gives the first token with mass, u -> 1 the last
    edge, _ = draw_tokens(logits[:, [3, 0, 1]].expand(2, 3), 1.0, torch.tensor([0.0, 1 - 1e-16]))
    assert edge.tolist() == [1, 2]


def test_draw_tokens_on_non_finite_logits():
    from spiral_fast.rollout.hf import draw_tokens

    logits = torch.tensor([[float("nan"), 1.0, 2.0], [float("inf"), 0.0, 1.0]])
    tokens, lp = draw_tokens(logits, 1.0, torch.tensor([0.99, 0.5]))
    assert tokens[1] == 0  # +inf is drawn as the float maximum: all the mass
    assert all(0 <= t < 3 for t in tokens.tolist())
    assert not torch.isnan(lp).any() and lp[1] == float("-inf")  # no defined probability: -inf, not NaN
