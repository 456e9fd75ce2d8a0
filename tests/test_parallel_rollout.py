"""spiral_fast.rollout(..., aggregation="parallel"): sampling over merged trace KV caches on a tiny
random Qwen2. Its behaviour log-probs equal batch_logprobs in parallel mode; bad input is a ValueError."""

import pytest
import torch

import spiral_fast
from spiral_fast import SpiralConfig
from spiral_fast.recipe.tiny_model import tiny_qwen2
from spiral_fast.tasks.toy import ToyTask

HEAD = [1, 2]


def parallel_rollout(model, task, problems, **kwargs):
    opts = dict(
        aggregation="parallel",
        agg_head=HEAD,
        num_traces=4,
        num_sets=3,
        set_size=2,
        num_aggregations=2,
        max_new_tokens=4,
        pad_token_id=task.tokenizer.pad_id,
        reward_fn=lambda i, set_traces, z: task.reward(problems[i], set_traces, z),
    )
    opts.update(kwargs)
    return spiral_fast.rollout(model, [task.prompt(p) for p in problems], **opts)


@pytest.mark.parametrize("temperature,eos", [(1.0, False), (0.7, True)], ids=["T1", "T0.7-eos"])
def test_behaviour_logprobs_equal_batch_logprobs(temperature, eos):
    task = ToyTask(base=4, num_digits=2)
    model = tiny_qwen2(len(task.tokenizer), seed=3, hidden_size=32, num_layers=2)
    problems = [(0, 1), (2, 3), (3, 1)]
    eos_id = task.tokenizer.sep_id if eos else None
    torch.manual_seed(0)
    batch = parallel_rollout(
        model, task, problems, temperature=temperature, eos_token_id=eos_id, generator=torch.Generator().manual_seed(1)
    )
    lengths = set()
    for p, pr in enumerate(batch.problems):
        assert pr.prompt.tolist() == task.prompt(problems[p])
        assert len({frozenset(s) for s in pr.sets}) == 3
        for j, s in enumerate(pr.sets):
            assert pr.agg_prompts[j].tolist() == HEAD  # the head alone: no copy of x or the traces
            traces = [pr.traces[i].tolist() for i in s]
            for z, r in zip(pr.aggregations[j], pr.rewards[j]):
                assert r == task.reward(problems[p], traces, z.tolist())
                lengths.add(z.numel())
    if eos:
        assert min(lengths) < 4  # some responses stopped at the stop token
    got = spiral_fast.batch_logprobs(model, batch, config=SpiralConfig(aggregation="parallel", temperature=temperature))
    for p, pr in enumerate(batch.problems):
        for j in range(len(pr.sets)):
            for g, lp in enumerate(pr.agg_old_logprobs[j]):
                torch.testing.assert_close(lp, got.aggregations[p][j][g], rtol=0, atol=2e-5)
        for i, lp in enumerate(pr.trace_old_logprobs):
            torch.testing.assert_close(lp, got.traces[p][i], rtol=0, atol=2e-5)
    # the traces condition the aggregations: text-mode log-probs of the head alone differ
    text = spiral_fast.batch_logprobs(model, batch, config=SpiralConfig(temperature=temperature))
    assert not torch.allclose(text.aggregations[0][0][0], got.aggregations[0][0][0])


def test_parallel_batch_trains():
    task = ToyTask(base=4, num_digits=1)
    model = tiny_qwen2(len(task.tokenizer), seed=4, hidden_size=32, num_layers=1)
    batch = parallel_rollout(model, task, [(1,), (2,)], generator=torch.Generator().manual_seed(0))
    config = SpiralConfig(aggregation="parallel")
    out = spiral_fast.step(model, batch, config=config)
    model.zero_grad(set_to_none=True)
    ref = spiral_fast.step_reference(model, batch, config=config)
    assert abs(out.loss.item() - ref.loss.item()) <= 1e-5 * max(1.0, abs(ref.loss.item()))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(agg_head=[]), "agg_head must be a non-empty"),
        (dict(agg_head=None), "agg_head must be a non-empty"),
        (dict(agg_head=[1, -2]), "agg_head must hold token ids"),
        (dict(engine="vllm"), "vLLM cannot merge"),  # id without "vllm": runs where vLLM is not installed
        (dict(template=lambda x, ys: x), "template=None"),
        (dict(max_new_tokens=200, agg_max_new_tokens=60), "past the model's max_position_embeddings=256"),
        (dict(aggregation="kv"), "aggregation must be"),
        (dict(aggregation="text"), "template \\(required\\)"),
    ],
    ids=[
        "empty-head",
        "no-head",
        "negative-head",
        "engine-v",
        "template",
        "positions",
        "mode",
        "text-without-template",
    ],
)
def test_bad_input_raises_before_sampling(kwargs, match):
    task = ToyTask()
    model = tiny_qwen2(len(task.tokenizer), hidden_size=32, num_layers=1)
    with pytest.raises(ValueError, match=match):
        parallel_rollout(model, task, [(1,)], **kwargs)
