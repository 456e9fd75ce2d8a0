"""SPIRAL rollouts: sample traces, draw sets, render aggregation prompts, sample and score aggregations.

``spiral_fast.rollout(sampler, prompts, ...)`` returns a :class:`spiral_fast.SpiralBatch` ready for
``spiral_fast.step``. A :class:`Sampler` samples: ``HFSampler`` (Hugging Face ``generate``) or, where
vLLM is installed, ``spiral_fast.VLLMSampler`` (``vllm.LLM.generate`` with prefix caching).

Vocabulary: P problems, N traces per problem, M sets per problem, K traces per set, G aggregation
responses per set. Token ids are plain Python ints throughout.
"""
from __future__ import annotations

import sys
import types

from spiral_fast.rollout.core import RewardFn, Template, rollout
from spiral_fast.rollout.sampler import ENGINES, HFSampler, Sampler, as_sampler
from spiral_fast.rollout.sets import AggregationTemplate, draw_sets

__all__ = ["AggregationTemplate", "HFSampler", "Sampler", "as_sampler", "draw_sets", "rollout"]


class _CallableModule(types.ModuleType):
    """``spiral_fast.rollout`` is both this module (spiral_fast's lazy __getattr__ returns the
    submodule, and tests import helpers from it) and the function users call:
    ``spiral_fast.rollout(model, prompts, ...)`` forwards to :func:`rollout`."""

    def __call__(self, *args, **kwargs):
        return rollout(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
