"""rollout.candidate_order: "shared" reorders each set's members so that a problem's aggregation
prompts share the longest prefixes (never changing which traces a set holds, reaching the brute-force
optimum on small cases), "random" keeps the drawn order; rollout stores the rendered order."""

import itertools
import math
import random
from collections import Counter

import pytest
import torch

import spiral_fast as sf
from spiral_fast.recipe.tiny_model import tiny_qwen2
from spiral_fast.rollout import AggregationTemplate, RolloutConfig, draw_sets
from spiral_fast.rollout.order import EXACT_CHOICES, order_sets, prompt_trie_tokens, shared_order
from spiral_fast.tasks import ToyTask

SEP = 99  # a separator token no trace contains: then the order's cost model is exact
TEMPLATE = AggregationTemplate(head=(100, 101), separator=(SEP,), tail=(102,))
X = [7, 8, 9]


def trie_cost(sets, traces) -> int:
    """Unique tokens of the trie of the rendered aggregation prompts: what a prefix cache prefills."""
    return prompt_trie_tokens([TEMPLATE(X, [traces[i] for i in s]) for s in sets])


def brute_force(sets, traces) -> int:
    return min(trie_cost(combo, traces) for combo in itertools.product(*[itertools.permutations(s) for s in sets]))


def random_case(seed: int, max_n: int = 5, max_k: int = 3, max_m: int = 3, vocab: int = 3):
    """Small traces over a tiny vocabulary: equal traces and traces that start alike are common."""
    rng = random.Random(seed)
    n = rng.randint(2, max_n)
    k = rng.randint(1, min(max_k, n))
    m = rng.randint(1, min(max_m, math.comb(n, k)))
    traces = [[rng.randint(1, vocab) for _ in range(rng.randint(1, 5))] for _ in range(n)]
    return traces, draw_sets(n, m, k, generator=torch.Generator().manual_seed(seed))


def test_prompt_trie_tokens_counts_each_shared_prefix_once():
    assert prompt_trie_tokens([]) == 0
    assert prompt_trie_tokens([[1, 2, 3], [1, 2, 4], [1, 2, 3]]) == 4
    assert prompt_trie_tokens([[1], [2, 1]]) == 3


@pytest.mark.parametrize("seed", range(6))
def test_shared_order_only_reorders_members(seed):
    traces, sets = random_case(seed, max_n=8, max_k=4, max_m=8)
    ordered = shared_order(sets, traces)
    assert len(ordered) == len(sets)
    for s, o in zip(sets, ordered):
        assert isinstance(o, tuple) and Counter(o) == Counter(s)


@pytest.mark.parametrize("chunk", range(4))
def test_shared_order_reaches_the_brute_force_optimum(chunk):
    # 40 random small cases per chunk, every order of every set tried
    for seed in range(chunk * 40, (chunk + 1) * 40):
        traces, sets = random_case(seed)
        assert trie_cost(shared_order(sets, traces), traces) == brute_force(sets, traces), (traces, sets)


def test_a_trace_in_several_sets_goes_first_in_all_of_them():
    traces = [[1] * 5, [2] * 5, [3] * 5, [4] * 5]
    assert shared_order([(2, 1), (3, 2)], traces) == [(2, 1), (2, 3)]
    # N = 8, K = 4: traces 5 and 0 are in all three sets; the rest keep their drawn order
    sets = [(1, 5, 0, 2), (0, 3, 5, 7), (6, 4, 5, 0)]
    traces = [[i + 1] * 6 for i in range(8)]
    ordered = shared_order(sets, traces)
    assert ordered == [(5, 0, 1, 2), (5, 0, 3, 7), (5, 0, 6, 4)]
    assert trie_cost(ordered, traces) == brute_force(sets, traces) < trie_cost(sets, traces)


def test_longer_shared_candidates_win_over_more_frequent_short_ones():
    # trace 0 (1 token) is in three sets (0, 2, 3), trace 1 (20 tokens) in two (0, 1): trace 1 first in
    # sets 0 and 1 shares 20 tokens, trace 0 first in all three of its sets shares 2 (counting traces, as
    # a greedy by frequency does, picks the latter)
    traces = [[1], [2] * 20, [3], [4], [5], [6]]
    sets = [(0, 1, 2), (1, 3, 4), (0, 3, 5), (0, 4, 5)]
    ordered = shared_order(sets, traces)
    assert ordered[0][0] == ordered[1][0] == 1
    assert trie_cost(ordered, traces) == brute_force(sets, traces)


def test_equal_traces_are_one_candidate_and_alike_starts_are_shared():
    traces = [[5, 5, 5], [6], [5, 5, 5], [7]]  # traces 0 and 2 are equal
    ordered = shared_order([(1, 0), (3, 2)], traces)
    assert ordered == [(0, 1), (2, 3)]
    # disjoint sets whose first candidates start alike: the alike ones go first
    traces = [[1, 2, 3, 4, 5], [9], [1, 2, 3, 4, 6], [8]]
    assert shared_order([(1, 0), (3, 2)], traces) == [(0, 1), (2, 3)]


def test_ties_keep_the_drawn_order():
    # nothing can be shared (no two traces start alike): every set keeps its drawn order
    traces = [[i + 1, 50 + i] for i in range(6)]
    sets = [(4, 1), (0, 5), (3, 2)]
    assert shared_order(sets, traces) == sets
    assert order_sets("random", sets, traces) == sets


def test_many_sets_take_the_greedy_search_and_still_share():
    # C(6, 3) = 20 sets: 3^20 joint choices at the root, above EXACT_CHOICES
    n, k = 6, 3
    assert k ** math.comb(n, k) > EXACT_CHOICES
    gen = torch.Generator().manual_seed(0)
    traces = [torch.randint(1, 50, (10,), generator=gen).tolist() for _ in range(n)]
    sets = draw_sets(n, math.comb(n, k), k, generator=gen)
    ordered = shared_order(sets, traces)
    assert all(Counter(o) == Counter(s) for s, o in zip(sets, ordered))
    # the greedy root puts one trace first in the 10 sets holding it: at least 9 * 10 tokens saved
    assert trie_cost(ordered, traces) <= trie_cost(sets, traces) - 90


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: order_sets("sorted", [(0, 1)], [[1], [2]]), "candidate_order"),
        (lambda: shared_order([(0, 2)], [[1], [2]]), r"sets\[0\]"),
        (lambda: shared_order([(0, 1)], [[1], [2]], separator_tokens=-1), "separator_tokens"),
    ],
    ids=["order", "index", "separator"],
)
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("order", ["shared", "random"])
def test_rollout_stores_the_rendered_order(order):
    """The batch is self-consistent: agg_prompts[j] renders sets[j] in its stored order; "random" keeps
    draw_sets' order, "shared" is shared_order of the same draws."""
    task = ToyTask(base=4, num_digits=1)
    model = tiny_qwen2(len(task.tokenizer), seed=0, hidden_size=16, num_layers=1)
    config = RolloutConfig(
        num_traces=4,
        set_size=3,
        num_sets=4,
        num_aggregations=1,
        max_new_tokens=2,
        agg_max_new_tokens=1,
        candidate_order=order,
    )
    problems = [(1,), (2,), (3,)]
    batch = sf.rollout(
        sf.HFSampler(model, pad_token_id=task.pad_token_id),
        task,
        problems,
        config,
        generator=torch.Generator().manual_seed(4),
        seed=11,
    )
    gen = torch.Generator().manual_seed(4)
    for problem, pr in zip(problems, batch.problems):
        drawn = draw_sets(4, 4, 3, generator=gen)
        traces = [y.tolist() for y in pr.traces]
        assert pr.sets == (drawn if order == "random" else shared_order(drawn, traces))
        for s, a in zip(pr.sets, pr.agg_prompts):
            assert a.tolist() == task.template(task.prompt(problem), [traces[i] for i in s])
