"""The tail of a step after its backward: the gradient average over ranks (decided here, once, for
``step`` and ``step_reference``), then with an optimizer clip, step and zero_grad."""
from __future__ import annotations

import torch

from spiral_fast.distributed import average_gradients, is_dtensor, world_size
from spiral_fast.policy_step.config import SpiralConfig


def averages_gradients(params: list, optimizer, ddp: bool) -> bool:
    """Whether the step averages the gradients over ranks itself (the loss was scaled by the world
    size, so the average is the whole-batch gradient). Never on one process or without gradients.
    Without an optimizer only for a DDP model (``Unwrapped.average_grads``: its ``.grad`` as DDP's
    backward would leave it; a plain model's gradients are the caller's to reduce). With an
    optimizer for plain gradients, DDP or not; FSDP2's DTensor gradients are already reduce-scattered."""
    if world_size() == 1 or not params:
        return False
    return ddp if optimizer is None else not is_dtensor(params[0].grad)


def finish(model, optimizer, config: SpiralConfig, *, ddp: bool) -> float | None:
    """Average the gradients over ranks when ``averages_gradients`` says so; then with an optimizer:
    clip, step, zero_grad. Returns the gradient norm before clipping (None without an optimizer or
    without clipping). ddp: the model was a DistributedDataParallel (``Unwrapped.average_grads``)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if averages_gradients(params, optimizer, ddp):
        average_gradients(model)
    if optimizer is None:
        return None
    norm = None
    if config.max_grad_norm is not None and params:
        norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad()
    return norm
