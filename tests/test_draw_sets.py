"""spiral_fast.rollout.draw_sets with distinct=True (the paper's sets): every subset once when
M = C(N, K), uniform draws without replacement on both paths (rejection and ranked permutation),
members in uniformly random order, and bad sizes rejected."""

import itertools
import math
from collections import Counter

import pytest
import torch

from spiral_fast.rollout import draw_sets

# chi-square critical values at p = 0.001 (a correct sampler fails one of these tests once in 1000
# seeds; the seeds are fixed, so the tests are deterministic)
CHI2_999 = {5: 20.52, 14: 36.12, 19: 43.82}


def chi_square(counts: Counter, categories: list, expected: float) -> float:
    return sum((counts[c] - expected) ** 2 / expected for c in categories)


@pytest.mark.parametrize("n,k", [(5, 2), (6, 3), (4, 4), (7, 1), (8, 4)], ids=lambda v: str(v))
def test_all_subsets_once_when_m_equals_c(n, k):
    total = math.comb(n, k)
    sets = draw_sets(n, total, k, generator=torch.Generator().manual_seed(1))
    assert len(sets) == total
    assert all(len(s) == k and len(set(s)) == k and all(0 <= i < n for i in s) for s in sets)
    assert sorted(tuple(sorted(s)) for s in sets) == list(itertools.combinations(range(n), k))


@pytest.mark.parametrize("m", [3, 15], ids=["M3-rejection", "M15-ranked"])
def test_draws_are_uniform_over_subsets(m):
    """C(6, 3) = 20 subsets; M = 3 takes the rejection path, M = 15 the ranked permutation. Each
    subset's inclusion rate must be M / 20, and sets within one draw never repeat."""
    n, k, trials = 6, 3, 1500
    g = torch.Generator().manual_seed(7)
    counts = Counter()
    for _ in range(trials):
        keys = [tuple(sorted(s)) for s in draw_sets(n, m, k, generator=g)]
        assert len(set(keys)) == m
        counts.update(keys)
    subsets = list(itertools.combinations(range(n), k))
    # inclusion counts of one subset: binomial-like with variance trials * p * (1 - p) (draws
    # without replacement), so scale the Pearson statistic by 1 / (1 - p)
    p = m / len(subsets)
    stat = chi_square(counts, subsets, trials * p) / (1 - p)
    assert stat < CHI2_999[len(subsets) - 1], stat


def test_a_sampler_biased_to_low_indices_fails_the_uniformity_check():
    """The check has power: sets drawn with trace 0 twice as likely are rejected."""
    n, k, m, trials = 6, 3, 3, 1500
    g = torch.Generator().manual_seed(7)
    weights = torch.tensor([2.0] + [1.0] * (n - 1))
    counts = Counter()
    for _ in range(trials):
        keys = set()
        while len(keys) < m:
            keys.add(tuple(sorted(torch.multinomial(weights, k, generator=g).tolist())))
        counts.update(keys)
    subsets = list(itertools.combinations(range(n), k))
    p = m / len(subsets)
    assert chi_square(counts, subsets, trials * p) / (1 - p) > CHI2_999[len(subsets) - 1]


@pytest.mark.parametrize("m", [2, 10], ids=["M2-rejection", "M10-ranked"])
def test_members_are_listed_in_uniformly_random_order(m):
    """Of the 3! orders in which a set's members can be listed, each is equally likely."""
    n, k, trials = 5, 3, 600
    g = torch.Generator().manual_seed(11)
    orders = Counter()
    for _ in range(trials):
        for s in draw_sets(n, m, k, generator=g):
            orders[tuple(sorted(range(k), key=lambda a: s[a]))] += 1
    perms = list(itertools.permutations(range(k)))
    assert chi_square(orders, perms, trials * m / len(perms)) < CHI2_999[len(perms) - 1]


def test_large_c_does_not_enumerate_and_is_seeded():
    # C(64, 32) ~ 1.8e18 subsets: only the rejection path can draw these
    sets = draw_sets(64, 16, 32, generator=torch.Generator().manual_seed(0))
    assert len({frozenset(s) for s in sets}) == 16 and all(len(set(s)) == 32 for s in sets)
    assert sets == draw_sets(64, 16, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        ((4, 7, 2), {}, r"num_sets must be <= C\(num_traces=4, set_size=2\) = 6"),
        ((3, 2, 3), {}, r"num_sets must be <= C\(num_traces=3, set_size=3\) = 1"),
        ((3, 2, 1), {"distinct": 1}, "distinct must be a bool"),
        ((True, 1, 1), {}, "num_traces"),
    ],
    ids=["M-above-C", "K-equals-N", "distinct-not-bool", "N-bool"],
)
def test_bad_arguments_raise(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        draw_sets(*args, **kwargs)
    if "distinct" not in kwargs and "C(" in match:  # independent draws may repeat sets
        assert len(draw_sets(*args, distinct=False)) == args[1]
