"""Parallel-encoded aggregation in training: batch_logprobs against a plain HF forward of the
concatenated context (4-D mask, explicit position ids, written here), step against step_reference in
loss and every gradient, gradients through the traces' keys and values, member-order invariance,
bad input."""

from __future__ import annotations

import math
import random

import pytest
import torch
from parallel_cases import random_problem
from training_cases import VOCAB, assert_grads_close, grads, tiny_model

import spiral_fast
from spiral_fast import ProblemRollout, SpiralBatch, SpiralConfig

PARALLEL = SpiralConfig(aggregation="parallel")


def parallel_batch(seed: int, *, problems: int = 2, old: bool = False, **kw) -> SpiralBatch:
    """Random problems whose agg_prompts are heads alone (parallel mode), rewards, optional old log-probs."""
    rng = random.Random(seed)
    out = []
    for _ in range(problems):
        pr = random_problem(rng, vocab=VOCAB, **kw)
        pr["rewards"] = [[float(rng.random() < 0.5) + rng.random() * 0.1 for _ in zs] for zs in pr["aggregations"]]
        if old:
            lp = lambda y: [-3.9 + rng.uniform(-0.6, 0.6) for _ in y]  # noqa: E731
            pr["trace_old_logprobs"] = [lp(y) for y in pr["traces"]]
            pr["agg_old_logprobs"] = [[lp(z) for z in zs] for zs in pr["aggregations"]]
        out.append(ProblemRollout(**pr))
    return SpiralBatch(out)


def context_logprobs(model, pr: ProblemRollout, j: int, z: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probs of z given h_j after x and the traces of set j, from one plain HF forward of the
    concatenated tokens x, y_i (i in S_j), h_j, z with a 4-D mask and explicit position ids."""
    x, h = pr.prompt.tolist(), pr.agg_prompts[j].tolist()
    ys = [pr.traces[i].tolist() for i in pr.sets[j]]
    ids, pos, owner = list(x), list(range(len(x))), [0] * len(x)
    for n, y in enumerate(ys, start=1):
        ids += y
        pos += range(len(x), len(x) + len(y))
        owner += [n] * len(y)
    p_j = len(x) + max(map(len, ys))
    ids += h + z.tolist()
    pos += range(p_j, p_j + len(h) + z.numel())
    owner += [len(ys) + 1] * (len(h) + z.numel())
    n = len(ids)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for a in range(n):
        for b in range(a + 1):
            allowed[a, b] = owner[b] == 0 or owner[a] == owner[b] or owner[a] == len(ys) + 1
    mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[None, None]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), position_ids=torch.tensor([pos]), attention_mask=mask).logits
    lsm = torch.log_softmax(logits[0].double() / temperature, dim=-1)
    first = n - z.numel()
    return lsm[first - 1 : n - 1].gather(1, z[:, None]).squeeze(1)


@pytest.mark.parametrize(
    "kind,temperature,budget",
    [
        pytest.param("qwen2", 1.0, 8192, id="qwen2-T1"),
        pytest.param("llama", 0.7, 10, id="llama-T0.7-budget10-problems-whole"),
    ],
)
def test_batch_logprobs_match_a_forward_of_the_concatenated_context(kind, temperature, budget):
    model = tiny_model(kind)
    batch = parallel_batch(3, problems=2)
    config = SpiralConfig(aggregation="parallel", temperature=temperature, max_tokens_per_micro_batch=budget)
    out = spiral_fast.batch_logprobs(model, batch, config=config)
    for p, pr in enumerate(batch.problems):
        for i, y in enumerate(pr.traces):  # every trace, also those in no set: given x alone
            ids = torch.cat([pr.prompt, y])[None]
            with torch.no_grad():
                lsm = torch.log_softmax(model(input_ids=ids).logits[0].double() / temperature, -1)
            want = lsm[pr.prompt.numel() - 1 : -1].gather(1, y[:, None]).squeeze(1)
            torch.testing.assert_close(out.traces[p][i].double(), want, rtol=0, atol=2e-5)
        for j, zs in enumerate(pr.aggregations):
            for g, z in enumerate(zs):
                want = context_logprobs(model, pr, j, z, temperature)
                torch.testing.assert_close(out.aggregations[p][j][g].double(), want, rtol=0, atol=2e-5)
    # the traces matter: text mode over the head alone scores the responses differently
    text = spiral_fast.batch_logprobs(model, batch, config=SpiralConfig(temperature=temperature))
    assert not torch.allclose(text.aggregations[0][0][0], out.aggregations[0][0][0])


def run(fn, model, batch, config):
    model.zero_grad(set_to_none=True)
    out = fn(model, batch, config=config)
    return out, grads(model)


@pytest.mark.parametrize(
    "kind,batch_kw,config_kw",
    [
        pytest.param("qwen2", dict(), dict(), id="qwen2-default"),
        pytest.param("llama", dict(old=True), dict(temperature=0.7, agg_coef=0.5, trace_coef=2.0), id="llama-old-T0.7"),
        pytest.param(
            "qwen2",
            dict(old=True, num_sets=4),
            dict(max_tokens_per_micro_batch=20, scale="std"),
            id="qwen2-old-budget20",
        ),
        pytest.param("qwen2", dict(), dict(gradient_checkpointing=True), id="qwen2-checkpointing"),
    ],
)
def test_step_matches_step_reference(kind, batch_kw, config_kw):
    model = tiny_model(kind)
    batch = parallel_batch(5, problems=3, **batch_kw)
    config = SpiralConfig(aggregation="parallel", **config_kw)
    out, g = run(spiral_fast.step, model, batch, config)
    ref, g_ref = run(spiral_fast.step_reference, model, batch, config)
    assert abs(out.loss.item() - ref.loss.item()) <= 1e-5 * max(1.0, abs(ref.loss.item()))
    assert_grads_close(g, g_ref)
    for key in ("agg_loss", "trace_loss", "clip_frac", "entropy_mean", "ratio_mean", "tokens_trained"):
        assert math.isclose(out.metrics[key], ref.metrics[key], rel_tol=1e-4, abs_tol=1e-6), key
    if "max_tokens_per_micro_batch" in config_kw:  # over budget, yet each problem stays whole
        assert out.metrics["micro_batches"] == len(batch)


def test_aggregation_loss_reaches_the_traces_through_their_keys_and_values():
    """trace_coef=0: the loss is the aggregator's alone. A token id that occurs only inside traces gets
    an embedding gradient in parallel mode (through the traces' K/V) and none in text mode."""
    model = tiny_model("qwen2")
    batch = parallel_batch(8, problems=1)
    pr = batch.problems[0]
    elsewhere = set(pr.prompt.tolist()) | {t for h in pr.agg_prompts for t in h.tolist()}
    elsewhere |= {t for zs in pr.aggregations for z in zs for t in z.tolist()}
    in_sets = {t for s in pr.sets for i in s for t in pr.traces[i].tolist()}
    only_traces = sorted(in_sets - elsewhere)
    assert only_traces
    emb = model.get_input_embeddings().weight
    for mode, expect in (("parallel", True), ("text", False)):
        model.zero_grad(set_to_none=True)
        spiral_fast.step(model, batch, config=SpiralConfig(aggregation=mode, trace_coef=0.0, scale="std"))
        assert bool(emb.grad[only_traces].abs().sum() > 0) == expect, mode


def test_member_order_does_not_matter():
    model = tiny_model("qwen2")
    batch = parallel_batch(9, problems=1, old=True, num_sets=4)
    rng = random.Random(0)
    shuffled = SpiralBatch(
        [
            ProblemRollout(
                pr.prompt,
                pr.traces,
                [tuple(rng.sample(s, len(s))) for s in pr.sets],
                pr.agg_prompts,
                pr.aggregations,
                pr.rewards,
                trace_old_logprobs=pr.trace_old_logprobs,
                agg_old_logprobs=pr.agg_old_logprobs,
            )
            for pr in batch.problems
        ]
    )
    assert [pr.sets for pr in shuffled.problems] != [pr.sets for pr in batch.problems]
    for fn in (spiral_fast.step, spiral_fast.step_reference):
        out, g = run(fn, model, batch, PARALLEL)
        out2, g2 = run(fn, model, shuffled, PARALLEL)
        assert abs(out.loss.item() - out2.loss.item()) <= 1e-6
        assert_grads_close(g2, g, rel=1e-5)
    a = spiral_fast.batch_logprobs(model, batch, config=PARALLEL)
    b = spiral_fast.batch_logprobs(model, shuffled, config=PARALLEL)
    for zs_a, zs_b in zip(a.aggregations, b.aggregations):
        for za, zb in zip(sum(zs_a, []), sum(zs_b, [])):
            torch.testing.assert_close(za, zb, rtol=0, atol=1e-6)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="aggregation must be one of"):
        SpiralConfig(aggregation="kv")
    model = tiny_model("qwen2")  # max_position_embeddings=256
    long = SpiralBatch(
        [
            ProblemRollout(
                prompt=[1] * 100,
                traces=[[2] * 150, [3] * 10],
                sets=[(0, 1)],
                agg_prompts=[[4, 5]],
                aggregations=[[[6] * 10]],
                rewards=[[1.0]],
            )
        ]
    )
    # text mode: h + z is 12 tokens; parallel mode: positions 250..261, past 256
    spiral_fast.step(model, long)
    for fn in (spiral_fast.step, spiral_fast.batch_logprobs):
        with pytest.raises(ValueError, match="positions 250..261, more than max_positions=256"):
            fn(model, long, config=PARALLEL)
    with pytest.raises(ValueError, match="agg_prompts\\[0\\] is empty"):
        ProblemRollout(prompt=[1], traces=[[2]], sets=[(0,)], agg_prompts=[[]], aggregations=[[[3]]], rewards=[[1.0]])
    with pytest.raises(ValueError, match="sets\\[0\\] names trace 2"):
        ProblemRollout(
            prompt=[1], traces=[[2], [3]], sets=[(0, 2)], agg_prompts=[[4]], aggregations=[[[3]]], rewards=[[1.0]]
        )
    batch = parallel_batch(1, problems=1)
    with pytest.raises(ValueError, match="whole problems"):
        batch.trained_sequences([(0, "traces")], torch.zeros(20), torch.zeros(20), aggregation="parallel")
