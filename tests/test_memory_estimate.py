"""``SpiralConfig(max_tokens_per_micro_batch="auto", memory_budget_gb=...)`` and the per-token activation
estimate of ``spiral_fast.policy_step.memory_estimate``, checked against peaks measured in fresh processes."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import spiral_fast
from spiral_fast import SpiralConfig
from spiral_fast.policy_step import memory_estimate as me

transformers = pytest.importorskip("transformers")


def tiny_qwen2(layers=2, hidden=64, intermediate=128):
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        vocab_size=128,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
    )
    return transformers.Qwen2ForCausalLM(cfg)


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(max_tokens_per_micro_batch="Auto"), "max_tokens_per_micro_batch"),
        (dict(max_tokens_per_micro_batch=0), "max_tokens_per_micro_batch"),
        (dict(max_tokens_per_micro_batch=True), "max_tokens_per_micro_batch"),
        (dict(max_tokens_per_micro_batch=1.5), "max_tokens_per_micro_batch"),
        (dict(memory_budget_gb=0), "memory_budget_gb"),
        (dict(memory_budget_gb=-1.0), "memory_budget_gb"),
        (dict(memory_budget_gb=math.inf), "memory_budget_gb"),
        (dict(memory_budget_gb="4"), "memory_budget_gb"),
    ],
)
def test_config_rejects(kw, field):
    with pytest.raises(ValueError, match=field):
        SpiralConfig(**kw)


def test_config_accepts():
    c = SpiralConfig(max_tokens_per_micro_batch="auto", memory_budget_gb=2)
    assert c.max_tokens_per_micro_batch == "auto" and c.memory_budget_gb == 2.0
    assert SpiralConfig().memory_budget_gb is None
    assert SpiralConfig().max_tokens_per_micro_batch == "auto"  # the default since issue 19 (before: 8192)
    assert SpiralConfig(max_tokens_per_micro_batch=512).max_tokens_per_micro_batch == 512


def test_estimate_shape_of_the_model():
    cfg = transformers.LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3
    )
    lora = me.activation_bytes_per_token(cfg, dtype=torch.float32, lora_rank=16)
    full = me.activation_bytes_per_token(cfg, dtype=torch.float32, lora_rank=None)
    ckpt = me.activation_bytes_per_token(cfg, dtype=torch.float32, lora_rank=16, checkpointing=True)
    bf16 = me.activation_bytes_per_token(cfg, dtype=torch.bfloat16, lora_rank=16)
    assert ckpt < lora / 5 and bf16 < lora and full != lora
    deeper = transformers.LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=60, num_attention_heads=9, num_key_value_heads=3
    )
    assert me.activation_bytes_per_token(deeper, lora_rank=16) > 1.9 * lora


def test_auto_budget_follows_the_target():
    model = tiny_qwen2()
    small = me.auto_budget(model, memory_budget_gb=0.01)
    large = me.auto_budget(model, memory_budget_gb=0.1)
    per_token = me.activation_bytes_per_token(model.config, lora_rank=None)
    assert small == max(me.MIN_AUTO_TOKENS, int(0.01 * 2**30) // per_token)
    assert large > small
    assert me.auto_budget(model, memory_budget_gb=1e-6) == me.MIN_AUTO_TOKENS
    assert me.auto_budget(model, memory_budget_gb=1e6) == me.MAX_AUTO_TOKENS
    assert me.auto_budget(model, memory_budget_gb=0.01, checkpointing=True) > small
    free = me.free_memory_bytes("cpu")
    assert free > 0
    assert me.memory_target_bytes("cpu", None) <= me.MEMORY_FRACTION * free * 1.5
    assert me.micro_batch_budget(model, SpiralConfig(max_tokens_per_micro_batch=77)) == 77
    assert (
        me.micro_batch_budget(torch.nn.Linear(2, 2), SpiralConfig(max_tokens_per_micro_batch="auto"))
        == me.FALLBACK_TOKENS
    )


def _batch(n_problems=2, trace_len=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(1, 128, (n,), generator=g)  # noqa: E731
    problems = []
    for _ in range(n_problems):
        traces = [ids(trace_len) for _ in range(4)]
        sets = [(0, 1), (2, 3)]
        agg_prompts = [torch.cat([ids(6)] + [traces[m] for m in s]) for s in sets]
        aggs = [[ids(trace_len) for _ in range(2)] for _ in sets]
        problems.append(spiral_fast.ProblemRollout(ids(8), traces, sets, agg_prompts, aggs, [[0.0, 1.0], [1.0, 1.0]]))
    return spiral_fast.SpiralBatch(problems)


def test_auto_step_matches_integer_budget():
    """ "auto" only chooses the split: the loss and gradients are those of an integer budget."""
    model = tiny_qwen2()
    batch = _batch()
    auto = SpiralConfig(max_tokens_per_micro_batch="auto", memory_budget_gb=1e-6)  # -> MIN_AUTO_TOKENS
    out_auto = spiral_fast.step(model, batch, config=auto)
    g_auto = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    out_int = spiral_fast.step(model, batch, config=SpiralConfig(max_tokens_per_micro_batch=me.MIN_AUTO_TOKENS))
    assert out_auto.metrics["micro_batches"] == out_int.metrics["micro_batches"] > 1
    torch.testing.assert_close(out_auto.loss, out_int.loss)
    for a, b in zip(g_auto, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b)
    lp = spiral_fast.batch_logprobs(model, batch, config=auto)
    assert len(lp.traces) == 2


# A fresh process: one step at a micro-batch size, peak RSS above the resident set before the step
_MEASURE = textwrap.dedent("""
    import json, sys, torch, transformers
    torch.set_num_threads(1)
    import spiral_fast
    from spiral_fast.policy_step.memory_estimate import activation_bytes_per_token
    layers, hidden, inter, trace_len, ckpt = map(int, sys.argv[1:6])
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=256, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1 << 15)
    model = transformers.Qwen2ForCausalLM(cfg).train()
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(1, 256, (n,), generator=g)
    traces = [ids(trace_len) for _ in range(8)]
    sets = [tuple(range(4 * k, 4 * k + 4)) for k in range(2)]
    aggs = [torch.cat([ids(8)] + [traces[m] for m in s]) for s in sets]
    pr = spiral_fast.ProblemRollout(ids(16), traces, sets, aggs, [[ids(trace_len) for _ in range(4)] for _ in sets],
                                    [[0.0, 1.0, 1.0, 0.0]] * 2)
    batch = spiral_fast.SpiralBatch([pr])
    config = spiral_fast.SpiralConfig(max_tokens_per_micro_batch=1 << 20, gradient_checkpointing=bool(ckpt))
    small = spiral_fast.SpiralBatch([spiral_fast.ProblemRollout(ids(4), traces[:2], [(0, 1)], [ids(4)], [[ids(4)]], [[1.0]])])
    spiral_fast.step(model, small, config=config)  # warm-up: libraries, allocator
    model.zero_grad(set_to_none=False)  # gradients resident before the measurement, as in training
    status = lambda key: next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
    open("/proc/self/clear_refs", "w").write("5")
    base = status("VmRSS:")
    out = spiral_fast.step(model, batch, config=config)
    print(json.dumps(dict(tokens=out.metrics["unique_tokens"], peak=status("VmHWM:") - base,
                          estimate=activation_bytes_per_token(cfg, lora_rank=None, checkpointing=bool(ckpt)))))
""")


def _measure(layers, hidden, inter, trace_len, ckpt=0):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, *map(str, (layers, hidden, inter, trace_len, ckpt))],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_marginal(layers, hidden, inter, ckpt, short, long, tolerance):
    """The measured peak's growth per added token within ``tolerance`` (a factor) of the estimate."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to measure a peak RSS")
    a, b = _measure(layers, hidden, inter, short, ckpt), _measure(layers, hidden, inter, long, ckpt)
    per_token = (b["peak"] - a["peak"]) / (b["tokens"] - a["tokens"])
    ratio = per_token / b["estimate"]
    print(
        f"measured {per_token / 1024:.1f} KiB/token, estimated {b['estimate'] / 1024:.1f} KiB/token "
        f"(measured / estimate = {ratio:.2f})"
    )
    assert 1 / tolerance <= ratio <= tolerance


def test_estimate_against_measured_peak():
    """A tiny Qwen2 (full fine-tuning, fp32): seconds per process."""
    _check_marginal(layers=4, hidden=128, inter=384, ckpt=0, short=100, long=400, tolerance=2.0)


@pytest.mark.slow
@pytest.mark.parametrize("ckpt", [0, 1])
def test_estimate_against_measured_peak_larger(ckpt):
    _check_marginal(layers=8, hidden=256, inter=768, ckpt=ckpt, short=200, long=800, tolerance=2.0)


def test_auto_budget_where_free_memory_cannot_be_read(monkeypatch):
    """The default "auto" must not fail on a platform without /proc/meminfo or psutil: 8192 and a warning."""
    model = tiny_qwen2()
    monkeypatch.setattr(me, "free_memory_bytes", lambda device: None)
    monkeypatch.setattr(me, "_WARNED", [])
    with pytest.warns(UserWarning, match="cannot be read"):
        assert me.auto_budget(model) == me.FALLBACK_TOKENS
    assert me.memory_target_bytes("cpu", 2.0) == 2 * 2**30  # an explicit target needs no reading
    assert me.free_memory_bytes("meta") is None
