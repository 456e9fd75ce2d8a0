"""Checkpoints of the training command: ``OUTPUT/checkpoint-STEP/``.

- ``dcp/``: model (trainable parameters) and optimizer through ``torch.distributed.checkpoint``:
  sharded under FSDP2, loadable at another world size (and on one process);
- ``adapter/`` (LoRA, loadable with ``peft.PeftModel.from_pretrained``) or ``model/`` (full
  fine-tuning, ``save_pretrained``), written by rank 0 from the full weights;
- ``scheduler.pt``; ``rng/rank{R}.pt``: every RNG state of rank R (Python, torch CPU, CUDA);
- ``state.json``: step, data position, world size; written last, so a checkpoint without it is
  incomplete and ignored by ``latest``.
"""
from __future__ import annotations

import json
import os
import random
import re

import torch

from spiral_fast.models.lora import is_peft_model
from spiral_fast.distributed import barrier
from spiral_fast.recipe.distributed import trainable_state

STATE = "state.json"


def latest(output: str) -> str | None:
    """The complete checkpoint of the highest step in ``output`` (None if there is none)."""
    if not os.path.isdir(output):
        return None
    found = [(int(m.group(1)), name) for name in os.listdir(output)
             if (m := re.fullmatch(r"checkpoint-(\d+)", name)) and os.path.isfile(os.path.join(output, name, STATE))]
    return os.path.join(output, max(found)[1]) if found else None


def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(output: str, step: int, *, model, optimizer, scheduler, data_position: int, tokenizer, rank: int,
         world: int) -> str:
    """Write ``output/checkpoint-STEP`` (every rank calls this: the saves are collectives)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    path = os.path.join(output, f"checkpoint-{step}")
    os.makedirs(os.path.join(path, "rng"), exist_ok=True)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=os.path.join(path, "dcp"))
    full = trainable_state(model, full=True)
    torch.save(_rng_state(), os.path.join(path, "rng", f"rank{rank}.pt"))
    if rank == 0:
        if is_peft_model(model):
            model.save_pretrained(os.path.join(path, "adapter"), state_dict=full)
        else:
            model.save_pretrained(os.path.join(path, "model"), state_dict=full)
            tokenizer.save_pretrained(os.path.join(path, "model"))
        torch.save(scheduler.state_dict(), os.path.join(path, "scheduler.pt"))
    barrier()
    if rank == 0:
        with open(os.path.join(path, STATE), "w") as fh:
            json.dump({"step": step, "data_position": data_position, "world_size": world}, fh)
    barrier()
    return path


def load(path: str, *, model, optimizer, scheduler, rank: int) -> dict:
    """Restore model, optimizer, scheduler and (where this rank saved them) RNG states from a
    checkpoint written at any world size; returns its state.json."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=os.path.join(path, "dcp"))  # raises if a trainable key is missing
    # strict=False: the frozen base weights are not in the checkpoint (they are model.path's)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=StateDictOptions(ignore_frozen_params=True, strict=False))
    scheduler.load_state_dict(torch.load(os.path.join(path, "scheduler.pt"), weights_only=True))
    rng = os.path.join(path, "rng", f"rank{rank}.pt")
    if os.path.isfile(rng):
        _set_rng_state(torch.load(rng, weights_only=False))
    with open(os.path.join(path, STATE)) as fh:
        return json.load(fh)
