"""The C++ layout builder (`spiral_fast.packing._native`, built from csrc/packing.cpp) with a fallback
to the pure-Python reference when the extension was not compiled. Both return the same fields.

When the extension is missing, importing this module (so `import spiral_fast.packing`, never a bare
`import spiral_fast`) warns once with `PackingFallbackWarning`. Why a warning at import rather than
silence or an error: a pip build hides the compiler's message (`pip -q`), the fallback gives the same
layouts, just far slower, so the run should go on; but a user who never sees why packing is slow has
no way to find out. The warning names the rebuild command; filter the category to silence it.
"""

from __future__ import annotations

import warnings

import torch

from spiral_fast.packing import reference

try:
    from spiral_fast.packing import _native as _extension
except ImportError:  # no compiler at install time: same results, slower
    _extension = None

REBUILD = "pip install -e . --no-deps --no-build-isolation (needs a C++17 compiler and pybind11)"


class PackingFallbackWarning(RuntimeWarning):
    """The compiled layout builder is missing: `pack_sequences` uses the pure-Python one."""


def _native():
    """The compiled extension, or None; one left over from an older build (before `pip install -e .`
    rebuilt it) is not used."""
    return _extension if hasattr(_extension, "pack_layout") else None


def native_available() -> bool:
    """Whether the compiled builder is importable."""
    return _native() is not None


def pack_layout(sequences: list[torch.Tensor], share: bool, *, builder: str = "auto"):
    """PackedBatch fields for validated sequences (1-D int64 CPU tensors), as in
    `reference.pack_layout`. builder: "auto" (C++ when built, else Python), "cpp" or "python"."""
    if builder not in ("auto", "cpp", "python"):
        raise ValueError(f"builder must be 'auto', 'cpp' or 'python', got {builder!r}")
    mod = None if builder == "python" else _native()
    if mod is None:
        if builder == "cpp":
            raise ValueError(f"builder='cpp' but spiral_fast.packing._native is not built (rebuild: {REBUILD})")
        return reference.pack_layout(sequences, share)
    arrays = mod.pack_layout([s.numpy() for s in sequences], share)  # zero-copy views of the tensors
    return tuple(torch.from_numpy(a) for a in arrays)


# module code runs once per process: this is the "once" of the warning
if not native_available():
    warnings.warn(
        "spiral_fast.packing._native (the C++ layout builder) is not built: pack_sequences falls back to "
        f"the pure-Python builder (same layouts, far slower). Rebuild it with: {REBUILD}",
        PackingFallbackWarning,
        stacklevel=2,
    )
