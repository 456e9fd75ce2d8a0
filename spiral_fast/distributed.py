"""Every torch.distributed collective of spiral_fast, over the default process group.

The lowest layer: imports only torch and the standard library. Outside torch.distributed (or with
one rank) each helper is the identity / a no-op, so single-process code calls them unconditionally.
Under the nccl backend the collectives of Python numbers run on the current CUDA device.
"""

from __future__ import annotations

import torch


def world_size(group=None) -> int:
    """Ranks of ``group`` (default: the default process group); 1 outside torch.distributed."""
    dist = torch.distributed
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (identity on one process): one collective. Returns x."""
    if world_size() > 1:
        torch.distributed.all_reduce(x)
    return x


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    """Element-wise max over ranks in place (identity on one process): one collective. Returns x."""
    if world_size() > 1:
        torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.MAX)
    return x


def _number_device() -> torch.device:
    """Where a collective of Python numbers runs: CUDA under nccl, else the CPU."""
    if world_size() > 1 and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_floats(values: list[float]) -> list[float]:
    """Element-wise float64 sum over ranks of Python numbers (identity on one process): one collective."""
    t = torch.tensor(values, dtype=torch.float64, device=_number_device())
    return all_reduce_sum(t).tolist()


def max_int(value: int) -> int:
    """The largest ``value`` over ranks (identity on one process): one collective."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_number_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def sum_ints(values: list[int], device: torch.device) -> list[int]:
    """Element-wise sum over ranks (identity on one process)."""
    if not torch.distributed.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    torch.distributed.all_reduce(t)
    return [int(round(v)) for v in t.tolist()]


def barrier() -> None:
    """Wait for every rank (no-op outside torch.distributed)."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def is_dtensor(t) -> bool:
    """Whether t is a DTensor (an FSDP2-sharded parameter or gradient)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return False
    return isinstance(t, DTensor)


def average_gradients(model: torch.nn.Module) -> None:
    """Average the plain (non-DTensor) ``.grad`` of every parameter over the default process
    group in one all-reduce (what DDP's reducer does after backward)."""
    params = [p for p in model.parameters() if p.grad is not None]
    world = world_size()
    if not params or world == 1:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.grad.numel()].view_as(p.grad))
        offset += p.grad.numel()


def trainable_state(model, *, full: bool) -> dict:
    """The trainable parameters' state dict (full tensors on every rank when ``full``: under FSDP2 a
    collective every rank joins)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=full, ignore_frozen_params=True))
