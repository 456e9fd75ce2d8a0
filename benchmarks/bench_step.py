"""The SPIRAL training step (issue 5): ``spiral_fast.step`` vs its naive twin ``step_reference`` on the
SPIRAL-shaped batch of preset "packing-issue" (1 problem, 64-token prompt, N=8 traces x 256, M=4 sets of
K=4 with rendered aggregation prompts, G=4 aggregations x 128), tiny Qwen2, forward + loss + backward
(no optimizer). Target on the CPU: step >= 3x faster and <= half the peak memory of the reference.
Peers: spiral_fast (default SpiralConfig), with activation checkpointing, with a 2048-token micro-batch
budget, and step_reference (spiral_fast's own naive twin: HF forward per sequence, full logits); each
peer's loss and gradients must match spiral_fast's before it is timed.

CPU peak memory is a peak-RSS delta: glibc keeps freed heap pages mapped, so a peer measured after
another would reuse them for free; ``malloc_trim(0)`` first returns them, which makes the numbers
independent of the order the peers run in.
"""

import ctypes
import ctypes.util

import pytest
import torch
from presets import SPIRAL

import spiral_fast as sf
from spiral_fast.policy_step.memory_estimate import micro_batch_budget
from spiral_fast.policy_step.microbatch import micro_batches

VOCAB = 4096
TEMPLATE_TOKENS = 24  # rendered aggregation template header ("Here are K solutions to ...")
SEPARATOR_TOKENS = 4  # "Solution k:" between traces in the aggregation prompt


def spiral_batch(shape, *, vocab: int, seed: int = 0) -> sf.SpiralBatch:
    """A SpiralBatch of the preset's shape: aggregation prompt a_j = template + x + (separator + trace)
    for each of the set's K traces; behaviour log-probs absent (on-policy)."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda n: torch.randint(1, vocab, (n,), generator=g)  # noqa: E731
    header = rand(TEMPLATE_TOKENS)
    problems = []
    for _ in range(shape.problems):
        prompt = rand(shape.prompt_tokens)
        traces = [rand(shape.trace_tokens) for _ in range(shape.traces)]
        sets = [torch.randperm(shape.traces, generator=g)[: shape.set_size].tolist() for _ in range(shape.sets)]
        agg_prompts = [
            torch.cat([header, prompt] + [p for m in s for p in (rand(SEPARATOR_TOKENS), traces[m])]) for s in sets
        ]
        aggregations = [[rand(shape.agg_tokens) for _ in range(shape.aggregations)] for _ in sets]
        rewards = torch.randint(0, 2, (shape.sets, shape.aggregations), generator=g).float()
        problems.append(sf.ProblemRollout(prompt, traces, sets, agg_prompts, aggregations, rewards))
    return sf.SpiralBatch(problems)


def tiny_qwen2(vocab: int, device: str, dtype: torch.dtype):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        attn_implementation="sdpa",
    )
    return transformers.Qwen2ForCausalLM(cfg).to(device, dtype)


PEERS = {  # best of 3 timed rounds after the peak-memory call: the shared CPU has load bursts
    "spiral_fast": (sf.step, sf.SpiralConfig()),
    "spiral_fast + checkpointing": (sf.step, sf.SpiralConfig(gradient_checkpointing=True)),
    # the problem (8408 unique tokens) is cut into its trace block and its 4 set blocks
    "spiral_fast, budget 2048": (sf.step, sf.SpiralConfig(max_tokens_per_micro_batch=2048)),
    "step_reference": (sf.step_reference, sf.SpiralConfig()),
}
DEVICES = [
    pytest.param("cpu", torch.float32, id="cpu-fp32"),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("device,dtype", DEVICES)
@pytest.mark.parametrize("peer", list(PEERS))
def test_step_vs_reference(compare, peer, device, dtype):
    shape = SPIRAL["packing-issue"]
    batch = spiral_batch(shape, vocab=VOCAB)
    model = tiny_qwen2(VOCAB, device, dtype)
    fn, config = PEERS[peer]
    model.train()  # HF checkpoints in train mode only (the model has no dropout)
    flat = batch.advantage_inputs()
    zeros = [torch.zeros(len(flat.rewards)), torch.zeros(len(flat.trace_problem))]  # advantages: unused here
    seqs = batch.trained_sequences([0], *zeros)
    trained = int(seqs.response_lens.sum())
    group = (
        f"SPIRAL step tiny-qwen2 {shape.name} G={shape.aggregations} {device}-{str(dtype)[6:]} ({trained} trained tok)"
    )
    if peer.startswith("spiral_fast"):
        bins = micro_batches(batch, micro_batch_budget(model, config))  # "auto" resolved as step resolves it
        encoded = sum(sf.pack_sequences(batch.trained_sequences(b, *zeros).tokens).num_tokens for b in bins)
        note = f"{encoded} tokens encoded in {len(bins)} micro-batch(es)"
    else:
        note = f"{sum(t.numel() for t in seqs.tokens)} tokens encoded"
    if device == "cpu":
        _malloc_trim()
    # fp32: summation order only; bf16 (CUDA): the two paths round activations differently
    rel = 1e-3 if dtype == torch.float32 else 1e-1
    compare(
        group,
        peer,
        lambda: (fn(model, batch, config=config), model.zero_grad(set_to_none=True)),
        device=device,
        rounds=3,
        note=note,
        rel=rel,
        values=loss_and_grads(model, batch, fn, config),
        expected=loss_and_grads(model, batch, sf.step, sf.SpiralConfig()),
    )


def loss_and_grads(model, batch, fn, config):
    """A callable running one step from zero gradients: {"loss", one entry per parameter}."""

    def values():
        model.zero_grad(set_to_none=True)
        out = {"loss": fn(model, batch, config=config).loss.float()}
        out.update({n: p.grad.detach().float() for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad(set_to_none=True)
        return out

    return values


def _malloc_trim() -> None:
    libc = ctypes.util.find_library("c")
    if libc is not None and hasattr(ctypes.CDLL(libc), "malloc_trim"):
        ctypes.CDLL(libc).malloc_trim(0)
