"""The tail of a step after its backward: the gradient average over ranks (decided here, once, for
``step`` and ``step_reference``), then with an optimizer clip, step and zero_grad, unless the step
is non-finite (its loss or gradient norm is inf or NaN on any rank): then the gradients are
dropped and the weights and the optimizer's state stay as they were."""

from __future__ import annotations

import torch

from spiral_fast.distributed import average_gradients, is_dtensor, max_int, world_size
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


def _finite(t) -> bool:
    """Whether every element of ``t`` (a tensor, a DTensor or a number) is finite (a host sync)."""
    if is_dtensor(t):
        t = t.full_tensor()
    return bool(torch.isfinite(torch.as_tensor(t)).all())


def finish(model, optimizer, config: SpiralConfig, *, ddp: bool, loss=None):
    """Average the gradients over ranks when ``averages_gradients`` says so; then with an optimizer:
    the global gradient norm (clipped to ``config.max_grad_norm`` when set), and unless the step is
    non-finite ``optimizer.step()``; ``zero_grad`` in both cases. ``loss``: this rank's loss (a
    tensor or number), checked with the norm; the verdict is agreed over ranks (a max all-reduce),
    so every rank skips or none does. A skipped step leaves the weights and the optimizer state
    (AdamW moments and step count) untouched.

    Returns (gradient norm before clipping, or None without an optimizer or without clipping;
    skipped: whether the step was non-finite and the optimizer did not step). ddp: the model was a
    DistributedDataParallel (``Unwrapped.average_grads``)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if averages_gradients(params, optimizer, ddp):
        average_gradients(model)
    if optimizer is None:
        return None, False
    norm = total = None
    if params:
        if config.max_grad_norm is not None:
            norm = total = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        else:
            total = torch.nn.utils.get_total_norm([p.grad for p in params])
    bad = (total is not None and not _finite(total)) or (loss is not None and not _finite(loss))
    skipped = bool(max_int(int(bad)))  # the norm is global already; the loss is this rank's
    if not skipped:
        optimizer.step()
    optimizer.zero_grad()
    return norm, skipped
