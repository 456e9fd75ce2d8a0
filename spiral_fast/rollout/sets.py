"""Sets of traces and the text-mode aggregation template."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class AggregationTemplate:
    """a_j = head + prompt + separator + trace_1 + separator + ... + trace_K + tail (token ids).

    The problem x is repeated so that the aggregator can check the traces against it; ``head``,
    ``separator`` and ``tail`` are fixed token-id sequences (e.g. the encoded instruction text).
    """

    head: tuple[int, ...] = ()
    separator: tuple[int, ...] = ()
    tail: tuple[int, ...] = ()

    def __call__(self, prompt: Sequence[int], traces: Sequence[Sequence[int]]) -> list[int]:
        out = list(self.head) + list(prompt)
        for trace in traces:
            out += list(self.separator) + list(trace)
        return out + list(self.tail)


def draw_sets(num_traces: int, num_sets: int, set_size: int, *,
              generator: torch.Generator | None = None) -> list[tuple[int, ...]]:
    """M sets of K distinct trace indices in [0, N), each drawn uniformly without replacement.

    Sets are drawn independently, so they may overlap and a trace may sit in no set.
    """
    for name, value, low in (("num_traces", num_traces, 1), ("num_sets", num_sets, 1),
                             ("set_size", set_size, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if set_size > num_traces:
        raise ValueError(f"set_size must be <= num_traces={num_traces}, got {set_size}")
    return [tuple(torch.randperm(num_traces, generator=generator)[:set_size].tolist())
            for _ in range(num_sets)]
