"""A tiny training setup for tests/test_train*.py, built in code: a word-level tokenizer with a
small chat template and a random 2-layer Qwen2 saved to a folder, a 20-problem arithmetic JSONL,
a TOML config and ``--set`` overrides for tiny sizes."""

from __future__ import annotations

import json
import os

WORDS = ["<pad>", "<eos>", "<unk>", "<user>", "<assistant>", "+", "=", "?", "\\boxed{", "}", "candidate", ":"] + [
    str(d) for d in range(10)
]
CHAT_TEMPLATE = "{% for m in messages %}<user> {{ m['content'] }} {% endfor %}<assistant>"


def save_tiny_model(path: str) -> str:
    """Tokenizer (tokenizers WordLevel, whitespace split) + random Qwen2 (float32) in ``path``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(WORDS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        eos_token_id=1,
        pad_token_id=0,
        bos_token_id=None,
    )
    Qwen2ForCausalLM(config).save_pretrained(path)
    return path


def write_problems(path: str, n: int = 20) -> str:
    """n problems "a + b = ?" with single-digit sums (a random model hits some of them)."""
    with open(path, "w") as fh:
        for i in range(n):
            a, b = i % 5, (i * 3) % 5
            fh.write(json.dumps({"problem": f"{a} + {b} = ?", "answer": str(a + b)}) + "\n")
    return path


TINY = [
    'model.dtype="float32"',
    "lora.rank=4",
    "lora.alpha=8",
    "rollout.problems_per_step=4",
    "rollout.num_traces=4",
    "rollout.set_size=2",
    "rollout.num_sets=2",
    "rollout.num_aggregations=2",
    "rollout.max_new_tokens=4",
    "rollout.agg_max_new_tokens=4",
    "rollout.max_extra_rounds=2",
    "optim.lr=1e-2",
    "optim.warmup_steps=2",
    'train.device="cpu"',
    "train.save_every=2",
    'prompts.search="{problem}"',
    'prompts.aggregation="{problem} {candidates} ="',
    'prompts.candidate="candidate {index} : {solution}"',
]


def setup(tmp: str) -> tuple[str, list[str]]:
    """(config path, overrides) of a tiny run in ``tmp`` (model, data, output inside it)."""
    model = save_tiny_model(os.path.join(tmp, "model"))
    data = write_problems(os.path.join(tmp, "train.jsonl"))
    config = os.path.join(tmp, "run.toml")
    with open(config, "w") as fh:
        fh.write(
            f'[model]\npath = "{model}"\n[data]\ntrain = "{data}"\neval = "{data}"\n'
            f'[train]\nsteps = 3\nseed = 1\noutput = "{os.path.join(tmp, "out")}"\n'
        )
    return config, list(TINY)
