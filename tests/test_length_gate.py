"""Issue 8 in the step: the length gate (advantages, gated_frac) on a hand-made problem, and
the unclipped token-sum loss of docs/paper.md (clip=None, normalizer="constant", loss_constant=1)
against a per-sequence full-logit forward with the paper's advantages computed by hand."""

import math

import pytest
import torch
from training_cases import assert_grads_close, grads, tiny_model

import spiral_fast
from spiral_fast import ProblemRollout, SpiralBatch, SpiralConfig
from spiral_fast.policy_step.advantages import advantages


def hand_problem():
    """Traces of 2, 5, 3, 6 tokens; sets (0, 1) and (2, 3); set 0's responses (6 and 1 tokens)
    score 1, 0, set 1's (2 and 2 tokens) 0, 0. Paper advantages: set values 1/2, 0 -> set
    advantages +1/4, -1/4 -> traces +1/4, +1/4, -1/4, -1/4; aggregations +1/2, -1/2, 0, 0."""
    return ProblemRollout(
        prompt=[1, 2, 3],
        traces=[[4] * 2, [5] * 5, [6] * 3, [7] * 6],
        sets=[(0, 1), (2, 3)],
        agg_prompts=[[8, 4, 5], [8, 6, 7]],
        aggregations=[[[9] * 6, [10]], [[11] * 2, [12] * 2]],
        rewards=[[1.0, 0.0], [0.0, 0.0]],
    )


UNGATED_TRACE = [0.25, 0.25, -0.25, -0.25]
UNGATED_AGG = [0.5, -0.5, 0.0, 0.0]


@pytest.mark.parametrize(
    "gate,trace,agg",
    [
        (None, UNGATED_TRACE, UNGATED_AGG),
        (4, [0.25, 0.0, -0.25, -0.25], [0.0, -0.5, 0.0, 0.0]),  # trace 1 (5 tok), response 0 (6 tok)
        ((4, None), [0.25, 0.0, -0.25, -0.25], UNGATED_AGG),
        ((None, 5), UNGATED_TRACE, [0.0, -0.5, 0.0, 0.0]),
        ((5, 6), UNGATED_TRACE, UNGATED_AGG),  # "more than L": a response of exactly L tokens is kept
        (0, [0.0, 0.0, -0.25, -0.25], [0.0, -0.5, 0.0, 0.0]),  # negative advantages are never gated
    ],
    ids=["none", "L4", "trace4", "agg5", "exactly-L", "L0"],
)
def test_gate_zeroes_positive_advantages_of_long_responses(gate, trace, agg):
    batch = SpiralBatch([hand_problem()])
    adv = advantages(batch, SpiralConfig(length_gate=gate))
    torch.testing.assert_close(adv.trace, torch.tensor(trace))
    torch.testing.assert_close(adv.agg, torch.tensor(agg))
    want_gated = sum(a != b for a, b in zip(trace + agg, UNGATED_TRACE + UNGATED_AGG))
    assert adv.gated == want_gated


@pytest.mark.parametrize(
    "gate,frac", [(None, 0.0), (4, 2 / 8), ((None, 5), 1 / 8), (0, 3 / 8)], ids=["none", "L4", "agg5", "L0"]
)
def test_gated_frac_is_the_share_of_trained_responses_gated(gate, frac):
    # trained responses: 4 traces (all in a set) + 4 aggregation responses; a second problem whose
    # traces are in no set shows that untrained traces do not count
    spare = ProblemRollout(
        prompt=[1],
        traces=[[2] * 9, [3]],
        sets=[(1,)],
        agg_prompts=[[8, 3]],
        aggregations=[[[4], [5]]],
        rewards=[[1.0, 1.0]],
    )
    batch = SpiralBatch([hand_problem(), spare])
    model = tiny_model("qwen2")
    for fn in (spiral_fast.step, spiral_fast.step_reference):
        out = fn(model, batch, config=SpiralConfig(length_gate=gate))
        assert math.isclose(out.metrics["gated_frac"], frac * 8 / 11), fn.__name__


def test_informative_sees_the_gated_advantages():
    """A gate of 0 leaves only the negative advantages; a problem with only positive ones is dropped."""
    lone = ProblemRollout(
        prompt=[1],
        traces=[[2], [3]],
        sets=[(0,), (1,)],
        agg_prompts=[[8, 2], [8, 3]],
        aggregations=[[[4]], [[5]]],
        rewards=[[1.0], [1.0]],
    )
    batch = SpiralBatch([hand_problem(), lone])
    assert batch.informative(SpiralConfig(length_gate=0))[1] == 1  # lone: all advantages 0 already
    kept, dropped = SpiralBatch([hand_problem()]).informative(SpiralConfig(length_gate=0))
    assert dropped == 0 and kept is not None  # its negative advantages remain


def full_logit_logprobs(model, prompt, response):
    ids = torch.cat([prompt, response])[None]
    lsm = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return lsm[prompt.numel() - 1 : -1].gather(1, response[:, None]).squeeze(1)


def test_paper_token_sum_loss():
    """loss = -sum over every trained token of exp(logp - logp_old) * A, with the paper's
    advantages (here by hand, see hand_problem), unclipped; gradients of step equal those of that
    expression."""
    pr = hand_problem()
    old_t = [torch.full((y.numel(),), -3.5 - 0.1 * i) for i, y in enumerate(pr.traces)]
    old_a = [[torch.full((z.numel(),), -3.0 - 0.2 * g) for g, z in enumerate(zs)] for zs in pr.aggregations]
    batch = SpiralBatch(
        [
            ProblemRollout(
                pr.prompt,
                pr.traces,
                pr.sets,
                pr.agg_prompts,
                pr.aggregations,
                pr.rewards,
                trace_old_logprobs=old_t,
                agg_old_logprobs=old_a,
            )
        ]
    )
    model = tiny_model("llama")
    loss = torch.zeros((), dtype=torch.float64)
    for i, y in enumerate(pr.traces):
        loss = loss - (full_logit_logprobs(model, pr.prompt, y) - old_t[i]).exp().sum() * UNGATED_TRACE[i]
    for j, zs in enumerate(pr.aggregations):
        for g, z in enumerate(zs):
            lp = full_logit_logprobs(model, pr.agg_prompts[j], z)
            loss = loss - (lp - old_a[j][g]).exp().sum() * UNGATED_AGG[2 * j + g]
    loss.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    out = spiral_fast.step(model, batch, config=SpiralConfig(clip=None, normalizer="constant", loss_constant=1))
    assert math.isclose(out.loss.item(), loss.item(), rel_tol=1e-5, abs_tol=1e-6)
    assert_grads_close(grads(model), want, rel=1e-4)
