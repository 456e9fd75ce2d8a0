"""rollout.candidate_order: the tokens "shared" saves against "random" (no model, no timing).

For each shape, P problems of random-token traces (lengths uniform in [L/2, L]: some traces stop
early) get M sets of K drawn by ``draw_sets``, rendered with an aggregation template of fixed head,
separator and tail (benchmarks/bench_packing.py's sizes). Counted, "random" (drawn order) vs "shared"
(``shared_order``):

- aggregation prompt tokens: the sum of the M prompt lengths (what an engine without prefix cache
  prefills; the same for both orders), and what a prefix cache prefills: the unique tokens of the trie
  of a problem's M aggregation prompts (``prompt_trie_tokens``);
- the step's unique tokens: ``pack_sequences(seqs, share="trie").num_tokens`` over the batch's trained
  sequences (x + y_i, and a_j + z_jg for G random responses z per set).

Random traces never coincide or start alike, so only the sets' overlaps are shared: a lower bound of
what real samples (equal short answers, common openings) give. Shapes: the SmolLM2 example (N=4,
K=2, M=2, G=4, 48-token traces and responses) and the paper's (N=8, K=4, M=4, G=4) at 1024-token
traces (``python benchmarks/bench_candidate_order.py --paper-tokens 4096`` for the paper's length).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest
import torch

import spiral_fast as sf
from spiral_fast.rollout import AggregationTemplate, draw_sets
from spiral_fast.rollout.order import order_sets, prompt_trie_tokens

HEADER, SEPARATOR, TAIL, PROMPT = 24, 4, 20, 40  # template head, "Candidate k:" separator, instruction, x


@dataclass(frozen=True)
class Shape:
    name: str
    problems: int
    traces: int
    set_size: int
    sets: int
    aggregations: int
    trace_tokens: int
    agg_tokens: int


SHAPES = {
    "example": Shape("example N4 K2 M2 G4 L48", 64, 4, 2, 2, 4, 48, 48),
    "paper": Shape("paper N8 K4 M4 G4 L1024", 16, 8, 4, 4, 4, 1024, 256),
}


def count(shape: Shape, order: str, seed: int = 0) -> dict[str, int]:
    """Token counts of one batch of ``shape`` with the candidates in ``order`` (same draws for both)."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda n: torch.randint(1, 50_000, (n,), generator=g).tolist()  # noqa: E731
    template = AggregationTemplate(head=tuple(rand(HEADER)), separator=tuple(rand(SEPARATOR)), tail=tuple(rand(TAIL)))
    total = cached = 0
    seqs = []
    for _ in range(shape.problems):
        x = rand(PROMPT)
        lengths = torch.randint(shape.trace_tokens // 2, shape.trace_tokens + 1, (shape.traces,), generator=g)
        traces = [rand(int(n)) for n in lengths]
        sets = order_sets(order, draw_sets(shape.traces, shape.sets, shape.set_size, generator=g), traces)
        prompts = [template(x, [traces[i] for i in s]) for s in sets]
        total += sum(map(len, prompts))
        cached += prompt_trie_tokens(prompts)
        seqs += [torch.tensor(x + y) for y in traces]
        seqs += [torch.tensor(a + rand(shape.agg_tokens)) for a in prompts for _ in range(shape.aggregations)]
    return {
        "agg_prompt_tokens": total,
        "agg_prefill_cached": cached,
        "step_unique_tokens": sf.pack_sequences(seqs, share="trie").num_tokens,
    }


def report(shape: Shape) -> dict[str, dict[str, int]]:
    rows = {order: count(shape, order) for order in ("random", "shared")}
    r, s = rows["random"], rows["shared"]
    print(
        f"\n{shape.name}, P={shape.problems}: aggregation prompt tokens {r['agg_prompt_tokens']}; "
        f"prefix-cached prefill random {r['agg_prefill_cached']} -> shared {s['agg_prefill_cached']} "
        f"({s['agg_prefill_cached'] / r['agg_prefill_cached']:.3f}x); step unique tokens "
        f"{r['step_unique_tokens']} -> {s['step_unique_tokens']} "
        f"({s['step_unique_tokens'] / r['step_unique_tokens']:.3f}x)"
    )
    return rows


@pytest.mark.parametrize("key", ["example", "paper"])
def test_shared_order_saves_tokens(key):
    rows = report(SHAPES[key])
    # same draws, same traces: "shared" only reorders, so it never prefills or trains more
    assert rows["shared"]["agg_prompt_tokens"] == rows["random"]["agg_prompt_tokens"]
    assert rows["shared"]["agg_prefill_cached"] < rows["random"]["agg_prefill_cached"]
    assert rows["shared"]["step_unique_tokens"] < rows["random"]["step_unique_tokens"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper-tokens", type=int, default=1024)
    parser.add_argument("--problems", type=int, default=None)
    args = parser.parse_args()
    for key, shape in SHAPES.items():
        if key == "paper":
            shape = Shape(
                f"paper N8 K4 M4 G4 L{args.paper_tokens}",
                shape.problems,
                8,
                4,
                4,
                4,
                args.paper_tokens,
                args.paper_tokens // 4,
            )
        if args.problems:
            shape = Shape(shape.name, args.problems, *list(vars(shape).values())[2:])
        report(shape)
