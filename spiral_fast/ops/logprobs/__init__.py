"""Fused per-token log-probs (and entropies) of target tokens, without materialising [N, V] logits.

``op`` holds the public functions and autograd; ``reference`` the plain-PyTorch spec; ``chunked``
the CPU (torch) backend; the Triton backend lives in ``spiral_fast.kernels.logprobs``.
"""
