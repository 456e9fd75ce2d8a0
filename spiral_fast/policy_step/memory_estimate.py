"""``max_tokens_per_micro_batch="auto"``: the largest micro-batch budget whose estimated activation
memory fits a memory target.

The estimate is per unique (packed) token, from the model's config alone: what autograd keeps for
the backward of one Llama-style decoder layer (two RMSNorms, q/k/v/o, RoPE, attention over the
token's gathered segment context, a gated MLP; LoRA's rank-r intermediates, or the norms' extra
inputs under full fine-tuning) times the number of layers, plus one layer's working set in the
backward. With activation checkpointing only each layer's input is kept, plus one layer recomputed.
Weights, gradients and optimizer state are not per token: they are already resident when the free
memory is read, so the target is taken from what is free at the step.

The target: ``memory_budget_gb`` GiB, or (None) ``MEMORY_FRACTION`` of the memory the device has
free (CUDA: ``torch.cuda.mem_get_info``; CPU: MemAvailable of /proc/meminfo, else psutil).
Measured against peaks in tests/test_memory_estimate.py and benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
import warnings

import torch

# memory_budget_gb=None: this share of the device's free memory. It leaves room for what the estimate
# does not model: on the CPU glibc keeps freed pages between micro-batches (the peak over several
# micro-batches measured 1.24-1.43x one micro-batch's estimate), other processes and a sampler share
# the device. It costs no speed where it was measured: on the 2-core CPU (SmolLM2 + LoRA, fp32) a
# budget of 1024 tokens was as fast as 8192, and faster once LoRA was fused (benchmarks/RESULTS.md,
# 2026-12-07); 15% kept that benchmark's peak under half of TRL's, 25% did not (0.67x). Not yet measured
# on a GPU, where larger GEMMs pay more: set memory_budget_gb or an integer budget there.
MEMORY_FRACTION = 0.15
# bounds of an "auto" budget: below MIN_AUTO_TOKENS the GEMMs get thin; the cap keeps the estimate's
# linear model within the range it was checked on
MIN_AUTO_TOKENS = 256
MAX_AUTO_TOKENS = 1 << 16
# "auto" for a model without a transformers config, or where the free memory cannot be read (the integer
# default before "auto")
FALLBACK_TOKENS = 8192
_WARNED: list = []  # the unreadable-free-memory warning, once per process
# each token's keys and values are gathered into its own segment's context and its child segments':
# about three copies per token on SPIRAL batches (a prompt shared by 4-8 responses)
CONTEXT_COPIES = 3
# what the count above misses (autograd temporaries, attention weights of masked segments, allocator
# slack), measured: the count alone was 0.65x the peak of SmolLM2-135M + LoRA r=16, fp32, 4194 tokens
# (2.52 MB/token measured, benchmarks/RESULTS.md), 1.11x that of a tiny full fine-tuned Qwen2
# (tests/test_memory_estimate.py); erring high keeps "auto" inside its target
SLACK = 1.5
# the layer being differentiated: its gradients and temporaries, in units of one layer's saved bytes
BACKWARD_WORKING_LAYERS = 2


def _dims(cfg) -> dict:
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    hidden = int(cfg.hidden_size)
    heads = int(getattr(cfg, "num_attention_heads", 1))
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    return dict(
        layers=int(cfg.num_hidden_layers),
        hidden=hidden,
        intermediate=int(getattr(cfg, "intermediate_size", None) or 4 * hidden),
        q=heads * head_dim,
        kv=kv_heads * head_dim,
        heads=heads,
    )


def activation_bytes_per_token(
    model_config, *, dtype=torch.float32, lora_rank: int | None = 16, checkpointing: bool = False
) -> int:
    """Estimated bytes of activation memory per unique token of a training forward + backward.

    model_config: a transformers config (layers, hidden / intermediate size, heads, kv heads, head
    dim); dtype: the activations' dtype; lora_rank: the LoRA rank, or None for full fine-tuning;
    checkpointing: activation checkpointing (each layer recomputed in backward).

    This counts live tensors. On the CPU the process's RSS can be larger: glibc raises its mmap
    threshold after large frees and then keeps freed forward temporaries resident. With checkpointing
    on SmolLM2 + LoRA, the RSS peak was 2.9x this estimate (0.78 vs 0.27 MB/token). The memory
    actually held after the forward was 0.13 MB/token with ``MALLOC_MMAP_THRESHOLD_=131072``, against
    0.78 without it (benchmarks/RESULTS.md, 2026-12-07). CUDA's caching allocator reuses its blocks."""
    d = _dims(model_config)
    b = torch.empty((), dtype=dtype).element_size()
    h, i, q, kv = d["hidden"], d["intermediate"], d["q"], d["kv"]
    norm = 2 * h * b + (2 * h * (4 - b) if b < 4 else 0)  # input + normalised (fp32 upcast in bf16)
    if lora_rank is None:
        norm += h * b  # the norm weight's gradient needs its input
    attn = (
        q
        + 2 * kv  # q, k, v projections
        + q
        + kv  # after RoPE
        + 2 * kv * CONTEXT_COPIES  # gathered segment contexts (k, v)
        + 2 * q
    ) * b + d["heads"] * 4  # output, its [T, q] copy; fp32 log-sum-exp
    mlp = 4 * i * b  # gate, up, act(gate), act * up
    lora = 0 if lora_rank is None else 7 * 2 * int(lora_rank) * b  # x A and its scaled copy, 7 linears
    layer = 2 * norm + attn + mlp + lora
    kept = h * b if checkpointing else layer  # per layer until its backward
    # embeddings, final norm, the hidden states the LM head reads
    return int(SLACK * (d["layers"] * kept + BACKWARD_WORKING_LAYERS * layer + 4 * h * b))


def free_memory_bytes(device) -> int | None:
    """Bytes the device has free now: CUDA ``mem_get_info``; CPU MemAvailable (Linux), else psutil
    where installed, else ``os.sysconf``'s available pages; None where none of them answers (or for
    another device type)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def memory_target_bytes(device, memory_budget_gb: float | None) -> int | None:
    """``memory_budget_gb`` GiB, or ``MEMORY_FRACTION`` of the device's free memory when None (None
    when the free memory cannot be read)."""
    if memory_budget_gb is not None:
        return int(memory_budget_gb * 2**30)
    free = free_memory_bytes(device)
    return None if free is None else int(MEMORY_FRACTION * free)


def _lora_rank(model) -> int | None:
    """The largest LoRA rank among the model's trainable adapters, or None (full fine-tuning)."""
    ranks = [int(p.shape[0]) for n, p in model.named_parameters() if p.requires_grad and "lora_A" in n]
    return max(ranks) if ranks else None


def auto_budget(model, *, memory_budget_gb: float | None = None, checkpointing: bool = False) -> int:
    """The largest budget (unique tokens per micro-batch) whose estimated activations fit the target,
    within [MIN_AUTO_TOKENS, MAX_AUTO_TOKENS]. ``model``: a Hugging Face causal LM (or its PEFT wrapper)."""
    param = next(model.parameters())
    per_token = activation_bytes_per_token(
        model.config, dtype=param.dtype, lora_rank=_lora_rank(model), checkpointing=checkpointing
    )
    target = memory_target_bytes(param.device, memory_budget_gb)
    if target is None:
        if not _WARNED:
            _WARNED.append(True)
            warnings.warn(
                f'max_tokens_per_micro_batch="auto": the free memory of {param.device} cannot be read; '
                f"using {FALLBACK_TOKENS} tokens (set memory_budget_gb or an integer budget)",
                stacklevel=2,
            )
        return FALLBACK_TOKENS
    tokens = target // max(1, per_token)
    return int(min(MAX_AUTO_TOKENS, max(MIN_AUTO_TOKENS, tokens)))


def micro_batch_budget(model, config) -> int:
    """``config.max_tokens_per_micro_batch`` as an int: itself, or ``auto_budget`` for "auto"."""
    budget = config.max_tokens_per_micro_batch
    if budget != "auto":
        return budget
    if not hasattr(getattr(model, "config", None), "num_hidden_layers"):
        return FALLBACK_TOKENS  # not a transformers decoder: nothing to estimate from
    return auto_budget(model, memory_budget_gb=config.memory_budget_gb, checkpointing=config.gradient_checkpointing)
