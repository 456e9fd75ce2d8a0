"""The SPIRAL training step (issue 5): ``spiral_fast.step`` vs its naive twin ``step_reference`` on the
SPIRAL-shaped batch of preset "packing-issue" (1 problem, 64-token prompt, N=8 traces x 256, M=4 sets of
K=4 with rendered aggregation prompts, G=4 aggregations x 128), tiny Qwen2, forward + loss + backward
(no optimizer). Target on the CPU: step >= 3x faster and <= half the peak memory of the reference.
Peers: spiral_fast (default SpiralConfig), spiral_fast with activation checkpointing, step_reference.

CPU peak memory is a peak-RSS delta: glibc keeps freed heap pages mapped, so a peer measured after
another would reuse them for free; ``malloc_trim(0)`` first returns them, which makes the numbers
independent of the order the peers run in.
"""
import ctypes
import ctypes.util

import pytest
import torch

import spiral_fast as sf
from presets import SPIRAL

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
        sets = [torch.randperm(shape.traces, generator=g)[:shape.set_size].tolist() for _ in range(shape.sets)]
        agg_prompts = [torch.cat([header, prompt] + [p for m in s for p in (rand(SEPARATOR_TOKENS), traces[m])])
                       for s in sets]
        aggregations = [[rand(shape.agg_tokens) for _ in range(shape.aggregations)] for _ in sets]
        rewards = torch.randint(0, 2, (shape.sets, shape.aggregations), generator=g).float()
        problems.append(sf.ProblemRollout(prompt, traces, sets, agg_prompts, aggregations, rewards))
    return sf.SpiralBatch(problems)


def tiny_qwen2(vocab: int, device: str, dtype: torch.dtype):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                                   attn_implementation="sdpa")
    return transformers.Qwen2ForCausalLM(cfg).to(device, dtype)


PEERS = {  # one timed round each after the peak-memory call (the reference takes ~25 s on a busy 2-core CPU)
    "spiral_fast": (sf.step, sf.SpiralConfig()),
    "spiral_fast + checkpointing": (sf.step, sf.SpiralConfig(gradient_checkpointing=True)),
    "step_reference": (sf.step_reference, sf.SpiralConfig()),
}
DEVICES = [pytest.param("cpu", torch.float32, id="cpu-fp32"),
           pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device,dtype", DEVICES)
@pytest.mark.parametrize("peer", list(PEERS))
def test_step_vs_reference(compare, peer, device, dtype):
    shape = SPIRAL["packing-issue"]
    batch = spiral_batch(shape, vocab=VOCAB)
    model = tiny_qwen2(VOCAB, device, dtype)
    fn, config = PEERS[peer]
    model.train()  # HF checkpoints in train mode only (the model has no dropout)
    seqs = batch.trained_sequences([0], *(torch.zeros(n) for n in (len(batch.advantage_inputs().rewards),
                                                                     len(batch.advantage_inputs().trace_problem))))
    packed = sf.pack_sequences(seqs.tokens)
    trained = int(seqs.response_lens.sum())
    group = f"SPIRAL step tiny-qwen2 {shape.name} G={shape.aggregations} {device}-{str(dtype)[6:]} ({trained} trained tok)"
    encoded = packed.num_tokens if peer.startswith("spiral_fast") else int(packed.seq_lengths.sum())
    if device == "cpu":
        _malloc_trim()
    compare(group, peer, lambda: (fn(model, batch, config=config), model.zero_grad(set_to_none=True)),
            device=device, rounds=1, note=f"{encoded} tokens encoded")


def _malloc_trim() -> None:
    libc = ctypes.util.find_library("c")
    if libc is not None and hasattr(ctypes.CDLL(libc), "malloc_trim"):
        ctypes.CDLL(libc).malloc_trim(0)
