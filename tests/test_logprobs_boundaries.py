"""token_logprobs with every target on purpose at the first or last column of a vocabulary chunk
(torch backend) or block (Triton), and token rows on both sides of a token-chunk / block boundary,
for every chunk size the op can choose; against the float64 reference (tests/test_logprobs.py's
check_linear: the accuracy rule of docs/testing.md, gradients row by row).

Random targets hit a chunk's first column only by chance; an off-by-one there (the target's
one-hot gradient dropped or doubled) is exactly the bug a boundary produces.
"""

from __future__ import annotations

import pytest
import torch
from test_logprobs import check_linear, make_linear_inputs, upstream_grads

from spiral_fast.ops.logprobs import chunked


def boundary_targets(n: int, v: int, starts) -> torch.Tensor:
    """[n] targets cycling through the first and last column of every chunk beginning at ``starts``."""
    starts = sorted(set(starts))
    ends = starts[1:] + [v]
    cols = sorted({c for s, e in zip(starts, ends) for c in (s, e - 1)})
    return torch.tensor([cols[i % len(cols)] for i in range(n)])


# (id, N, V, TOKEN_CHUNK, CHUNK_ELEMENTS, MIN_VOCAB_CHUNK, expected regime)
TORCH_CHUNKS = [
    ("vocab-chunk-from-element-budget", 37, 300, 16, 16 * 70, 32, "budget"),
    ("vocab-chunk-at-its-minimum", 37, 300, 16, 16 * 10, 48, "minimum"),
    ("one-vocab-chunk", 37, 300, 16, 16 * 1000, 32, "whole"),
    ("one-token-chunk", 9, 300, 16, 16 * 70, 32, "budget"),
]


def _regime(vc: int, v: int, n: int) -> str:
    if vc == v:
        return "whole"
    return "minimum" if vc == chunked.MIN_VOCAB_CHUNK else "budget"


@pytest.mark.parametrize(
    "n,v,token_chunk,elements,min_vocab,regime", [pytest.param(*c[1:], id=c[0]) for c in TORCH_CHUNKS]
)
def test_torch_chunk_boundary_targets(monkeypatch, n, v, token_chunk, elements, min_vocab, regime):
    monkeypatch.setattr(chunked, "TOKEN_CHUNK", token_chunk)
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", elements)
    monkeypatch.setattr(chunked, "MIN_VOCAB_CHUNK", min_vocab)
    vc = chunked._vocab_chunk(min(n, token_chunk), v)
    assert _regime(vc, v, n) == regime  # the case really exercises the chunk size it is named for
    hidden, weight, bias, _ = make_linear_inputs((n,), 24, v, torch.float32, scale=3.0)
    targets = boundary_targets(n, v, range(0, v, vc))
    check_linear(hidden, weight, bias, targets, backend="torch", temperature=0.7, floor=1e-5)


def test_torch_chunk_boundary_targets_at_the_default_chunk_sizes():
    """The constants the op ships with: 4096-token chunks, so N=4100 crosses one token boundary."""
    n, v = chunked.TOKEN_CHUNK + 4, 1100
    vc = chunked._vocab_chunk(min(n, chunked.TOKEN_CHUNK), v)
    assert vc < v  # more than one vocabulary chunk
    hidden, weight, bias, _ = make_linear_inputs((n,), 8, v, torch.float32, scale=3.0)
    targets = boundary_targets(n, v, range(0, v, vc))
    # the rows on both sides of the token-chunk boundary hold a chunk's first and last column
    assert {int(targets[chunked.TOKEN_CHUNK - 1]), int(targets[chunked.TOKEN_CHUNK])} & set(range(0, v, vc))
    check_linear(hidden, weight, bias, targets, backend="torch", floor=1e-5)


# Triton blocks are powers of two (the interpreter's and the GPU configs alike): targets on the first
# and last column of every block of every size from 16 to 256 cover whichever the launcher picks
TRITON_BLOCK_STARTS = lambda v: [s for b in (16, 32, 64, 128, 256) for s in range(0, v, b)]  # noqa: E731


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_triton_block_boundary_targets(triton_device, dtype):
    n, v = 40, 300  # 40 rows: blocks of 16 and 32 tokens end inside
    hidden, weight, bias, _ = make_linear_inputs((n,), 40, v, dtype, scale=3.0, device=triton_device)
    targets = boundary_targets(n, v, TRITON_BLOCK_STARTS(v)).to(triton_device)
    check_linear(hidden, weight, bias, targets, backend="triton", temperature=0.7, floor=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_block_boundary_targets_gpu(dtype):
    n, v = 300, 5003
    hidden, weight, bias, _ = make_linear_inputs((n,), 123, v, dtype, scale=3.0, device="cuda")
    targets = boundary_targets(n, v, TRITON_BLOCK_STARTS(v)).cuda()
    check_linear(hidden, weight, bias, targets, backend="triton", floor=1e-5)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.interpret)])
def test_one_token_with_a_nonzero_upstream_gradient(triton_device, backend):
    """N=1: the only token's upstream gradients are non-zero, so every gradient is a real check."""
    device = triton_device if backend == "triton" else "cpu"
    hidden, weight, bias, _ = make_linear_inputs((1,), 16, 100, torch.float32, device=device, ignore_every=0)
    gl, ge = upstream_grads((1,), device)
    assert bool(gl.ne(0).all()) and bool(ge.ne(0).all())
    for target in (0, 63, 64, 99):  # first / last column of a block or chunk
        out = check_linear(
            hidden, weight, bias, torch.tensor([target], device=device), backend=backend, gl=gl, ge=ge, floor=1e-5
        )
        assert all(bool(g.ne(0).any()) for g in out[2:])
