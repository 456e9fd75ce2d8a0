"""packed_hidden_states: a trie-packed forward of tiny random HF models gives every sequence's
log-probs and parameter gradients of running each sequence alone."""

import pytest
import torch
from packing_cases import random_forest
from training_cases import assert_grads_close, grads

import spiral_fast as sf

transformers = pytest.importorskip("transformers")
VOCAB = 97


def tiny_model(arch: str, **overrides):
    torch.manual_seed(0)
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        attn_implementation="eager",
    )
    kw.update(overrides)
    if arch == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kw))
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw))
    return model.float()


def per_sequence_logprobs(model, seqs):
    out = []
    device = model.lm_head.weight.device
    for seq in seqs:
        ids = torch.tensor(seq, device=device)[None]
        logits = model(input_ids=ids).logits[0, :-1]
        out.append(torch.log_softmax(logits.float(), -1).gather(-1, ids[0, 1:, None])[:, 0])
    return torch.cat(out)


def packed_logprobs(model, packed):
    hidden = sf.packed_hidden_states(model, packed)
    rows = packed.prediction_rows
    return sf.token_logprobs(hidden[rows.hidden_index], model.lm_head.weight, rows.target)


FORESTS = {
    "shared": dict(num_seqs=10, vocab=4, max_len=18),
    "unshared-and-one-token": dict(num_seqs=6, vocab=VOCAB, max_len=12, share_prob=0.0),
}


@pytest.mark.parametrize("forest", list(FORESTS), ids=list(FORESTS))
@pytest.mark.parametrize("share", ["trie", "none"])
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_packed_logprobs_and_grads_match_per_sequence(arch, share, forest):
    model = tiny_model(arch)
    seqs = random_forest(7, **FORESTS[forest]) + [[5]]
    packed = sf.pack_sequences(seqs, share=share)
    if share == "trie" and forest == "shared":
        assert packed.dedup_ratio > 1.3
    weights = torch.randn(packed.prediction_rows.target.numel())  # random per-token upstream gradient

    got = packed_logprobs(model, packed)
    (got * weights).sum().backward()
    got_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref = per_sequence_logprobs(model, seqs)
    (ref * weights).sum().backward()

    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert (got - ref).abs().max().item() <= 1e-4
    assert_grads_close(got_grads, grads(model), rel=1e-4)
    assert model.config._attn_implementation == "eager"


def test_hidden_states_shape_and_positions():
    model = tiny_model("qwen2")
    packed = sf.pack_sequences([[1, 2, 3], [1, 2, 4, 5]])
    hidden = sf.packed_hidden_states(model, packed)
    assert hidden.shape == (packed.num_tokens, 64)
    # the base model alone (no logits) over the same tokens, one sequence
    alone = model.model(input_ids=torch.tensor([[1, 2, 4, 5]])).last_hidden_state[0]
    assert torch.allclose(hidden[packed.token_index(1)], alone, atol=1e-5)


def test_registered_without_mask_function():
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    import spiral_fast.models  # noqa: F401 - registers

    assert "spiral_fast" in AttentionInterface._global_mapping
    assert "spiral_fast" not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping  # so no mask is built


def test_attn_implementation_restored_on_error(monkeypatch):
    import spiral_fast.models.hf as hf

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(hf, "tree_attention", boom)
    model = tiny_model("llama")
    with pytest.raises(RuntimeError, match="boom"):
        sf.packed_hidden_states(model, sf.pack_sequences([[1, 2]]))
    assert model.config._attn_implementation == "eager"


def test_max_positions_checked():
    model = tiny_model("qwen2", max_position_embeddings=8)
    with pytest.raises(ValueError, match="sequences\\[1\\] has 9 tokens.*max_position_embeddings=8"):
        sf.packed_hidden_states(model, sf.pack_sequences([[1] * 8, [2] * 9]))


def test_token_outside_vocab():
    model = tiny_model("qwen2")
    with pytest.raises(ValueError, match="sequences\\[1\\].*vocab_size=97"):
        sf.packed_hidden_states(model, sf.pack_sequences([[1, 2], [3, 97]]))


def test_unsupported_models():
    with pytest.raises(ValueError, match="PreTrainedModel"):
        sf.packed_hidden_states(torch.nn.Linear(2, 2), sf.pack_sequences([[1]]))
    sliding = tiny_model("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=0)
    with pytest.raises(ValueError, match="sliding_attention"):
        sf.packed_hidden_states(sliding, sf.pack_sequences([[1]]))
    t5 = transformers.T5ForConditionalGeneration(
        transformers.T5Config(vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=16, num_layers=1, num_heads=2)
    )
    with pytest.raises(ValueError, match="encoder-decoder"):
        sf.packed_hidden_states(t5, sf.pack_sequences([[1]]))
    with pytest.raises(ValueError, match="PackedBatch"):
        sf.packed_hidden_states(tiny_model("llama"), [[1, 2]])


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_packed_logprobs_match_per_sequence_cuda(arch):
    # CUDA: tree_attention's auto backend is the Triton kernel; float32 keeps the 1e-4 bound meaningful
    model = tiny_model(arch, attn_implementation="sdpa").cuda()
    seqs = random_forest(11, num_seqs=12, vocab=5, max_len=40) + [[3]]
    packed = sf.pack_sequences(seqs)
    weights = torch.randn(packed.prediction_rows.target.numel(), device="cuda")
    got = packed_logprobs(model, packed.to("cuda"))
    (got * weights).sum().backward()
    got_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref = per_sequence_logprobs(model, seqs)
    (ref * weights).sum().backward()
    assert (got - ref).abs().max().item() <= 1e-4
    assert_grads_close(got_grads, grads(model), rel=1e-4)


def test_activation_checkpointing_needs_the_implementation_held():
    seqs = random_forest(5, num_seqs=6, vocab=4, max_len=10)
    packed = sf.pack_sequences(seqs)
    weights = torch.randn(packed.prediction_rows.target.numel())
    model = tiny_model("qwen2")
    (packed_logprobs(model, packed) * weights).sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # transformers 4.x (the oldest supported) has only the older name
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    with pytest.raises(ValueError, match="activation checkpointing"):
        sf.packed_hidden_states(model, packed)
    model.config._attn_implementation = "spiral_fast"  # held through the backward, as the caller must
    (packed_logprobs(model, packed) * weights).sum().backward()
    assert_grads_close(grads(model), expected, rel=1e-5)
