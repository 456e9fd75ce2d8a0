"""spiral_fast.evaluate: pass@k against enumeration, majority vote, and RSA on a tiny model."""

import itertools
from fractions import Fraction
from math import comb

import pytest
import torch

import spiral_fast
from spiral_fast._utils import torch_threads
from spiral_fast.evaluate import RSAResult, majority_vote, pass_at_k, recursive_aggregation
from spiral_fast.recipe.tiny_model import tiny_qwen2


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: the models are tiny, and a thread pool on a shared CPU only contends
    (the demo does the same; measured 10x slower with 2 threads on the loaded 2-core machine)."""
    with torch_threads(1):
        yield


def _enumerated_pass_at_k(n, c, k):
    """Share of the k-subsets of n samples (the first c right) that hold a right sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9), ids=lambda n: f"n{n}")
def test_pass_at_k_equals_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_enumerated_pass_at_k(n, c, k), abs=1e-12)


@pytest.mark.parametrize(
    "n,c,k", [(1000, 3, 1), (1000, 500, 100), (5000, 17, 256), (256, 1, 256), (100000, 2, 7)], ids=lambda v: str(v)
)
def test_pass_at_k_exact_for_large_n(n, c, k):
    exact = 1 - Fraction(comb(n - c, k), comb(n, k))  # big-integer arithmetic: no rounding
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-15)


def test_pass_at_k_over_problems_lists_tensors_and_broadcast():
    ns, cs = [4, 8, 8], [1, 0, 8]
    expected = torch.tensor([_enumerated_pass_at_k(n, c, 2) for n, c in zip(ns, cs)], dtype=torch.float64)
    for args in ((ns, cs), (torch.tensor(ns), torch.tensor(cs)), (tuple(ns), cs)):
        out = pass_at_k(*args, 2)
        assert out.dtype == torch.float64 and out.shape == (3,)
        torch.testing.assert_close(out, expected)
    broadcast = pass_at_k(8, [0, 3, 8], 3)
    torch.testing.assert_close(
        broadcast, torch.tensor([_enumerated_pass_at_k(8, c, 3) for c in (0, 3, 8)], dtype=torch.float64)
    )
    assert isinstance(pass_at_k(torch.tensor(5), torch.tensor(2), 2), float)


@pytest.mark.parametrize(
    "args,match",
    [
        ((4, 1, 5), "k must be <= num_samples"),
        ((4, 1, 0), "k must be"),
        ((4, 5, 1), "num_correct"),
        ((4, -1, 1), "num_correct"),
        (([4, 2], [1, 1], 3), r"num_samples\[1\]"),
        (([4, 4], [1], 1), "num_correct has 1"),
        ((4.0, 1, 1), "num_samples"),
        ((torch.tensor([4.0]), [1], 1), "num_samples"),
    ],
    ids=["k-above-n", "k0", "c-above-n", "c-negative", "k-above-one-n", "lengths", "float-n", "float-tensor"],
)
def test_pass_at_k_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        pass_at_k(*args)


@pytest.mark.parametrize(
    "answers,expected",
    [
        ([3, 1, 3, 2], 3),
        ([1, 2, 2, 1], 1),
        ([2, 1, 1, 2], 2),
        ([None, None, 5], 5),
        ([None, 4, None, 6, 6], 6),
        ([None, None], None),
        ([], None),
        (["b", "a", "a", "b", "c"], "b"),
    ],
    ids=["plain", "tie-first-1", "tie-first-2", "none-ignored", "none-not-counted", "all-none", "empty", "strings"],
)
def test_majority_vote(answers, expected):
    assert majority_vote(answers) == expected


# --- recursive aggregation on a tiny random model ------------------------------------------------
# A "copy" task: tokens 1..V-1, a response's score is its first token's value mod 2, and the
# template puts member tokens in the aggregation prompt. The members' responses are recovered from
# the prompts through a recording template, which checks that population t+1 aggregates population t.

V = 12


def _model(seed=0):
    return tiny_qwen2(V, seed=seed, hidden_size=16, num_layers=1)


class _Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, prompt, members):
        self.calls.append((list(prompt), [list(m) for m in members]))
        return list(prompt) + [tok for m in members for tok in m] + [V - 1]


def _score(p, response):
    return float(len(response) > 0 and response[0] % 2 == 1)


def _rsa(model, template, seed, **kwargs):
    torch.manual_seed(seed)
    opts = dict(
        template=template,
        score_fn=_score,
        population=5,
        set_size=3,
        steps=3,
        max_new_tokens=2,
        generator=torch.Generator().manual_seed(seed),
    )
    opts.update(kwargs)
    return recursive_aggregation(model, [[1, 2, 3], [4, 5]], **opts)


def test_rsa_shapes_scores_and_lineage():
    template = _Recorder()
    out = _rsa(_model(), template, seed=1)
    assert isinstance(out, RSAResult) and len(out.accuracy) == 4 and len(out.populations) == 4
    for t, pop in enumerate(out.populations):
        assert len(pop) == 2 and all(len(rows) == 5 for rows in pop)
        scores = [_score(p, r) for p, rows in enumerate(pop) for r in rows]
        assert out.accuracy[t] == pytest.approx(sum(scores) / len(scores))
        assert all(1 <= len(r) <= 2 for rows in pop for r in rows)
    # 3 steps x 2 problems x 5 sets, in order: problem 0's sets, then problem 1's, per step
    assert len(template.calls) == 3 * 2 * 5
    for t in range(3):
        for p, prompt in enumerate(([1, 2, 3], [4, 5])):
            for j in range(5):
                x, members = template.calls[(t * 2 + p) * 5 + j]
                assert x == prompt and len(members) == 3
                pool = [list(r) for r in out.populations[t][p]]
                # members are 3 distinct entries of population t of the same problem
                positions = []
                for m in members:
                    hits = [i for i, r in enumerate(pool) if r == m and i not in positions]
                    assert hits, f"step {t + 1} aggregated {m}, not a member of population {t}"
                    positions.append(hits[0])


def test_rsa_accuracy_follows_the_aggregation_responses():
    """A template that ends in the token it wants copied: with a near-deterministic model the
    population's score tracks the template, proving the new population is the aggregations'."""
    model = _model(seed=3)
    # Make the model repeat its last input token: zero attention / MLP outputs leave the residual
    # stream = the embedding e_u = 50 * one-hot(u); the final RMSNorm (weight 1) maps it to 4 * one-hot(u)
    # and the tied LM head gives logit 200 to token u and 0 to every other token.
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0) if name.endswith("norm.weight") else p.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(V, 16) * 50)
    odd, even = 7, 8
    out = _rsa(model, lambda x, members: list(x) + [odd], seed=0, steps=2)
    first = [r[0] for rows in out.populations[0] for r in rows]
    assert first == [3] * 5 + [5] * 5  # step 0 copies each prompt's last token
    assert out.accuracy == [1.0, 1.0, 1.0]
    out = _rsa(model, lambda x, members: list(x) + [even], seed=0, steps=2)
    assert out.accuracy == [1.0, 0.0, 0.0]
    assert all(r[0] == even for rows in out.populations[2] for r in rows)


def test_rsa_seeded_and_peft_model():
    peft = pytest.importorskip("peft")
    model = _model(seed=2)
    a = _rsa(model, _Recorder(), seed=4)
    b = _rsa(model, _Recorder(), seed=4)
    assert a == b
    lora = peft.get_peft_model(_model(seed=2), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    c = _rsa(lora, _Recorder(), seed=4)
    # LoRA's B starts at zero: the adapted model is the base model, so the run is the same
    assert c == a
    assert isinstance(lora, peft.PeftModel)


def test_rsa_zero_steps_and_exposed_on_the_package():
    out = _rsa(_model(), _Recorder(), seed=0, steps=0)
    assert len(out.accuracy) == 1 and len(out.populations) == 1
    assert spiral_fast.evaluate.recursive_aggregation is recursive_aggregation


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"population": 0}, "population"),
        ({"set_size": 6}, "set_size"),
        ({"set_size": 0}, "set_size"),
        ({"steps": -1}, "steps"),
        ({"temperature": 0.0}, "temperature"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"agg_max_new_tokens": 0}, "agg_max_new_tokens"),
        ({"engine": "sglang"}, "engine"),
        ({"score_fn": lambda p, r: 2.0}, "score_fn"),
        ({"score_fn": None}, "score_fn"),
        ({"template": None}, "template"),
    ],
    ids=[
        "population",
        "K-above-pop",
        "K0",
        "steps",
        "T0",
        "max-new",
        "agg-max-new",
        "engine",
        "score-range",
        "score-none",
        "template-none",
    ],
)
def test_rsa_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _rsa(_model(), kwargs.pop("template", _Recorder()), seed=0, **kwargs)


def test_rsa_rejects_bad_prompts():
    for prompts in ([], [[]], "abc"):
        with pytest.raises(ValueError, match="prompts"):
            recursive_aggregation(_model(), prompts, template=_Recorder(), score_fn=_score)


def test_rsa_sets_are_drawn_independently():
    """population = set_size: every set is the whole population (the same subset each time), which
    distinct sets could not give; each step's aggregations are then over all candidates."""
    template = _Recorder()
    out = _rsa(_model(), template, seed=2, population=3, set_size=3, steps=1)
    assert len(out.accuracy) == 2 and len(template.calls) == 2 * 3
    for p, prompt in enumerate(([1, 2, 3], [4, 5])):
        for x, members in template.calls[p * 3 : (p + 1) * 3]:
            assert x == prompt
            assert sorted(members) == sorted(list(r) for r in out.populations[0][p])


def test_rsa_vllm_engine_dispatches_to_the_vllm_sampler():
    # engine="vllm" needs a VLLMSampler: a plain HF model is refused (as_sampler)
    with pytest.raises(ValueError, match="VLLMSampler"):
        _rsa(_model(), _Recorder(), seed=0, engine="vllm")
