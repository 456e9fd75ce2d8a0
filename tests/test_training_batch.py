"""ProblemRollout / SpiralBatch: normalisation, validation errors naming the index, flattening,
SpiralConfig validation and the balanced micro-batch split."""

import random

import pytest
import torch
from training_cases import random_batch, random_problem_kwargs

from spiral_fast import ProblemRollout, SpiralBatch, SpiralConfig
from spiral_fast.policy_step.microbatch import micro_batches, split_problems


def base_kwargs():
    return dict(
        prompt=[1, 2, 3],
        traces=[[4, 5], [6], [7, 8, 9]],
        sets=[(0, 1), (1, 2)],
        agg_prompts=[[9, 1, 2], [9, 3]],
        aggregations=[[[1], [2, 3]], [[4, 5]]],
        rewards=[[1.0, 0.0], [0.5]],
    )


def test_lists_and_tensors_give_the_same_rollout():
    kw = base_kwargs()
    a = ProblemRollout(**kw)
    b = ProblemRollout(
        prompt=torch.tensor(kw["prompt"]),
        traces=[torch.tensor(y) for y in kw["traces"]],
        sets=torch.tensor([[0, 1], [1, 2]]),
        agg_prompts=[torch.tensor(p) for p in kw["agg_prompts"]],
        aggregations=[[torch.tensor(z) for z in zs] for zs in kw["aggregations"]],
        rewards=[torch.tensor([1.0, 0.0]), torch.tensor([0.5])],
    )
    assert a.sets == b.sets == [(0, 1), (1, 2)]
    assert a.rewards == b.rewards == [[1.0, 0.0], [0.5]]
    for x, y in zip(a.traces + [a.prompt], b.traces + [b.prompt]):
        assert x.dtype == y.dtype == torch.int64 and torch.equal(x, y)
    assert a.trained_traces() == [0, 1, 2]


BAD = [
    ("set-missing-trace", dict(sets=[(0, 3), (1, 2)]), r"sets\[0\] names trace 3"),
    ("set-empty", dict(sets=[(0, 1), ()]), r"sets\[1\] is empty"),
    ("set-duplicate", dict(sets=[(0, 1), (2, 2)]), r"sets\[1\] lists trace 2 more than once"),
    ("no-sets", dict(sets=[], agg_prompts=[], aggregations=[], rewards=[]), r"sets is empty"),
    ("reward-nan", dict(rewards=[[1.0, float("nan")], [0.5]]), r"rewards\[0\]\[1\] must be a finite"),
    ("reward-missing", dict(rewards=[[1.0], [0.5]]), r"rewards\[0\] has 1 rewards but set 0 has 2"),
    ("reward-none", dict(rewards=[[1.0, None], [0.5]]), r"rewards\[0\]\[1\]"),
    ("rewards-count", dict(rewards=[[1.0, 0.0]]), r"rewards has 1 entries but there are 2 sets"),
    ("rewards-absent", dict(rewards=None), r"rewards is missing"),
    ("agg-prompts-count", dict(agg_prompts=[[9, 1]]), r"agg_prompts has 1 prompts but there are 2 sets"),
    ("aggregations-count", dict(aggregations=[[[1], [2]]]), r"aggregations has 1 entries but there are 2 sets"),
    (
        "aggregations-empty-set",
        dict(aggregations=[[[1], [2, 3]], []], rewards=[[1.0, 0.0], []]),
        r"aggregations\[1\] is empty",
    ),
    ("empty-trace", dict(traces=[[4, 5], [], [7]]), r"traces\[1\] is empty"),
    ("empty-aggregation", dict(aggregations=[[[1], []], [[4, 5]]]), r"aggregations\[0\]\[1\] is empty"),
    ("empty-prompt", dict(prompt=[]), r"prompt is empty"),
    ("empty-agg-prompt", dict(agg_prompts=[[9], []]), r"agg_prompts\[1\] is empty"),
    ("negative-token", dict(traces=[[4, -5], [6], [7]]), r"traces\[0\] has a negative token id"),
    ("float-tokens", dict(prompt=torch.tensor([1.0, 2.0])), r"prompt must hold integer token ids"),
    (
        "trace-old-length",
        dict(trace_old_logprobs=[[-1.0, -1.0], [-1.0, -2.0], [-1.0] * 3]),
        r"trace_old_logprobs\[1\] has 2 values but its response has 1 tokens",
    ),
    ("trace-old-count", dict(trace_old_logprobs=[[-1.0, -1.0]]), r"trace_old_logprobs has 1 entries but there are 3"),
    (
        "trace-old-nan",
        dict(trace_old_logprobs=[[-1.0, float("nan")], [-1.0], [-1.0] * 3]),
        r"trace_old_logprobs\[0\] contains NaN",
    ),
    (
        "agg-old-length",
        dict(agg_old_logprobs=[[[-1.0], [-1.0]], [[-1.0, -1.0]]]),
        r"agg_old_logprobs\[0\]\[1\] has 1 values but its response has 2 tokens",
    ),
    (
        "agg-old-g",
        dict(agg_old_logprobs=[[[-1.0]], [[-1.0, -1.0]]]),
        r"agg_old_logprobs\[0\] has 1 entries but set 0 has 2",
    ),
    (
        "agg-ref-length",
        dict(agg_ref_logprobs=[[[-1.0], [-1.0, -1.0]], [[-1.0]]]),
        r"agg_ref_logprobs\[1\]\[0\] has 1 values but its response has 2 tokens",
    ),
]


@pytest.mark.parametrize("change,match", [pytest.param(c, m, id=i) for i, c, m in BAD])
def test_bad_rollout_raises_naming_the_index(change, match):
    with pytest.raises(ValueError, match=match):
        ProblemRollout(**{**base_kwargs(), **change})


def test_bad_batch_raises():
    with pytest.raises(ValueError, match="problems is empty"):
        SpiralBatch([])
    with pytest.raises(ValueError, match=r"problems\[1\] must be a ProblemRollout"):
        SpiralBatch([ProblemRollout(**base_kwargs()), base_kwargs()])


def test_advantage_inputs_are_the_global_csr():
    batch = SpiralBatch([ProblemRollout(**base_kwargs()), ProblemRollout(**base_kwargs())])
    f = batch.advantage_inputs()
    assert f.rewards.tolist() == [1.0, 0.0, 0.5] * 2
    assert f.agg_set.tolist() == [0, 0, 1, 2, 2, 3]
    assert f.set_problem.tolist() == [0, 0, 1, 1]
    assert f.set_members.tolist() == [0, 1, 1, 2, 3, 4, 4, 5]
    assert f.set_offsets.tolist() == [0, 2, 4, 6, 8]
    assert f.trace_problem.tolist() == [0, 0, 0, 1, 1, 1]


def test_trained_sequences_drop_traces_in_no_set_and_put_traces_first():
    kw = base_kwargs()
    kw["sets"] = [(0,), (2,)]
    kw["trace_old_logprobs"] = [[-1.0, -2.0], [-3.0], [-4.0, -5.0, -6.0]]
    batch = SpiralBatch([ProblemRollout(**kw)])
    seqs = batch.trained_sequences([0], torch.arange(3.0), torch.tensor([10.0, 11.0, 12.0]))
    assert [t.tolist() for t in seqs.tokens] == [
        [1, 2, 3, 4, 5],
        [1, 2, 3, 7, 8, 9],
        [9, 1, 2, 1],
        [9, 1, 2, 2, 3],
        [9, 3, 4, 5],
    ]
    assert seqs.num_trace == 2 and seqs.prompt_lens.tolist() == [3, 3, 3, 3, 2]
    assert seqs.seq_adv.tolist() == [10.0, 12.0, 0.0, 1.0, 2.0]
    assert seqs.old_logp[:5].tolist() == [-1.0, -2.0, -4.0, -5.0, -6.0]
    assert seqs.old_given.tolist() == [True] * 5 + [False] * 5
    assert seqs.ref_logp is None and seqs.role_tokens() == (5, 5)


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", 0.0),
        ("clip", (0.2,)),
        ("normalizer", "mean"),
        ("max_tokens_per_micro_batch", 0),
        ("max_grad_norm", -1.0),
        ("estimator", "ppo"),
        ("agg_coef", float("nan")),
        ("gradient_checkpointing", "yes"),
        ("agg_baseline", "group"),
        ("length_gate", -1),
        ("length_gate", 2.5),
        ("length_gate", (1, 2, 3)),
        ("length_gate", (4, -1)),
        ("length_gate", True),
        ("clip", (0.2, None)),
        ("clip", (1.0, 0.2)),
        ("clip", 0.2),
        ("clip", (0.2, float("inf"))),
    ],
)
def test_bad_config_raises(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must"):
        SpiralConfig(**{field: value})


def test_config_defaults_match_the_issue():
    c = SpiralConfig()
    assert (c.agg_coef, c.trace_coef, c.temperature, c.clip, c.kl_coef) == (1.0, 1.0, 1.0, (0.2, 0.28), 0.0)
    # issue 8: the paper's advantages by default
    assert (c.estimator, c.scale, c.trace_credit, c.agg_baseline, c.normalizer) == (
        "grpo",
        "none",
        "mean",
        "set",
        "token-mean",
    )
    assert c.length_gate is None


@pytest.mark.parametrize("seed", range(5))
def test_split_problems_is_a_balanced_partition_under_budget(seed):
    rng = random.Random(seed)
    sizes = [rng.randint(1, 60) for _ in range(rng.randint(1, 30))] + [150]
    budget = 100
    bins = split_problems(sizes, budget)
    assert sorted(p for b in bins for p in b) == list(range(len(sizes)))
    loads = [sum(sizes[p] for p in b) for b in bins]
    assert [len(sizes) - 1] in bins  # over budget: alone
    small = [ld for b, ld in zip(bins, loads) if b != [len(sizes) - 1]]
    assert max(small) <= budget
    # balanced: no micro-batch is longer than another by more than the largest problem
    assert max(small) - min(small) <= max(sizes[:-1])
    # not more micro-batches than one over the lower bound needs
    assert len(small) <= -(-sum(sizes[:-1]) // budget) + 1


def test_unique_tokens_bound_bounds_the_trie():
    from spiral_fast import pack_sequences

    batch = random_batch(0, problems=1)
    adv = torch.zeros(len(batch.advantage_inputs().rewards)), torch.zeros(len(batch.advantage_inputs().trace_problem))
    seqs = batch.trained_sequences([0], *adv)
    assert pack_sequences(seqs.tokens).num_tokens <= batch.problems[0].unique_tokens_bound()


def test_random_problem_kwargs_build():
    kw = random_problem_kwargs(random.Random(1), old=True, ref=True)
    pr = ProblemRollout(**kw)
    assert len(pr.traces) - 1 not in pr.trained_traces()


def test_micro_batches_cut_only_problems_over_budget():
    batch = random_batch(2, problems=4)
    sizes = [pr.unique_tokens_bound() for pr in batch.problems]
    budget = sorted(sizes)[1]  # the two largest problems are over budget (ties aside)
    bins = micro_batches(batch, budget)
    items = [it for b in bins for it in b]
    for p, pr in enumerate(batch.problems):
        if sizes[p] <= budget:
            assert items.count(p) == 1
        else:
            cut = [it[1] for it in items if isinstance(it, tuple) and it[0] == p]
            assert len(cut) == len(set(cut)) and set(cut) == set(pr.part_sizes())
    part = lambda it: (
        batch.problems[it].unique_tokens_bound()
        if isinstance(it, int)  # noqa: E731
        else batch.problems[it[0]].part_sizes()[it[1]]
    )
    assert all(sum(part(it) for it in b) <= budget for b in bins if len(b) > 1)


def test_trained_sequences_of_parts_add_up_to_the_problem():
    batch = random_batch(3, problems=1, max_g=3)
    f = batch.advantage_inputs()
    agg_adv, trace_adv = torch.randn(len(f.rewards)), torch.randn(len(f.trace_problem))
    whole = batch.trained_sequences([0], agg_adv, trace_adv)
    parts = [batch.trained_sequences([(0, k)], agg_adv, trace_adv) for k in batch.problems[0].part_sizes()]
    assert sum(len(s.tokens) for s in parts) == len(whole.tokens)
    assert torch.equal(torch.cat([s.seq_adv for s in parts]), whole.seq_adv)
    assert [t.tolist() for s in parts for t in s.tokens] == [t.tolist() for t in whole.tokens]
