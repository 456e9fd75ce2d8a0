"""ops.lora_linear (a LoRA linear layer as one autograd node) against PEFT's expression, and
models.lora.fused_lora_linears (the step runs PEFT's LoRA layers through it) against PEFT's forward.

Accuracy rule of docs/testing.md: the fused path's error against float64 truth is at most twice
plain PyTorch's own float32 error, on random inputs with random upstream gradients."""

import pytest
import torch
from helpers import assert_rows_within_tolerance, assert_within_tolerance

from spiral_fast.ops.lora_linear import lora_linear, lora_linear_reference

NAMES = ("x", "weight", "bias", "lora_a", "lora_b")


def _inputs(shape, fan_in, fan_out, rank, bias, gen, scale=1.0, grads=NAMES):
    x = torch.randn(*shape, fan_in, generator=gen, dtype=torch.float64) * scale
    t = {
        "x": x,
        "weight": torch.randn(fan_out, fan_in, generator=gen, dtype=torch.float64) * fan_in**-0.5,
        "bias": torch.randn(fan_out, generator=gen, dtype=torch.float64) if bias else None,
        "lora_a": torch.randn(rank, fan_in, generator=gen, dtype=torch.float64),
        "lora_b": torch.randn(fan_out, rank, generator=gen, dtype=torch.float64),
    }
    up = torch.randn(*shape, fan_out, generator=gen, dtype=torch.float64)
    return t, up


def _run(fn, t, up, dtype, scaling, grads):
    leaves = {k: (None if v is None else v.detach().to(dtype).clone().requires_grad_(k in grads)) for k, v in t.items()}
    y = fn(leaves["x"], leaves["weight"], leaves["bias"], leaves["lora_a"], leaves["lora_b"], scaling)
    y.backward(up.to(dtype))
    return y.detach(), {k: v.grad for k, v in leaves.items() if v is not None and k in grads}


@pytest.mark.parametrize(
    "shape,fan_in,fan_out,rank,bias,scale",
    [
        ((37,), 24, 40, 4, False, 1.0),  # odd token count, out > in
        ((1,), 17, 5, 1, True, 1.0),  # one token, rank 1, with a bias, out < in
        ((2, 13), 32, 32, 8, False, 1.0),  # a [B, L, in] input (what HF layers pass)
        ((64,), 48, 96, 16, True, 1e4),  # large activations
        ((9,), 16, 24, 3, False, 1e-4),  # tiny activations
    ],
)
def test_lora_linear_matches_peft_expression(shape, fan_in, fan_out, rank, bias, scale):
    gen = torch.Generator().manual_seed(fan_in * 131 + rank)
    t, up = _inputs(shape, fan_in, fan_out, rank, bias, gen, scale)
    scaling = 2.5
    grads = NAMES if bias else NAMES[:2] + NAMES[3:]
    truth = _run(lora_linear_reference, t, up, torch.float64, scaling, grads)
    torch32 = _run(lora_linear_reference, t, up, torch.float32, scaling, grads)
    fused = _run(lora_linear, t, up, torch.float32, scaling, grads)
    assert fused[0].shape == truth[0].shape
    assert_within_tolerance(fused[0], truth[0], torch32[0], name="y")
    for k in grads:
        assert_rows_within_tolerance(fused[1][k], truth[1][k], torch32[1][k], name=f"d{k}")


def test_lora_linear_frozen_base_and_input_get_no_gradient():
    """LoRA training: only the factors need gradients; x without grad (the first layer's input)."""
    gen = torch.Generator().manual_seed(3)
    t, up = _inputs((11,), 20, 12, 4, True, gen)
    grads = ("lora_a", "lora_b")
    truth = _run(lora_linear_reference, t, up, torch.float64, 0.5, grads)
    torch32 = _run(lora_linear_reference, t, up, torch.float32, 0.5, grads)
    fused = _run(lora_linear, t, up, torch.float32, 0.5, grads)
    assert set(fused[1]) == set(grads)
    for k in grads:
        assert_rows_within_tolerance(fused[1][k], truth[1][k], torch32[1][k], name=f"d{k}")


def test_lora_linear_rejects_mixed_dtypes_and_shapes():
    x, w, a, b = torch.randn(3, 8), torch.randn(6, 8), torch.randn(2, 8), torch.randn(6, 2)
    with pytest.raises(ValueError, match="one dtype"):
        lora_linear(x.double(), w, None, a, b, 1.0)
    with pytest.raises(ValueError, match="shapes disagree"):
        lora_linear(x, w, None, a, torch.randn(6, 3), 1.0)


peft = pytest.importorskip("peft", reason="peft is not installed (pip install spiral_fast[dev])")


def _peft_model(**lora_kw):
    from training_cases import tiny_model

    cfg = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False)
    cfg.update(lora_kw)
    torch.manual_seed(1)
    return peft.get_peft_model(tiny_model("qwen2", seed=0), peft.LoraConfig(**cfg))


def _forward_backward(model, ids):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits
    up = torch.randn(logits.shape, generator=torch.Generator().manual_seed(7))
    logits.backward(up)
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_fused_lora_linears_equals_peft_forward_and_restores_it():
    from spiral_fast.models.lora import fused_lora_linears

    model = _peft_model()
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    want, g_want = _forward_backward(model, ids)
    lora_layers = [m for m in model.modules() if isinstance(m, peft.tuners.lora.Linear)]
    assert lora_layers
    with fused_lora_linears(model.get_base_model()):
        assert all("forward" in vars(m) for m in lora_layers)  # every layer runs the fused op
        got, g_got = _forward_backward(model, ids)
    assert not any("forward" in vars(m) for m in lora_layers)  # PEFT's forward again
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert set(g_got) == set(g_want) and g_want and all("lora_" in n for n in g_want)
    for n in g_want:
        torch.testing.assert_close(g_got[n], g_want[n], rtol=1e-4, atol=1e-6 * g_want[n].abs().max().item())


def test_fused_lora_linears_leaves_what_it_does_not_cover_to_peft():
    """Dropout in training mode and DoRA keep PEFT's forward; autocast falls back per call."""
    from spiral_fast.models.lora import fused_lora_linears

    for kw in (dict(lora_dropout=0.1), dict(use_dora=True)):
        model = _peft_model(**kw)
        with fused_lora_linears(model.get_base_model()):
            assert not any("forward" in vars(m) for m in model.modules()), kw
    model = _peft_model()
    ids = torch.randint(0, model.config.vocab_size, (1, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(input_ids=ids).logits
        with fused_lora_linears(model.get_base_model()), torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(input_ids=ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            peft_bf16 = model(input_ids=ids).logits
    torch.testing.assert_close(got, peft_bf16, rtol=0, atol=0)  # the same (PEFT's) computation
    assert (got.float() - want).abs().max() < 0.5
