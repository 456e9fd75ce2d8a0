"""Triton kernels (device code + launchers, no autograd), shipped as ``spiral_fast.kernels``.

Modules here import triton at their top; import them only after checking
``spiral_fast._utils.triton_available()``. Under ``TRITON_INTERPRET=1`` they run on CPU tensors.
"""
