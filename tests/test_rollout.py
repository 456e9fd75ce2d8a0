"""spiral_fast.rollout: set draws, template rendering, and a full rollout on a tiny random Qwen2."""

import math

import pytest
import torch

import spiral_fast
from spiral_fast.recipe.tiny_model import tiny_qwen2
from spiral_fast.rollout import AggregationTemplate, draw_sets
from spiral_fast.tasks.toy import ToyTask


@pytest.mark.parametrize("n,m,k", [(4, 3, 2), (5, 6, 5), (1, 2, 1)], ids=["N4-M3-K2", "N5-M6-K5", "N1-M2-K1"])
def test_draw_sets_valid_and_seeded(n, m, k):
    # independent draws (distinct=False, the default before issue 8): M may exceed C(N, K)
    sets = draw_sets(n, m, k, generator=torch.Generator().manual_seed(3), distinct=False)
    assert len(sets) == m
    for s in sets:
        assert len(s) == k and len(set(s)) == k and all(0 <= i < n for i in s)
    assert sets == draw_sets(n, m, k, generator=torch.Generator().manual_seed(3), distinct=False)


def test_draw_sets_cover_every_trace():
    # 200 draws of 2 out of 6: every trace appears, with roughly equal counts
    sets = draw_sets(6, 200, 2, generator=torch.Generator().manual_seed(0), distinct=False)
    counts = torch.bincount(torch.tensor(sets).flatten(), minlength=6)
    assert counts.min() > 40 and counts.sum() == 400


@pytest.mark.parametrize(
    "args,match",
    [((3, 2, 4), "set_size"), ((0, 2, 1), "num_traces"), ((3, 0, 1), "num_sets"), ((3, 2, 0), "set_size")],
    ids=["K-above-N", "N0", "M0", "K0"],
)
def test_draw_sets_rejects_bad_sizes(args, match):
    with pytest.raises(ValueError, match=match):
        draw_sets(*args)


def test_template_renders_in_order():
    template = AggregationTemplate(head=(9,), separator=(7, 7), tail=(8,))
    assert template([1, 2], [[3], [4, 5]]) == [9, 1, 2, 7, 7, 3, 7, 7, 4, 5, 8]
    assert AggregationTemplate()([1], [[2], [3]]) == [1, 2, 3]


def _rollout(model, task, problems, **kwargs):
    opts = dict(
        template=task.template,
        num_traces=5,
        num_sets=3,
        set_size=2,
        num_aggregations=2,
        max_new_tokens=3,
        pad_token_id=task.tokenizer.pad_id,
        reward_fn=lambda i, set_traces, z: task.reward(problems[i], set_traces, z),
    )
    opts.update(kwargs)
    return spiral_fast.rollout(model, [task.prompt(p) for p in problems], **opts)


def test_rollout_counts_template_rewards_and_logprobs():
    task = ToyTask(base=4, num_digits=2)
    model = tiny_qwen2(len(task.tokenizer), seed=1, hidden_size=32, num_layers=1)
    problems = [
        (0, 1),
        (
            2,
            3,
        ),
        (3, 3),
    ][:2] + [(1, 2)]
    eos = task.tokenizer.sep_id  # a stop token, so that some responses end early
    batch = _rollout(model, task, problems, eos_token_id=eos, generator=torch.Generator().manual_seed(0))
    assert isinstance(batch, spiral_fast.SpiralBatch) and len(batch.problems) == 3
    for p, pr in enumerate(batch.problems):
        traces = [y.tolist() for y in pr.traces]
        assert pr.prompt.tolist() == task.prompt(problems[p])
        assert len(traces) == 5 and len(pr.sets) == 3 and all(len(s) == 2 for s in pr.sets)
        assert len({frozenset(s) for s in pr.sets}) == 3  # rollout draws distinct sets
        for y in traces:  # ends at the first stop token or at max_new_tokens
            assert 1 <= len(y) <= 3 and (eos not in y[:-1])
        for j, s in enumerate(pr.sets):
            assert pr.agg_prompts[j].tolist() == task.template(task.prompt(problems[p]), [traces[i] for i in s])
            zs = [z.tolist() for z in pr.aggregations[j]]
            assert len(zs) == 2
            assert pr.rewards[j] == [task.reward(problems[p], [traces[i] for i in s], z) for z in zs]
            for z, lp in zip(pr.aggregations[j], pr.agg_old_logprobs[j]):
                assert lp.shape == z.shape and bool((lp <= 0).all())
        for y, lp in zip(pr.traces, pr.trace_old_logprobs):
            assert lp.shape == y.shape


def test_rollout_logprobs_match_the_policy():
    """The behaviour log-probs of every response (each trace, each aggregation; some stopped early
    by the stop token) are those of softmax(logits / T) under a plain forward of prompt + response."""
    task = ToyTask(base=4, num_digits=1)
    model = tiny_qwen2(len(task.tokenizer), seed=2, hidden_size=32, num_layers=1)
    problems = [(1,), (2,)]
    batch = _rollout(
        model,
        task,
        problems,
        temperature=0.7,
        eos_token_id=task.tokenizer.sep_id,
        generator=torch.Generator().manual_seed(1),
    )

    def expected(prompt, response):
        with torch.no_grad():
            logits = model(input_ids=torch.cat([prompt, response])[None]).logits[0, len(prompt) - 1 : -1].float()
        return (logits / 0.7).log_softmax(-1).gather(1, response[:, None])[:, 0]

    checked, lengths = 0, set()
    for pr in batch.problems:
        for y, lp in zip(pr.traces, pr.trace_old_logprobs, strict=True):
            torch.testing.assert_close(lp, expected(pr.prompt, y), atol=1e-5, rtol=1e-5)
            checked, lengths = checked + 1, lengths | {y.numel()}
        for a, zs, lps in zip(pr.agg_prompts, pr.aggregations, pr.agg_old_logprobs, strict=True):
            for z, lp in zip(zs, lps, strict=True):
                torch.testing.assert_close(lp, expected(a, z), atol=1e-5, rtol=1e-5)
                checked, lengths = checked + 1, lengths | {z.numel()}
    assert checked == len(problems) * (5 + 3 * 2)
    assert len(lengths) > 1  # responses of several lengths: padded positions never leak into a log-prob


def test_rollout_on_policy_and_seeded():
    task = ToyTask(base=4, num_digits=1)
    model = tiny_qwen2(len(task.tokenizer), seed=0, hidden_size=32, num_layers=1)
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        batch = _rollout(
            model, task, [(0,), (3,)], behaviour_logprobs=False, generator=torch.Generator().manual_seed(5)
        )
        assert all(pr.trace_old_logprobs is None and pr.agg_old_logprobs is None for pr in batch.problems)
        runs.append([(pr.sets, [y.tolist() for y in pr.traces], pr.rewards) for pr in batch.problems])
    assert runs[0] == runs[1]


def test_module_is_callable_and_keeps_its_names():
    import spiral_fast.rollout as module

    assert spiral_fast.rollout is module and callable(module)
    assert module.draw_sets is draw_sets


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"engine": "sglang"}, "engine"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"num_aggregations": 0}, "num_aggregations"),
        ({"prompts": [[]]}, "prompts"),
        ({"num_traces": 3, "num_sets": 4, "set_size": 2}, r"num_sets must be <= C\("),
    ],
    ids=["engine", "T0", "Tinf", "G0", "empty-prompt", "M-above-C(N,K)"],
)
def test_rollout_rejects_bad_arguments(kwargs, match):
    task = ToyTask()
    model = tiny_qwen2(len(task.tokenizer), hidden_size=32, num_layers=1)
    prompts = kwargs.pop("prompts", [task.prompt((1,))])
    with pytest.raises(ValueError, match=match):
        spiral_fast.rollout(model, prompts, reward_fn=lambda *a: 0.0, template=task.template, **kwargs)
