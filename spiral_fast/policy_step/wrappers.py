"""Wrappers users put around a model before the step: DDP, ``torch.compile``, FSDP2.

The step never runs the wrapped model's own forward (it calls the decoder and reads the LM head
itself), so each wrapper is handled here: unwrapped where its forward adds nothing the step needs,
its hooks run around the step's forward where they hold the weights (FSDP2), rejected with what to
pass instead where it cannot work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from spiral_fast.distributed import max_int, world_size
from spiral_fast.models.lora import unwrap_peft


@dataclass(frozen=True)
class Unwrapped:
    """model: what the step reads (the HF causal LM, or what ``check_args`` accepts);
    fsdp_root: the FSDP2 module whose forward hooks must run around each forward (None without FSDP2);
    average_grads: the step averages the plain gradients over ranks itself, once (a DDP model: its
    reducer only fires after its own forward, which the step never runs)."""

    model: torch.nn.Module
    fsdp_root: torch.nn.Module | None
    average_grads: bool


def unwrap(model) -> Unwrapped:
    """Peel ``torch.compile`` (``OptimizedModule._orig_mod``: same parameters; the step's forward is
    its own, so compiling the wrapper's forward changes nothing) and ``DistributedDataParallel``
    (``.module``; its gradient averaging is done once by the step instead), then a LoRA ``PeftModel``
    (``models.lora.unwrap_peft``). FSDP2 modules stay as they are (see ``within_forward``). FSDP1 and
    ``DataParallel`` raise ValueError."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    average = False
    while True:
        if isinstance(model, DistributedDataParallel):
            _check_ddp_group(model)
            model, average = model.module, True
        elif type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, DataParallel):
            raise ValueError(
                "model is a torch.nn.DataParallel, which spiral_fast.step cannot drive (it splits the "
                "forward's inputs, the step runs its own forward): pass model.module, or use "
                "DistributedDataParallel / fully_shard with one process per device"
            )
        else:
            break
    fsdp1 = _fsdp1_class()
    if fsdp1 is not None and isinstance(model, fsdp1):
        raise ValueError(
            "model is wrapped with FSDP1 (FullyShardedDataParallel), whose flat parameters the step "
            "cannot read: shard it with FSDP2 (torch.distributed.fsdp.fully_shard on each decoder "
            "layer and on the model) instead"
        )
    # a LoRA PeftModel runs as the model it wraps, adapters active (an FSDP2 root stays the outer module)
    return Unwrapped(unwrap_peft(model), _fsdp2_root(model), average)


def within_forward(root: torch.nn.Module | None, fn: Callable[[], tuple]):
    """``fn()`` run as the forward of the FSDP2 module ``root`` (its pre-forward hook all-gathers the
    root's own parameters: embedding, final norm, LM head; its post-forward hook registers the
    pre-backward hook on the outputs, which is how FSDP2 later reduce-scatters their gradients).
    The step's forward calls the decoder and reads the LM-head weight directly, so without this the
    root's parameters stay sharded DTensors (measured: "aten.embedding.default got mixed
    torch.Tensor and DTensor"). root None: ``fn()``."""
    if root is None:
        return fn()
    root.forward = fn  # instance attribute: nn.Module.__call__ runs the FSDP hooks around it
    try:
        return root()
    finally:
        del root.forward


def _check_ddp_group(ddp) -> None:
    group = getattr(ddp, "process_group", None)
    if group is not None and world_size(group) != world_size():
        raise ValueError(
            f"model is a DistributedDataParallel over a process group of {world_size(group)} "
            f"ranks, but spiral_fast.step sums its normalisers over the default group of "
            f"{world_size()}: wrap the model over the default group"
        )


def _fsdp2_root(model):
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch built without distributed
        return None
    if isinstance(model, FSDPModule):
        return model
    # a PeftModel around an FSDP2-sharded HF model: the hooks live on the base model
    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else None
    return base if isinstance(base, FSDPModule) else None


def _fsdp1_class():
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:
        return None
    return FullyShardedDataParallel


def forward_rounds(local: int, root) -> int:
    """How many forwards this rank runs: FSDP2 all-gathers each layer's weights in every forward and
    reduce-scatters its gradients in every backward, collectives that every rank must join, so under
    FSDP2 all ranks run the largest rank's count (the extra ones on a stand-in with zero loss)."""
    return local if root is None else max_int(local)
