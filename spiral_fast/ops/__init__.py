"""Differentiable ops: each has a plain-PyTorch reference (the spec) and fast backends."""
