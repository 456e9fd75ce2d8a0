"""Log-probs of a batch (issue 8): ``spiral_fast.batch_logprobs`` vs step_reference's per-sequence
forward without grad, on the SPIRAL-shaped batch of preset "packing-issue" (1 problem, 64-token
prompt, N=8 traces x 256, M=4 sets of K=4 with rendered aggregation prompts, G=4 aggregations x
128), tiny Qwen2. Every response is scored (traces in no set too), as when filling reference
log-probs. Peers: batch_logprobs (default SpiralConfig: the problem in one micro-batch), with a
2048-token budget (the problem cut into its trace block and set blocks), and the per-sequence
full-logit forward of ``step_reference`` (model(sequence).logits, log_softmax / T, gather) under
torch.no_grad. Each peer's first call is checked against the per-sequence values. CPU peers run
with one intra-op thread (as in bench_algorithm): on the shared, oversubscribed CPU two threads
turned OpenMP barriers into scheduler waits and the timings into noise (3-40 s per call).

    pytest benchmarks/bench_batch_logprobs.py
"""

import pytest
import torch
from bench_step import VOCAB, _malloc_trim, spiral_batch, tiny_qwen2
from presets import SPIRAL

import spiral_fast as sf
from spiral_fast.policy_step.microbatch import micro_batches

TEMPERATURE = 0.7  # not 1: the temperature must reach every peer's log-softmax


def pairs(batch) -> list:
    """(prompt, response) of every response: per problem, its traces, then its aggregations."""
    return [
        pair
        for pr in batch.problems
        for pair in [(pr.prompt, y) for y in pr.traces]
        + [(a, z) for a, zs in zip(pr.agg_prompts, pr.aggregations) for z in zs]
    ]


def per_sequence(model, batch, *, temperature: float = TEMPERATURE) -> list:
    """step_reference's forward, sequence by sequence with full logits, for every response."""
    out = []
    with torch.no_grad():
        for prompt, response in pairs(batch):
            ids = torch.cat([prompt, response]).to(model.device)
            start = prompt.numel()
            logits = model(input_ids=ids[None], use_cache=False).logits[0, start - 1 : -1].float()
            lsm = torch.log_softmax(logits / temperature, dim=-1)
            out.append(lsm.gather(1, ids[start:, None]).squeeze(1).cpu())
    return out


def flat(result: sf.BatchLogprobs) -> list:
    """BatchLogprobs in the order of ``pairs``."""
    return [
        t
        for p in range(len(result.traces))
        for t in result.traces[p] + [z for zs in result.aggregations[p] for z in zs]
    ]


def fast(budget: int):
    config = sf.SpiralConfig(temperature=TEMPERATURE, max_tokens_per_micro_batch=budget)
    return lambda model, batch: flat(sf.batch_logprobs(model, batch, config=config))


BUDGETS = {"spiral_fast": 8192, "spiral_fast, budget 2048": 2048}
PEERS = {**{name: fast(budget) for name, budget in BUDGETS.items()}, "per-sequence (step_reference)": per_sequence}
DEVICES = [
    pytest.param("cpu", torch.float32, id="cpu-fp32"),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("device,dtype", DEVICES)
@pytest.mark.parametrize("peer", list(PEERS))
def test_batch_logprobs_vs_per_sequence(compare, peer, device, dtype, request):
    if device == "cpu":
        request.getfixturevalue("one_cpu_thread")
    shape = SPIRAL["packing-issue"]
    batch = spiral_batch(shape, vocab=VOCAB)
    model = tiny_qwen2(VOCAB, device, dtype).eval()
    fn = PEERS[peer]
    got, want = fn(model, batch), per_sequence(model, batch)
    # fp32: summation order only; bf16: the packed and the per-sequence forward round differently
    atol = 1e-4 if dtype == torch.float32 else 0.1
    assert len(got) == len(want) == shape.traces + shape.sets * shape.aggregations
    assert max((g - w).abs().max().item() for g, w in zip(got, want)) <= atol
    tokens = sum(t.numel() for t in got)
    group = f"batch_logprobs tiny-qwen2 {shape.name} {device}-{str(dtype)[6:]} ({tokens} scored tok)"
    if peer in BUDGETS:  # with every trace the problem packs to ~8.7k tokens: over 8192, it is cut
        note = f"{len(micro_batches(batch, BUDGETS[peer], all_traces=True))} micro-batch(es)"
    else:
        note = f"{sum(x.numel() + y.numel() for x, y in pairs(batch))} tokens encoded"
    if device == "cpu":
        _malloc_trim()
    compare(
        group,
        peer,
        lambda: fn(model, batch),
        device=device,
        rounds=3,
        note=note + (", 1 thread" if device == "cpu" else ""),
    )
