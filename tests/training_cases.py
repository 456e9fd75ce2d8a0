"""Tiny random HF models and random structured SPIRAL batches for tests/test_step*.py and
tests/test_training*.py (no download: configs built in code)."""

from __future__ import annotations

import random

import torch

VOCAB = 50


def tiny_model(kind: str, *, seed: int = 0, lm_bias: bool = False):
    """A float32 randomly initialised 2-layer decoder (hidden 32, vocab 50): "qwen2" or "llama"
    (GQA, 4 query / 2 KV heads). lm_bias: replace the LM head by one with a bias."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    model = (Qwen2ForCausalLM(Qwen2Config(**kw)) if kind == "qwen2" else LlamaForCausalLM(LlamaConfig(**kw))).float()
    if lm_bias:
        head = torch.nn.Linear(32, VOCAB, bias=True)
        torch.nn.init.normal_(head.bias, std=0.5)
        model.lm_head = head
    return model


def random_problem_kwargs(rng: random.Random, *, max_g: int = 3, old: bool = False, ref: bool = False) -> dict:
    """Keyword arguments of one ProblemRollout: 4-5 traces (one in no set), 2-3 overlapping sets,
    aggregation prompts = template + x + member traces, G_j in [1, max_g], random rewards."""
    toks = lambda lo, hi: [rng.randrange(VOCAB) for _ in range(rng.randint(lo, hi))]  # noqa: E731
    x = toks(2, 6)
    n = rng.randint(4, 5)
    traces = [toks(1, 6) for _ in range(n)]
    sets = [(0, 1), (1, 2)] + ([(2, 0, 3)] if rng.random() < 0.5 else [])  # trace n-1 is in no set
    template = toks(1, 3)
    agg_prompts = [template + x + sum((traces[i] for i in s), []) for s in sets]
    aggregations = [[toks(1, 5) for _ in range(rng.randint(1, max_g))] for _ in sets]
    rewards = [[float(rng.random() < 0.5) + rng.random() * 0.1 for _ in zs] for zs in aggregations]
    kw = dict(prompt=x, traces=traces, sets=sets, agg_prompts=agg_prompts, aggregations=aggregations, rewards=rewards)
    # behaviour / reference log-probs near a vocab-50 model's ~ -3.9, so that some ratios clip
    lp = lambda y: [-3.9 + rng.uniform(-0.6, 0.6) for _ in y]  # noqa: E731
    if old:
        kw.update(
            trace_old_logprobs=[lp(y) for y in traces], agg_old_logprobs=[[lp(z) for z in zs] for zs in aggregations]
        )
    if ref:
        kw.update(
            trace_ref_logprobs=[lp(y) for y in traces], agg_ref_logprobs=[[lp(z) for z in zs] for zs in aggregations]
        )
    return kw


def random_batch(seed: int, *, problems: int = 3, **kw):
    from spiral_fast import ProblemRollout, SpiralBatch

    rng = random.Random(seed)
    return SpiralBatch([ProblemRollout(**random_problem_kwargs(rng, **kw)) for _ in range(problems)])


def grads(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(got: dict, want: dict, *, rel: float = 1e-4, floor: float | None = None):
    """Every parameter's gradient within rel * (its own largest entry) + floor * (the largest entry
    of the whole model), floor defaulting to rel / 100.

    Measured against its own size, a parameter with small gradients (q/k projections and their
    biases sit at 1e-4..1e-3 of the model's largest entry) is checked as tightly as the LM head:
    against the model's largest entry alone, an all-zero k_proj.bias gradient would pass. The
    floor only covers parameters whose true gradient is at rounding level.
    """
    assert got.keys() == want.keys()
    floor = rel / 100 if floor is None else floor
    scale = max(g.abs().max().item() for g in want.values())
    assert scale > 0
    for name in want:
        own = want[name].abs().max().item()
        err = (got[name].to(want[name].dtype) - want[name]).abs().max().item()
        bound = rel * own + floor * scale
        assert err <= bound, (
            f"{name}: max abs error {err:.3e} > {rel} * its gradient's size {own:.3e} + "
            f"{floor} * model's largest {scale:.3e}"
        )
