"""Sampler.search_and_aggregate: the base class's two-phase default (CPU, a scripted sampler), the
vLLM sampler's pipelined override (aggregations start as each problem's traces finish), and the
critical-path model of spiral_fast.rollout.pipeline."""

import random

import pytest
from conftest import VLLM_MODEL

from spiral_fast.recipe.tiny_model import tiny_qwen2
from spiral_fast.rollout.hf import row_seed
from spiral_fast.rollout.pipeline import critical_path
from spiral_fast.rollout.sampler import Sampler

EOS = 3
HEAD, SEP, TAIL = 1, 2, 4


class Scripted(Sampler):
    """generate answers prompt q's s-th sample with [len(q), q[-1], s, seed % 40 + 5]: the response
    says which prompt and seed it came from. Records every call."""

    def __init__(self):
        self.calls = []

    def generate(
        self, prompts, num_samples, *, max_new_tokens, temperature, eos_token_id=None, logprobs=True, seeds=None
    ):
        self.calls.append((prompts, num_samples, max_new_tokens, seeds))
        out = [
            [len(q), q[-1], s, 0 if seeds is None else seeds[i] % 40 + 5]
            for i, q in enumerate(prompts)
            for s in range(num_samples)
        ]
        return out, ([[-0.5] * len(r) for r in out] if logprobs else None)

    def sync(self, model):
        return {}


def sets_prompts(prompts, m):
    """agg_prompts_of for M=m sets: set j of problem p is traces (j, j+1) (mod N), rendered as
    [HEAD, p, j, SEP, *trace, SEP, *trace, TAIL]; records the calls."""
    seen = []

    def agg_prompts_of(p, own):
        seen.append((p, [list(t) for t in own]))
        n = len(own)
        out = []
        for j in range(m):
            body = [tok for i in (j % n, (j + 1) % n) for tok in (SEP, *own[i])]
            out.append([HEAD, p % 40 + 5, j + 5, *body, TAIL])
        return out

    return agg_prompts_of, seen


def test_default_runs_two_phases_in_the_generate_layout():
    sampler = Scripted()
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    agg_prompts_of, seen = sets_prompts(prompts, m=2)
    progress = []
    traces, tlp, aggs, alp = sampler.search_and_aggregate(
        prompts,
        3,
        agg_prompts_of,
        2,
        max_new_tokens=7,
        agg_max_new_tokens=9,
        temperature=1.0,
        seeds=[11, 12, 13],
        on_progress=lambda *a: progress.append(a),
    )
    # traces: one generate call with the problems' own seeds, in generate's layout
    assert sampler.calls[0][1:] == (3, 7, [11, 12, 13])
    assert traces == [[len(q), q[-1], s, seed % 40 + 5] for q, seed in zip(prompts, [11, 12, 13]) for s in range(3)]
    # agg_prompts_of sees p in order with exactly its own traces
    assert [p for p, _ in seen] == [0, 1, 2]
    assert all(own == traces[p * 3 : (p + 1) * 3] for p, own in seen)
    # aggregations: one call, prompts p-major then j, seeds derived from (seed_p, "aggregation", j)
    agg_prompts, g, max_new, agg_seeds = sampler.calls[1]
    assert (g, max_new) == (2, 9)
    assert agg_seeds == [row_seed(s, "aggregation", j) for s in (11, 12, 13) for j in range(2)]
    assert [a[:3] for a in agg_prompts] == [[HEAD, p + 5, j + 5] for p in range(3) for j in range(2)]
    assert len(aggs) == 3 * 2 * 2 and len(alp) == len(aggs) and len(tlp) == len(traces)
    for p in range(3):
        for j in range(2):
            for gg in range(2):
                assert aggs[(p * 2 + j) * 2 + gg][2] == gg
                assert aggs[(p * 2 + j) * 2 + gg][1] == agg_prompts[p * 2 + j][-1]
    assert progress == [("traces", 3, 3), ("aggregations", 3, 3)]


def test_default_without_seeds_or_logprobs():
    sampler = Scripted()
    agg_prompts_of, _ = sets_prompts(None, m=1)
    _, tlp, aggs, alp = sampler.search_and_aggregate(
        [[5, 6]], 2, agg_prompts_of, 3, max_new_tokens=4, agg_max_new_tokens=4, temperature=0.7, logprobs=False
    )
    assert tlp is None and alp is None and len(aggs) == 3
    assert [c[3] for c in sampler.calls] == [None, None]


def test_default_rejects_uneven_numbers_of_sets():
    with pytest.raises(ValueError, match="same number of aggregation prompts"):
        Scripted().search_and_aggregate(
            [[5], [6]], 2, lambda p, own: [[5]] * (p + 1), 1, max_new_tokens=2, agg_max_new_tokens=2, temperature=1.0
        )


# ---- the critical-path model ---------------------------------------------------------------------


def test_critical_path_unlimited_has_the_closed_forms():
    rng = random.Random(0)
    for _ in range(20):
        P = rng.randint(1, 6)
        tr = [[rng.randint(1, 50) for _ in range(rng.randint(1, 4))] for _ in range(P)]
        ag = [[rng.randint(1, 50) for _ in range(rng.randint(0, 5))] for _ in range(P)]
        all_ag = [x for row in ag for x in row]
        assert critical_path(tr, ag, pipelined=False) == max(max(r) for r in tr) + max(all_ag, default=0)
        assert critical_path(tr, ag, pipelined=True) == max(max(t) + max(a, default=0) for t, a in zip(tr, ag))
        # more slots never lengthen it; pipelining never hurts without a slot limit
        assert critical_path(tr, ag, pipelined=True) <= critical_path(tr, ag, pipelined=False)


def test_critical_path_with_slots():
    # one slot: everything runs back to back, whatever the order
    tr, ag = [[3, 5], [2]], [[4], [1, 1]]
    assert critical_path(tr, ag, pipelined=True, max_running=1) == 16
    assert critical_path(tr, ag, pipelined=False, max_running=1) == 16
    # two slots, hand-checked: traces 3,5 run (0-3, 0-5); trace 2 runs 3-5; p0's agg 4 at 5-9 and
    # p1's aggs at 5-6, 6-7 (pipelined: p1 done at 5 too) -> 9
    assert critical_path(tr, ag, pipelined=True, max_running=2) == 9
    # a long problem and a short one: pipelining hides the short one's aggregations under the long trace
    assert critical_path([[100], [10]], [[10], [90]], pipelined=False) == 190
    assert critical_path([[100], [10]], [[10], [90]], pipelined=True) == 110


def test_critical_path_rejects_bad_input():
    with pytest.raises(ValueError, match="one entry per problem"):
        critical_path([[1]], [], pipelined=True)
    with pytest.raises(ValueError, match="max_running"):
        critical_path([[1]], [[1]], pipelined=True, max_running=0)
    with pytest.raises(ValueError, match="agg_lengths"):
        critical_path([[1]], [[-1]], pipelined=True)


# ---- the vLLM pipelined override -----------------------------------------------------------------


def pipelined(sampler, prompts, seeds, m=2, n=3, g=2, max_new=8, logprobs=True):
    agg_prompts_of, seen = sets_prompts(prompts, m)
    progress = []
    out = sampler.search_and_aggregate(
        prompts,
        n,
        agg_prompts_of,
        g,
        max_new_tokens=max_new,
        agg_max_new_tokens=5,
        temperature=1.0,
        eos_token_id=EOS,
        seeds=seeds,
        logprobs=logprobs,
        on_progress=lambda *a: progress.append(a),
    )
    return out, seen, progress


@pytest.fixture
def synced(vllm_sampler):
    vllm_sampler.sync(
        tiny_qwen2(VLLM_MODEL["vocab_size"], seed=7, **{k: v for k, v in VLLM_MODEL.items() if k != "vocab_size"})
    )
    return vllm_sampler


PROMPTS = [[5, 6, 7, 8], [9, 10, 11], [12, 13], [14, 15, 16, 17, 18]]


@pytest.mark.vllm
def test_pipelined_aggregations_come_from_their_own_problems_traces(synced):
    (traces, tlp, aggs, alp), seen, progress = pipelined(synced, PROMPTS, seeds=[1, 2, 3, 4])
    n, m, g = 3, 2, 2
    assert sorted(p for p, _ in seen) == [0, 1, 2, 3]
    # agg_prompts_of saw exactly the finished traces that are returned for its problem
    for p, own in seen:
        assert own == traces[p * n : (p + 1) * n]
        assert all(1 <= len(t) <= 8 and (len(t) == 8 or t[-1] == EOS) for t in own)
    # the layout is generate's: aggregations[(p*M + j)*G + g], each rendered from p's own traces
    assert len(traces) == len(tlp) == 4 * n and len(aggs) == len(alp) == 4 * m * g
    assert [len(a) for a in alp] == [len(a) for a in aggs] and all(lp <= 0 for a in alp for lp in a)
    agg_prompts = {p: prompts for p, prompts in ((p, sets_prompts(None, m)[0](p, own)) for p, own in seen)}
    for p in range(4):
        for j in range(m):
            assert agg_prompts[p][j][:3] == [HEAD, p + 5, j + 5]
            for gg in range(g):
                assert 1 <= len(aggs[(p * m + j) * g + gg]) <= 5
    # progress: every problem's traces, then (interleaved) every problem's aggregations
    assert [x for x in progress if x[0] == "traces"] == [("traces", k, 4) for k in range(1, 5)]
    assert [x for x in progress if x[0] == "aggregations"] == [("aggregations", k, 4) for k in range(1, 5)]
    assert synced.llm.llm_engine.has_unfinished_requests() is False


@pytest.mark.vllm
def test_pipelined_is_reproducible_with_seeds_and_matches_the_default_layout(synced):
    first, _, _ = pipelined(synced, PROMPTS, seeds=[21, 22, 23, 24])
    again, _, _ = pipelined(synced, PROMPTS, seeds=[21, 22, 23, 24])
    assert first[0] == again[0] and first[2] == again[2]
    # the default (two generate calls) returns the same shapes in the same places; its tokens may
    # differ (another batch composition) so only the layout and the per-problem prompts are compared
    agg_prompts_of, seen = sets_prompts(PROMPTS, 2)
    two = Sampler.search_and_aggregate(
        synced,
        PROMPTS,
        3,
        agg_prompts_of,
        2,
        max_new_tokens=8,
        agg_max_new_tokens=5,
        temperature=1.0,
        eos_token_id=EOS,
        seeds=[21, 22, 23, 24],
    )
    assert [len(x) for x in two] == [len(x) for x in first]
    # the traces are sampled with the same per-request seeds: the same tokens up to batch rounding
    same = sum(a == b for a, b in zip(two[0], first[0]))
    assert same >= len(first[0]) // 2, f"only {same}/{len(first[0])} traces equal under the same seeds"


@pytest.mark.vllm
def test_pipelined_without_logprobs_and_a_raising_callback(synced):
    (traces, tlp, aggs, alp), _, _ = pipelined(synced, PROMPTS[:2], seeds=None, logprobs=False)
    assert tlp is None and alp is None and len(aggs) == 2 * 2 * 2

    def broken(p, own):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        synced.search_and_aggregate(PROMPTS, 2, broken, 2, max_new_tokens=4, agg_max_new_tokens=4, temperature=1.0)
    # the engine was left idle: the next call works
    assert not synced.llm.llm_engine.has_unfinished_requests()
    (traces, *_), _, _ = pipelined(synced, PROMPTS[:1], seeds=[5])
    assert len(traces) == 3
    with pytest.raises(ValueError, match="outside the model's vocab_size"):
        synced.search_and_aggregate(
            [[5, 6]], 2, lambda p, own: [[999]], 1, max_new_tokens=2, agg_max_new_tokens=2, temperature=1.0
        )
    assert not synced.llm.llm_engine.has_unfinished_requests()


@pytest.mark.vllm
def test_the_cpu_engine_runs_eager_by_default(vllm_sampler):
    from vllm.platforms import current_platform

    config = vllm_sampler.llm.llm_engine.vllm_config
    assert config.model_config.enforce_eager is current_platform.is_cpu()
