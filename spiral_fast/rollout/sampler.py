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
from collections.abc import Callable

import torch

from spiral_fast.distributed import trainable_state
from spiral_fast.models.lora import is_peft_model, lora_weight_names, merged_state_dict, unwrap_peft
from spiral_fast.rollout.hf import decodable, row_seed, sample_decode, sample_hf

ENGINES = ("hf", "vllm")


class Sampler(abc.ABC):
    """The interface rollouts, evaluation and the training loop sample through.

    ``generate(prompts, num_samples, *, max_new_tokens, temperature, eos_token_id=None,
    logprobs=True, seeds=None)`` -> (responses, logprobs): ``responses[p * num_samples + s]`` token ids of the
    s-th response to ``prompts[p]`` (ending with ``eos_token_id`` when sampled, else after
    ``max_new_tokens``); ``logprobs`` the per-token log-probs under softmax(logits / temperature),
    or None when ``logprobs=False``. Sampling is plain: no top-k, no top-p. ``seeds``: None samples
    from the sampler's own RNG; one int per prompt makes a prompt's responses depend on its seed
    alone, not on the other prompts of the call (up to float rounding).
    ``sync(model)`` -> dict: take ``model``'s current weights (the trainer owns them and pushes).
    ``close()``: free the sampler's resources (idempotent); samplers are context managers.
    ``engine``: "hf" or "vllm", the kind of sampler (what ``engine=`` names in older calls).
    """

    engine = "hf"

    @abc.abstractmethod
    def generate(
        self,
        prompts: list[list[int]],
        num_samples: int,
        *,
        max_new_tokens: int,
        temperature: float,
        eos_token_id: int | None = None,
        logprobs: bool = True,
        seeds: list[int] | None = None,
    ): ...

    @abc.abstractmethod
    def sync(self, model) -> dict: ...

    def search_and_aggregate(
        self,
        prompts: list[list[int]],
        num_traces: int,
        agg_prompts_of: Callable[[int, list[list[int]]], list[list[int]]],
        num_aggregations: int,
        *,
        max_new_tokens: int,
        agg_max_new_tokens: int,
        temperature: float,
        eos_token_id: int | None = None,
        logprobs: bool = True,
        seeds: list[int] | None = None,
        on_progress: Callable[[str, int, int], None] | None = None,
    ):
        """A SPIRAL rollout's two sampling phases: N = ``num_traces`` traces per prompt, then for each
        problem p its aggregation prompts ``agg_prompts_of(p, traces_of_p)`` (M of them, the same M for
        every problem) and G = ``num_aggregations`` responses to each.

        Returns (traces, trace_logprobs, aggregations, agg_logprobs), laid out as ``generate``'s:
        ``traces[p * N + i]``, ``aggregations[(p * M + j) * G + g]``; the log-probs are None when
        ``logprobs=False``. ``seeds``: one per problem (its traces use it, its aggregations seeds
        derived from it), or None for the sampler's own RNG. ``on_progress(phase, done, total)`` is
        called as phases finish ("traces", "aggregations"; counted in problems).

        This default runs the phases one after the other, each in one ``generate`` call; a sampler
        with a request-level engine may call ``agg_prompts_of`` as each problem's traces finish, in
        any problem order (the caller must not depend on the order).
        """
        common = dict(temperature=temperature, eos_token_id=eos_token_id, logprobs=logprobs)
        total = len(prompts)
        # a Sampler written before seeds existed takes no seeds keyword: pass it only when given
        seeded = lambda given: {} if given is None else {"seeds": given}
        traces, trace_lp = self.generate(prompts, num_traces, max_new_tokens=max_new_tokens, **seeded(seeds), **common)
        if on_progress is not None:
            on_progress("traces", total, total)
        agg_prompts, agg_seeds = [], None if seeds is None else []
        for p in range(total):
            own = agg_prompts_of(p, traces[p * num_traces : (p + 1) * num_traces])
            agg_prompts += own
            if seeds is not None:
                agg_seeds += [row_seed(seeds[p], "aggregation", j) for j in range(len(own))]
        if len(agg_prompts) % total:
            raise ValueError("agg_prompts_of must give every problem the same number of aggregation prompts")
        aggs, agg_lp = self.generate(
            agg_prompts, num_aggregations, max_new_tokens=agg_max_new_tokens, **seeded(agg_seeds), **common
        )
        if on_progress is not None:
            on_progress("aggregations", total, total)
        return traces, trace_lp, aggs, agg_lp

    def close(self) -> None:
        """Nothing to free by default."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class HFSampler(Sampler):
    """Sampling with transformers ``generate``, all prompts of a call in one left-padded batch.

    model: a HF causal LM or a LoRA ``peft.PeftModel``. ``copy=False`` samples from ``model``'s
    current weights (one process: the trained weights are the sampled ones, ``sync`` is optional);
    a LoRA ``PeftModel`` is sampled from merged weights by default (``merged``). ``copy=True``
    samples from an unsharded deep copy made now, before the model is sharded: under FSDP2
    ``generate`` cannot run on the sharded model (every forward all-gathers each layer, a collective
    all ranks must join, while ranks generate different numbers of tokens), so ``sync(model)`` loads
    the full (all-gathered) trainable weights into the copy once per step.
    merged: None (default) is True for a LoRA ``PeftModel`` with ``copy=False``, else False. True
    samples the PeftModel from a plain copy of its base model whose LoRA layers hold
    W + scale * B @ A, computed out of place (``models.lora.merged_state_dict``; PEFT's in-place
    merge / unmerge would round the frozen base weights a little at every sync): the copy shares
    every frozen tensor with the trainer and owns only the merged layers. ``sync(model)`` refreshes
    the merged layers; so does ``generate`` when the PeftModel's parameters or active adapters
    changed since (tensor version counters: an optimizer step or ``load_state_dict`` counts), so it
    never samples stale weights. Inside ``model.disable_adapter()`` it samples the PeftModel itself
    (the base policy). Decode-step cost of merged vs unmerged LoRA on SmolLM2-135M + LoRA r16
    (all-linear), fp32: ``scripts/profile_rollout.py`` measures both side by side.
    pad_token_id fills the left padding (never attended to).
    """

    def __init__(self, model, *, pad_token_id: int = 0, copy: bool = False, merged: bool | None = None):
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "generate"):
            raise ValueError(f"model must be a Hugging Face causal LM (with generate), got {type(model).__name__}")
        if merged not in (None, True, False):
            raise ValueError(f"merged must be None, True or False, got {merged!r}")
        if merged and not is_peft_model(model):
            raise ValueError(f"merged=True samples a LoRA PeftModel from merged weights, got {type(model).__name__}")
        if merged and copy:
            raise ValueError("merged=True and copy=True: the merged copy is already a copy (FSDP2 uses copy=True)")
        if merged is None:
            merged = not copy and _mergeable(model)
        self.copy, self.merged = copy, merged
        self.pad_token_id = int(pad_token_id)
        self._source = model if merged else None  # the trainer's PeftModel: read, never written
        if merged:
            self.model = merged_copy(model)
            self._seen = _fingerprint(model)
        else:
            self.model = copylib.deepcopy(model) if copy else model

    def _sampling_model(self):
        """The model ``generate`` runs: the merged copy, refreshed first when the PeftModel changed
        since the last refresh; the PeftModel itself while its adapters are disabled."""
        if not self.merged:
            return self.model
        if _adapters_disabled(self._source):
            return self._source
        seen = _fingerprint(self._source)
        if seen != self._seen:
            refresh_merged(self.model, self._source)
            self._seen = seen
        return self.model

    def generate(
        self, prompts, num_samples, *, max_new_tokens, temperature, eos_token_id=None, logprobs=True, seeds=None
    ):
        model = self._sampling_model()
        # sample_decode: generate's draws, one prefill per distinct prompt; models it cannot run use generate
        sample = sample_decode if decodable(model) else sample_hf
        return sample(
            model,
            prompts,
            num_samples,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            eos_token_id=eos_token_id,
            pad_token_id=self.pad_token_id,
            logprobs=logprobs,
            seeds=seeds,
        )

    def sync(self, model) -> dict:
        if self.merged:
            start = time.perf_counter()
            moved = refresh_merged(self.model, model)
            self._source, self._seen = model, _fingerprint(model)
            return {"seconds": time.perf_counter() - start, "bytes": moved}
        if not self.copy:
            return {"seconds": 0.0, "bytes": 0}
        start = time.perf_counter()
        state = trainable_state(model, full=True)
        missing = set(state) - set(self.model.state_dict())
        if missing:
            raise RuntimeError(f"the sampling copy lacks {sorted(missing)[:3]}")
        self.model.load_state_dict(state, strict=False)
        return {
            "seconds": time.perf_counter() - start,
            "bytes": sum(t.numel() * t.element_size() for t in state.values()),
        }


def _mergeable(model) -> bool:
    """A PeftModel whose adapters ``merged_state_dict`` can merge: LoRA layers only (no prompt
    learning, no DoRA, no adapter on the LM head). Anything else is sampled as it is."""
    if not is_peft_model(model):
        return False
    try:
        unwrap_peft(model)
    except ValueError:
        return False
    active = list(getattr(model, "active_adapters", None) or [model.active_adapter])
    return all(
        getattr(model.peft_config[a], "peft_type", None) is not None
        and str(getattr(model.peft_config[a].peft_type, "value", model.peft_config[a].peft_type)) == "LORA"
        and not getattr(model.peft_config[a], "use_dora", False)
        for a in active
    )


def _adapters_disabled(model) -> bool:
    """True inside ``model.disable_adapter()`` (PEFT flags every tuner layer)."""
    return any(getattr(m, "disable_adapters", False) for m in model.modules() if hasattr(m, "get_base_layer"))


def _fingerprint(model) -> tuple:
    """What changes when the PeftModel's weights do: each parameter's storage and in-place version
    counter (an optimizer step, ``copy_`` and ``load_state_dict`` bump it), and the active adapters."""
    active = tuple(getattr(model, "active_adapters", None) or [model.active_adapter])
    return active, tuple((p.data_ptr(), p._version) for p in model.parameters())


def merged_copy(model):
    """A plain transformers model (no PEFT) with ``model``'s merged weights (``merged_state_dict``):
    the merged LoRA layers in tensors of its own, every other tensor shared with ``model``'s frozen
    base (no copy). Frozen (requires_grad False), eval mode."""
    base = unwrap_peft(model)
    state = merged_state_dict(model)
    lora_keys = set(lora_weight_names(model))
    with torch.no_grad():
        state = {k: (v.detach().clone() if k in lora_keys else v.detach()) for k, v in state.items()}
    with torch.random.fork_rng(devices=[]):  # its throw-away random init must not move the caller's RNG
        sampling = type(base)(base.config)  # then every tensor is replaced
    missing, unexpected = sampling.load_state_dict(state, strict=False, assign=True)
    tied = set(getattr(sampling, "_tied_weights_keys", None) or [])
    if unexpected or set(missing) - tied:
        raise RuntimeError(
            f"the merged sampling copy does not match the base model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    if base.config.tie_word_embeddings:
        sampling.tie_weights()
    sampling.to(next(base.parameters()).dtype)
    sampling.generation_config = copylib.deepcopy(base.generation_config)
    sampling.requires_grad_(False)
    sampling._spiral_lora_keys = sorted(lora_keys)
    return sampling.eval()


def refresh_merged(sampling, model) -> int:
    """Write ``model``'s current merged LoRA weights into the merged copy ``sampling`` in place;
    returns the bytes written. The trainer's tensors are only read."""
    state = merged_state_dict(model)
    params = dict(sampling.named_parameters())
    moved = 0
    with torch.no_grad():
        for key in sampling._spiral_lora_keys:
            params[key].copy_(state[key])
            moved += state[key].numel() * state[key].element_size()
    return moved


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
