"""Checkpoints of the training command: ``OUTPUT/checkpoint-STEP/``.

- ``dcp/``: model (trainable parameters) and optimizer through ``torch.distributed.checkpoint``:
  sharded under FSDP2, loadable at another world size (and on one process);
- ``adapter/`` (LoRA, loadable with ``peft.PeftModel.from_pretrained``) or ``model/`` (full
  fine-tuning, ``save_pretrained``), written by rank 0 from the full weights;
- ``scheduler.pt``; ``rng/rank{R}.pt``: rank R's torch CPU and CUDA RNG states (tensors);
  ``rng/rank{R}.json``: its Python ``random`` and NumPy RNG states;
- ``state.json``: step, data position, world size (and what the run adds); written last and
  atomically (a temporary file renamed), so a checkpoint without it is incomplete (a crash mid-save)
  and ignored by ``latest``.

Loading unpickles nothing beyond tensors and plain containers: ``.pt`` files with
``weights_only=True``, the RNG states of Python and NumPy from JSON, DCP's ``.metadata`` with an
unpickler that admits only DCP's metadata classes, and DCP's non-tensor values (the optimizer's
param groups) with ``weights_only=True``. A file holding anything else is refused with a
``ValueError`` naming it, before anything of it runs.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil

import torch

from spiral_fast.distributed import barrier, trainable_state
from spiral_fast.models.lora import is_peft_model

STATE = "state.json"


def latest(output: str) -> str | None:
    """The complete checkpoint (one with ``state.json``) of the highest step in ``output`` (None if
    there is none)."""
    if not os.path.isdir(output):
        return None
    found = [
        (int(m.group(1)), name)
        for name in os.listdir(output)
        if (m := re.fullmatch(r"checkpoint-(\d+)", name)) and os.path.isfile(os.path.join(output, name, STATE))
    ]
    return os.path.join(output, max(found)[1]) if found else None


def _write_atomic(path: str, text: str) -> None:
    """``text`` into ``path`` through a temporary file renamed over it (never half-written)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:  # the rename itself reaches the disk with its directory
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # a filesystem without directory fsync
        pass


def _rng_state() -> tuple[dict, dict]:
    """(tensors: torch CPU and CUDA states, JSON-able: Python ``random`` and NumPy states)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    version, internal, gauss = random.getstate()
    plain = {"python": [version, list(internal), gauss]}
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        plain["numpy"] = [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    return tensors, plain


def _set_rng_state(tensors: dict, plain: dict | None) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["cuda"])
    python = (plain or {}).get("python", tensors.get("python"))  # before JSON: a plain tuple in the .pt
    if python is not None:
        version, internal, gauss = python
        random.setstate((version, tuple(internal), gauss))
    if plain and "numpy" in plain:
        import numpy as np

        name, keys, pos, has_gauss, cached = plain["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _load_tensors(path: str):
    """``torch.load(path, weights_only=True)``; ValueError naming ``path`` for a file that holds
    anything but tensors and plain containers (its objects are never built)."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"refusing to load {path}: it holds objects other than tensors and plain containers "
            f"(loaded with weights_only=True; a checkpoint written by spiral-fast never does). "
            f"Was it written by someone else? Details: {err}"
        ) from None


# the classes DCP's .metadata pickle holds (torch.distributed.checkpoint.metadata / filesystem)
_DCP_MODULES = {
    "torch.distributed.checkpoint.metadata": None,
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "pathlib": {"Path", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "torch": {"Size"},
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset", "slice"},
}


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata dataclasses, torch dtypes and sizes; refuses every other global."""

    def find_class(self, module: str, name: str):
        allowed = _DCP_MODULES.get(module, set())
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "torch.distributed.checkpoint.metadata":
            import torch.distributed.checkpoint.metadata as md

            value = getattr(md, name, None)
            if isinstance(value, type):
                return value
        elif allowed and name in allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not DCP metadata")


def _safe_dcp():
    """(a FileSystemReader class whose metadata is read with ``_MetadataUnpickler``, a
    DefaultLoadPlanner class that loads non-tensor values with ``weights_only=True``)."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader

    class Reader(FileSystemReader):
        # FileSystemReader.read_metadata with a safe unpickler; no **kwargs, so that DCP reads the
        # one global .metadata (with them it asks for a rank's own, which save does not write)
        def read_metadata(self, *args):
            from torch.distributed.checkpoint.metadata import StorageMeta

            path = os.path.join(str(self.path), ".metadata")
            with self.fs.create_stream(path, "rb") as fh:
                try:
                    metadata = _MetadataUnpickler(fh).load()
                except pickle.UnpicklingError as err:
                    raise ValueError(
                        f"refusing to load {path}: {err} (only DCP's metadata classes are unpickled from a checkpoint)"
                    ) from None
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class Planner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value):
            try:
                obj = torch.load(value, weights_only=True)
            except pickle.UnpicklingError as err:
                raise ValueError(
                    f"refusing to load {read_item.dest_index.fqn} of the checkpoint: it is not tensors "
                    f"and plain containers ({err})"
                ) from None
            from torch.distributed.checkpoint._traverse import set_element  # as DefaultLoadPlanner.load_bytes

            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return Reader, Planner


def save(
    output: str,
    step: int,
    *,
    model,
    optimizer,
    scheduler,
    data_position: int,
    tokenizer,
    rank: int,
    world: int,
    extra: dict | None = None,
) -> str:
    """Write ``output/checkpoint-STEP`` (every rank calls this: the saves are collectives).
    ``extra``: more fields of state.json (JSON values). A folder of that name already there
    (an incomplete save, or a run restarted without --resume) is removed first, its state.json
    before anything else, so no mix of two saves ever looks complete."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    path = os.path.join(output, f"checkpoint-{step}")
    if rank == 0 and os.path.exists(path):
        if os.path.isfile(os.path.join(path, STATE)):
            os.remove(os.path.join(path, STATE))
        shutil.rmtree(path)
    barrier()
    os.makedirs(os.path.join(path, "rng"), exist_ok=True)
    # get_state_dict gives an optimizer that has not stepped yet (every step so far dropped by dynamic
    # sampling) a state by a zero-gradient step: AdamW's step count then starts at 1 and its bias
    # correction, hence every later update, differs from the run that saved nothing. Undone here, and
    # on load (state.json "optimizer_fresh"), so a save never changes the run.
    fresh = not optimizer.state
    model_sd, optim_sd = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=os.path.join(path, "dcp"))
    if fresh:
        optimizer.state.clear()
    full = trainable_state(model, full=True)
    tensors, plain = _rng_state()
    torch.save(tensors, os.path.join(path, "rng", f"rank{rank}.pt"))
    with open(os.path.join(path, "rng", f"rank{rank}.json"), "w") as fh:
        json.dump(plain, fh)
    if rank == 0:
        if is_peft_model(model):
            model.save_pretrained(os.path.join(path, "adapter"), state_dict=full)
        else:
            model.save_pretrained(os.path.join(path, "model"), state_dict=full)
            tokenizer.save_pretrained(os.path.join(path, "model"))
        torch.save(scheduler.state_dict(), os.path.join(path, "scheduler.pt"))
    barrier()
    if rank == 0:  # last, atomically: the checkpoint is complete once this file exists
        _write_atomic(
            os.path.join(path, STATE),
            json.dumps(
                {
                    "step": step,
                    "data_position": data_position,
                    "world_size": world,
                    "optimizer_fresh": fresh,
                    **(extra or {}),
                }
            ),
        )
    barrier()
    return path


def load(path: str, *, model, optimizer, scheduler, rank: int) -> dict:
    """Restore model, optimizer, scheduler and (where this rank saved them) RNG states from a
    checkpoint written at any world size; returns its state.json. Nothing is unpickled beyond
    tensors, plain containers and DCP's metadata classes: ValueError naming the file otherwise."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    with open(os.path.join(path, STATE)) as fh:
        state_json = json.load(fh)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    state = {"model": model_sd, "optim": optim_sd}
    reader, planner = _safe_dcp()
    reader(os.path.join(path, "dcp")).read_metadata()  # a refused .metadata: our ValueError, not DCP's wrapper
    # raises if a trainable key is missing
    dcp.load(state, storage_reader=reader(os.path.join(path, "dcp")), planner=planner())
    # strict=False: the frozen base weights are not in the checkpoint (they are model.path's)
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optim"],
        options=StateDictOptions(ignore_frozen_params=True, strict=False),
    )
    if state_json.get("optimizer_fresh"):  # saved before any optimizer step: as fresh as it was (see save)
        optimizer.state.clear()
    scheduler.load_state_dict(_load_tensors(os.path.join(path, "scheduler.pt")))
    rng = os.path.join(path, "rng", f"rank{rank}.pt")
    if os.path.isfile(rng):
        tensors = _load_tensors(rng)
        plain_path = os.path.join(path, "rng", f"rank{rank}.json")
        plain = None
        if os.path.isfile(plain_path):
            with open(plain_path) as fh:
                plain = json.load(fh)
        _set_rng_state(tensors, plain)
    return state_json
