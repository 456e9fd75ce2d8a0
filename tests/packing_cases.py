"""Random forests of token sequences for packing tests (shared by tests/test_packing*.py and
tests/test_models*.py): duplicates, prefixes of others, 1-token sequences, deep chains."""

from __future__ import annotations

import random


def random_forest(seed: int, *, num_seqs: int, vocab: int, max_len: int, share_prob: float = 0.7):
    """S sequences (lists of ints in [0, vocab)): each new one extends a random prefix of an earlier
    one (the whole of it: a duplicate; or a cut with no suffix: a prefix) with probability share_prob."""
    rng = random.Random(seed)
    seqs: list[list[int]] = []
    for _ in range(num_seqs):
        head: list[int] = []
        if seqs and rng.random() < share_prob:
            base = rng.choice(seqs)
            head = base[: rng.randint(1, len(base))]
        tail = [rng.randrange(vocab) for _ in range(rng.randint(0 if head else 1, max_len))]
        seqs.append((head + tail)[:max_len] or head[:1])
    return seqs


def deep_chain(depth: int, vocab: int = 5):
    """Sequences that each extend the previous one by one token: a chain of 1-token segments."""
    rng = random.Random(depth)
    tokens = [rng.randrange(vocab) for _ in range(depth)]
    return [tokens[: d + 1] for d in range(depth)]


CASES = {
    "shared-small-vocab": dict(num_seqs=40, vocab=3, max_len=12),
    "shared-large-vocab": dict(num_seqs=40, vocab=1000, max_len=30),
    "unshared": dict(num_seqs=30, vocab=1000, max_len=20, share_prob=0.0),
    "one-token": dict(num_seqs=30, vocab=4, max_len=1),
    "mostly-duplicates": dict(num_seqs=30, vocab=2, max_len=3, share_prob=0.95),
}
