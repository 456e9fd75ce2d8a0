"""Triton tree attention under the CPU interpreter (small shapes, fp32/fp16; bf16 only on a GPU), and
the block tables it walks: every allowed (query, key) pair is visited exactly once, forward and reverse."""

from __future__ import annotations

import pytest
import torch
from test_tree_attention import FORESTS, check_backend_against_reference, forest_params, make_inputs

from spiral_fast.ops.tree_attention.layout import build_block_tables
from spiral_fast.ops.tree_attention.reference import tree_mask


def visited_pairs(tables, mask: torch.Tensor, block_n: int, reverse: bool) -> torch.Tensor:
    """[T, T] int: how often each (query, key) pair that the in-tile rule (key <= query) allows is
    visited. Entries before the `mid` split skip the in-tile mask: check that every pair of such a
    tile is allowed by the tree `mask` and that its key block is full. The per-entry token ranges the
    kernels walk must be those of the listed block."""
    count = torch.zeros_like(mask, dtype=torch.int64)
    q_start, q_end, k_start, k_end = (x.tolist() for x in (tables.q_start, tables.q_end, tables.k_start, tables.k_end))
    ptr, mid, lst = (
        (tables.k_ptr, tables.k_mid, tables.q_list) if reverse else (tables.q_ptr, tables.q_mid, tables.kv_list)
    )
    ptr, mid, lst = ptr.tolist(), mid.tolist(), lst.tolist()
    ranges = (tables.q_list_start, tables.q_list_end) if reverse else (tables.kv_list_start, tables.kv_list_end)
    entry_start, entry_end = (x.tolist() for x in ranges)
    assert len(entry_start) == len(entry_end) == len(lst)
    for owner in range(len(ptr) - 1):
        assert ptr[owner] <= mid[owner] <= ptr[owner + 1]
        for e in range(ptr[owner], ptr[owner + 1]):
            b, c = (lst[e], owner) if reverse else (owner, lst[e])
            rows = torch.arange(q_start[b], q_end[b])
            cols = torch.arange(k_start[c], k_end[c])
            listed = (q_start[b], q_end[b]) if reverse else (k_start[c], k_end[c])
            assert (entry_start[e], entry_end[e]) == listed
            if e < mid[owner]:
                assert len(cols) == block_n and bool(mask[rows[:, None], cols[None, :]].all())
            count[rows[:, None], cols[None, :]] += (cols[None, :] <= rows[:, None]).long()
    return count


@pytest.mark.parametrize("blocks", [(16, 16), (4, 8), (8, 4), (1, 1)], ids=lambda b: "M{}-N{}".format(*b))
@pytest.mark.parametrize("name", forest_params())
def test_block_tables_cover_the_tree_mask_exactly_once(name, blocks):
    packed = make_inputs(name)[0]
    tables = build_block_tables(packed, *blocks)
    mask = tree_mask(packed)
    assert torch.equal(visited_pairs(tables, mask, blocks[1], reverse=False), mask.long())
    assert torch.equal(visited_pairs(tables, mask, blocks[1], reverse=True), mask.long())
    assert tables.num_pairs == tables.kv_list.numel() == tables.q_list.numel()
    # the busiest programs are numbered first
    work = (tables.q_ptr[1:] - tables.q_ptr[:-1]).tolist()
    assert work == sorted(work, reverse=True)


TRITON_CASES = [
    ("shared-gqa", torch.float32),
    ("shared-gqa", torch.float16),
    ("shared-mha", torch.float32),
    ("unshared", torch.float32),
    ("deep-chain-1tok", torch.float32),
    ("one-token-seqs", torch.float16),
    ("several-roots-dups", torch.float32),
    ("long-segments", torch.float32),
    ("long-segments", torch.float16),
]


@pytest.mark.interpret
@pytest.mark.parametrize("name,dtype", [pytest.param(n, d, id=f"{n}-{str(d)[6:]}") for n, d in TRITON_CASES])
def test_triton_matches_reference(name, dtype, triton_device):
    seqs, share, hq, hkv, d = FORESTS[name]
    assert make_inputs(name)[0].num_tokens <= 64 and d <= 16, "interpreter cases stay small"
    check_backend_against_reference(name, "triton", dtype, device=triton_device)


@pytest.mark.interpret
def test_triton_rejects_float64(triton_device):
    import spiral_fast

    packed, q, k, v, _ = make_inputs("shared-gqa", torch.float64, triton_device)
    with pytest.raises(ValueError, match="q dtypes"):
        spiral_fast.tree_attention(q, k, v, packed, backend="triton")
