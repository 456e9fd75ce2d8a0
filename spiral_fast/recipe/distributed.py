"""Processes of the training command: the process group under torchrun and FSDP2 sharding (the
collectives and the gathered trainable state are in ``spiral_fast.distributed``).

Under FSDP2 each rank samples its own share of the problems. HF ``generate`` cannot run on the
sharded model (every forward all-gathers each layer, a collective all ranks must join, while ranks
generate different numbers of tokens), so with engine "hf" each rank keeps an unsharded copy of the
model for sampling (``HFSampler(copy=True)``), refreshed after each step from the full (all-gathered) trainable weights: the
full weights are gathered once per step, not per generated token. With engine "vllm" each rank runs
its own vLLM engine (``spiral_fast.VLLMSampler``), synced the same way.
"""

from __future__ import annotations

import os

import torch

from spiral_fast.distributed import barrier

# whether ``init`` started the default process group (then ``close`` ends it; one the caller started is theirs)
_STARTED = [False]


def init(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); under torchrun (WORLD_SIZE set) the default process group is
    initialised (nccl on CUDA, gloo on the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
        _STARTED[0] = True
    rank = torch.distributed.get_rank() if world > 1 else 0
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device(device)


def close() -> None:
    """End the default process group if ``init`` started it: a barrier (no rank tears down its
    connections while a peer is still in a collective), then ``destroy_process_group`` (a process
    that exits with the group alive can abort in the backend's teardown). Call it on every rank after
    the last collective."""
    if _STARTED[0] and torch.distributed.is_initialized():
        barrier()
        torch.distributed.destroy_process_group()
    _STARTED[0] = False


def shard(model, device: torch.device):
    """``fully_shard`` each decoder layer, then the HF model (the root: embedding, norm, LM head).
    A PeftModel is sharded through its wrapped model (the step finds the root there)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(getattr(base, base.base_model_prefix, None), "layers", None)
    if layers is None:
        raise ValueError(
            f"cannot find the decoder layers of {type(base).__name__} (model.{base.base_model_prefix}"
            ".layers) to shard with FSDP2"
        )
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(base, mesh=mesh)
    return model
