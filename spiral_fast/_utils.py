"""Small shared utilities: input validation that names the argument, and backend resolution.

Imported by ops, packing, training and (sparingly) kernels; imports nothing heavy itself.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Iterable, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)


# --------------------------------------------------------------------------- validation
def check_tensor(
    name: str,
    x,
    *,
    ndim: int | Sequence[int] | None = None,
    dtypes: Iterable[torch.dtype] | None = None,
    shape: Sequence[int | None] | None = None,
) -> torch.Tensor:
    """Raise ``ValueError`` naming ``name`` unless ``x`` is a tensor of the expected rank/dtype/shape.

    ``shape`` entries that are ``None`` are free. Returns ``x`` for chaining.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dims, got shape {tuple(x.shape)}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if x.dtype not in dtypes:
            raise ValueError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {x.dtype}")
    if shape is not None:
        if x.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
            want = tuple("*" if s is None else s for s in shape)
            raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    return x


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    """Raise ``ValueError`` naming the first tensor that is not on the device of the first one."""
    items = [(k, v) for k, v in tensors.items() if v is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")
    return first.device


def check_finite(name: str, x: torch.Tensor) -> None:
    """Raise ``ValueError`` naming ``name`` and the first offending index if ``x`` has NaN/inf.

    Costs one host sync; call it on small, host-side metadata (rewards), not per layer.
    """
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        idx = bad.nonzero()[0].tolist()
        raise ValueError(f"{name} must be finite, got {x[tuple(idx)].item()} at index {tuple(idx)}")


def check_index_range(name: str, idx: torch.Tensor, upper: int, *, ignore_value: int | None = None) -> None:
    """Raise ``ValueError`` if an entry of ``idx`` lies outside ``[0, upper)`` (``ignore_value`` allowed)."""
    if idx.numel() == 0:
        return
    bad = (idx < 0) | (idx >= upper)
    if ignore_value is not None:
        bad &= idx != ignore_value
    if bool(bad.any()):
        pos = bad.nonzero()[0].tolist()
        raise ValueError(f"{name} must lie in [0, {upper}), got {idx[tuple(pos)].item()} at index {tuple(pos)}")


# --------------------------------------------------------------------------- backends
@functools.cache
def triton_available() -> bool:
    """True when Triton can be imported (no import happens here: find_spec only)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    """True when Triton runs kernels on the CPU (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, device: torch.device, choices: Sequence[str]) -> str:
    """Map ``backend`` (``"auto"`` or one of ``choices``) to a concrete backend for ``device``.

    ``auto`` picks Triton on CUDA tensors when it is installed, else ``torch``. An explicit
    ``"triton"`` on CPU tensors needs ``TRITON_INTERPRET=1`` (how kernels are tested without a GPU).
    """
    if backend == "auto":
        if device.type == "cuda" and "triton" in choices and triton_available():
            return "triton"
        return "torch"
    if backend not in choices:
        raise ValueError(f"backend must be 'auto' or one of {list(choices)}, got {backend!r}")
    if backend == "triton":
        if not triton_available():
            raise ValueError("backend='triton' needs the triton package, which is not installed")
        if device.type != "cuda" and not triton_interpreting():
            raise ValueError(
                f"backend='triton' on {device.type} tensors needs TRITON_INTERPRET=1 set before "
                "triton is imported (or CUDA tensors)"
            )
    return backend


@contextlib.contextmanager
def torch_threads(count: int):
    """torch's intra-op thread count set to ``count`` inside the block, restored after (tiny models
    on a shared CPU run faster on one thread: a pool only contends)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def check_fields(config, *, choices: dict | None = None) -> None:
    """ValueError naming the field of a settings dataclass whose value does not fit its annotation:
    a float must be a number > 0, an int an int >= 1 (``seed``: any int), a bool a bool, a field in
    ``choices`` one of its values; an ``X | None`` field may also be None."""
    import dataclasses

    for f in dataclasses.fields(config):
        value, kind = getattr(config, f.name), str(f.type)
        if value is None and "None" in kind:
            continue
        if choices and f.name in choices:
            if value not in choices[f.name]:
                raise ValueError(f"{f.name} must be one of {choices[f.name]}, got {value!r}")
        elif kind.startswith("float"):
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{f.name} must be > 0, got {value!r}")
        elif kind.startswith("bool"):
            if not isinstance(value, bool):
                raise ValueError(f"{f.name} must be a bool, got {value!r}")
        elif kind.startswith("int"):
            if isinstance(value, bool) or not isinstance(value, int) or (f.name != "seed" and value < 1):
                raise ValueError(f"{f.name} must be {'an int' if f.name == 'seed' else 'an int >= 1'}, got {value!r}")
