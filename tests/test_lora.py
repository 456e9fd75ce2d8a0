"""PEFT LoRA models through spiral_fast.step, step_reference and rollout(engine="hf"): the step equals
its naive twin with a LoRA on every linear layer, gradients reach only the adapters, and what
PEFT cannot run as its wrapped model is rejected."""

import pytest
import torch
from training_cases import grads, random_batch, tiny_model

import spiral_fast
from spiral_fast import SpiralConfig

peft = pytest.importorskip("peft", reason="peft is not installed (pip install spiral_fast[dev])")


def lora_model(kind="qwen2", *, seed=0, **lora_kw):
    """A tiny random model with a rank-4 LoRA on every linear layer but the LM head; both adapter
    matrices random (PEFT's default B = 0 would make the adapter a no-op and its A-gradients 0)."""
    model = tiny_model(kind, seed=seed)
    cfg = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False)
    cfg.update(lora_kw)
    torch.manual_seed(seed + 1)
    return peft.get_peft_model(model, peft.LoraConfig(**cfg))


@pytest.mark.parametrize(
    "kind,config_kw",
    [
        pytest.param("qwen2", {}, id="qwen2-default"),
        pytest.param("llama", dict(temperature=0.7, agg_coef=0.5), id="llama-T0.7"),
        pytest.param("qwen2", dict(gradient_checkpointing=True, max_tokens_per_micro_batch=25), id="qwen2-ckpt-cut"),
    ],
)
def test_lora_step_matches_reference(kind, config_kw):
    model = lora_model(kind)
    batch = random_batch(11, problems=2, max_g=3, old=True)
    config = SpiralConfig(**config_kw)
    results = []
    for fn in (spiral_fast.step, spiral_fast.step_reference):
        model.zero_grad(set_to_none=True)
        results.append((fn(model, batch, config=config), grads(model)))
    (out, g), (ref, g_ref) = results
    assert abs(out.loss.item() - ref.loss.item()) <= 1e-5 * max(1.0, abs(ref.loss.item()))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert set(g) == set(g_ref) == trainable  # frozen base weights get no gradient
    for name, want in g_ref.items():
        scale = want.abs().max().item()
        assert scale > 0, name
        err = (g[name] - want).abs().max().item()
        assert err <= 1e-4 * scale, f"{name}: {err:.3e} > 1e-4 * {scale:.3e}"


def test_lora_step_trains_only_the_adapters():
    model = lora_model()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    spiral_fast.step(model, random_batch(3, problems=2), optimizer=optimizer)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], w) for n, w in frozen.items())
    assert all(not torch.equal(params[n], w) for n, w in lora.items())


def test_lora_rollout_hf_logprobs_are_the_adapted_policy():
    from spiral_fast.recipe.tiny_model import tiny_qwen2
    from spiral_fast.tasks.toy import ToyTask

    task = ToyTask(base=4, num_digits=1)
    base = tiny_qwen2(len(task.tokenizer), seed=2, hidden_size=32, num_layers=1)
    torch.manual_seed(3)
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    problems = [(1,), (2,)]
    batch = spiral_fast.rollout(
        model,
        [task.prompt(p) for p in problems],
        template=task.template,
        num_traces=3,
        num_sets=2,
        set_size=2,
        num_aggregations=2,
        max_new_tokens=3,
        temperature=0.7,
        pad_token_id=task.tokenizer.pad_id,
        reward_fn=lambda i, s, z: task.reward(problems[i], s, z),
    )
    pr = batch.problems[0]
    x, y, lp = pr.prompt, pr.traces[1], pr.trace_old_logprobs[1]
    with torch.no_grad():
        logits = model(input_ids=torch.cat([x, y])[None]).logits[0, len(x) - 1 : -1].float() / 0.7
        with model.disable_adapter():
            base_logits = model(input_ids=torch.cat([x, y])[None]).logits[0, len(x) - 1 : -1].float() / 0.7
    expected = logits.log_softmax(-1).gather(1, y[:, None])[:, 0]
    torch.testing.assert_close(lp, expected, atol=1e-5, rtol=1e-5)
    assert (base_logits - logits).abs().max() > 1e-3  # the adapter changes the policy


def test_lora_recursive_aggregation_runs_the_adapted_model():
    from spiral_fast.evaluate import recursive_aggregation

    model = lora_model()
    template = spiral_fast.rollout.AggregationTemplate(separator=(2,))
    runs = []
    for adapters in (True, False):
        torch.manual_seed(0)
        if adapters:
            out = recursive_aggregation(
                model,
                [[5, 6, 7]],
                template=template,
                score_fn=lambda p, r: 1.0,
                population=4,
                set_size=2,
                steps=1,
                max_new_tokens=4,
            )
        else:
            with model.disable_adapter():
                out = recursive_aggregation(
                    model,
                    [[5, 6, 7]],
                    template=template,
                    score_fn=lambda p, r: 1.0,
                    population=4,
                    set_size=2,
                    steps=1,
                    max_new_tokens=4,
                )
        assert [len(rows) for rows in out.populations[-1]] == [4]
        runs.append(out.populations)
    assert runs[0] != runs[1]  # same seed, other policy: the adapters were sampled


def test_lora_batch_logprobs_are_those_of_the_merged_model():
    from spiral_fast.models.lora import merged_state_dict

    model = lora_model("llama")
    plain = tiny_model("llama", seed=5)
    plain.load_state_dict(merged_state_dict(model))  # W + BA in every linear layer, strict names
    batch = random_batch(4, problems=2, max_g=2)
    config = SpiralConfig(temperature=0.7)
    got, want = (
        spiral_fast.batch_logprobs(model, batch, config=config),
        spiral_fast.batch_logprobs(plain, batch, config=config),
    )
    with model.disable_adapter():
        base = spiral_fast.batch_logprobs(model, batch, config=config)
    for p in range(2):
        for a, b, c in zip(got.traces[p], want.traces[p], base.traces[p]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
            assert (a - c).abs().max() > 1e-3  # the adapters matter


def test_lora_rejects_what_the_step_cannot_run():
    head = lora_model(target_modules=["q_proj", "lm_head"])
    with pytest.raises(ValueError, match="LM head"):
        spiral_fast.step(head, random_batch(0, problems=1))
    prompt = peft.get_peft_model(
        tiny_model("qwen2"), peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)
    )
    with pytest.raises(ValueError, match="prompt-learning"):
        spiral_fast.step_reference(prompt, random_batch(0, problems=1))
