"""What rollouts and evaluation sample from: the ``Sampler`` interface and its Hugging Face sampler.

A sampler has three methods: ``generate`` (responses and their behaviour log-probs for a batch of
token-id prompts), ``sync`` (take the trainer's current weights) and ``close``. ``HFSampler`` runs
transformers ``generate`` on the model itself, or on an unsharded copy refreshed by ``sync`` (the
copy FSDP2 training needs: see ``HFSampler``); ``spiral_fast.VLLMSampler`` runs an in-process vLLM
engine. ``as_sampler`` turns what older call sites pass (a plain HF model with ``engine="hf"``, a
``VLLMSampler`` with ``engine="vllm"``) into a sampler.
"""
from __future__ import annotations

import abc
import copy as copylib
import time

import torch

from spiral_fast.distributed import trainable_state
from spiral_fast.rollout.hf import sample_hf

ENGINES = ("hf", "vllm")


class Sampler(abc.ABC):
    """The interface rollouts, evaluation and the training loop sample through.

    ``generate(prompts, num_samples, *, max_new_tokens, temperature, eos_token_id=None,
    logprobs=True)`` -> (responses, logprobs): ``responses[p * num_samples + s]`` token ids of the
    s-th response to ``prompts[p]`` (ending with ``eos_token_id`` when sampled, else after
    ``max_new_tokens``); ``logprobs`` the per-token log-probs under softmax(logits / temperature),
    or None when ``logprobs=False``. Sampling is plain: no top-k, no top-p.
    ``sync(model)`` -> dict: take ``model``'s current weights (the trainer owns them and pushes).
    ``close()``: free the sampler's resources (idempotent); samplers are context managers.
    ``engine``: "hf" or "vllm", the kind of sampler (what ``engine=`` names in older calls).
    """

    engine = "hf"

    @abc.abstractmethod
    def generate(self, prompts: list[list[int]], num_samples: int, *, max_new_tokens: int, temperature: float,
                 eos_token_id: int | None = None, logprobs: bool = True):
        ...

    @abc.abstractmethod
    def sync(self, model) -> dict:
        ...

    def close(self) -> None:
        """Nothing to free by default."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class HFSampler(Sampler):
    """Sampling with transformers ``generate``, all prompts of a call in one left-padded batch.

    model: a HF causal LM or a LoRA ``peft.PeftModel``. ``copy=False`` samples from ``model`` itself
    (one process: the trained weights are the sampled ones, ``sync`` has nothing to do).
    ``copy=True`` samples from an unsharded deep copy made now, before the model is sharded:
    under FSDP2 ``generate`` cannot run on the sharded model (every forward all-gathers each layer, a
    collective all ranks must join, while ranks generate different numbers of tokens), so
    ``sync(model)`` loads the full (all-gathered) trainable weights into the copy once per step.
    pad_token_id fills the left padding (never attended to).
    """

    def __init__(self, model, *, pad_token_id: int = 0, copy: bool = False):
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "generate"):
            raise ValueError(f"model must be a Hugging Face causal LM (with generate), got {type(model).__name__}")
        self.model = copylib.deepcopy(model) if copy else model
        self.copy = copy
        self.pad_token_id = int(pad_token_id)

    def generate(self, prompts, num_samples, *, max_new_tokens, temperature, eos_token_id=None, logprobs=True):
        return sample_hf(self.model, prompts, num_samples, max_new_tokens=max_new_tokens, temperature=temperature,
                         eos_token_id=eos_token_id, pad_token_id=self.pad_token_id, logprobs=logprobs)

    def sync(self, model) -> dict:
        if not self.copy:
            return {"seconds": 0.0, "bytes": 0}
        start = time.perf_counter()
        state = trainable_state(model, full=True)
        missing = set(state) - set(self.model.state_dict())
        if missing:
            raise RuntimeError(f"the sampling copy lacks {sorted(missing)[:3]}")
        self.model.load_state_dict(state, strict=False)
        return {"seconds": time.perf_counter() - start,
                "bytes": sum(t.numel() * t.element_size() for t in state.values())}


def as_sampler(model, engine: str | None = "hf", *, pad_token_id: int = 0) -> Sampler:
    """A Sampler as given, or a plain HF model wrapped in an ``HFSampler`` (the older call form).
    ``engine``, the older switch, is checked, never needed: "hf" (the old default) or None take any
    sampler; "vllm" needs a ``spiral_fast.VLLMSampler``. ValueError for an unknown engine or a
    plain model with engine "vllm"."""
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if isinstance(model, Sampler):  # its own padding: pad_token_id is for a plain model
        if engine == "vllm" and model.engine != "vllm":
            raise ValueError(f"engine='vllm' samples through a spiral_fast.VLLMSampler, got {type(model).__name__}")
        return model
    if engine == "vllm":
        raise ValueError(f"engine='vllm' samples through a spiral_fast.VLLMSampler, got {type(model).__name__}")
    return HFSampler(model, pad_token_id=pad_token_id)
